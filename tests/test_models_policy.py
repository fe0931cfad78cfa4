"""PanaceaPolicy: bad arguments refused before the model loads, explicit λ repetition."""

from __future__ import annotations

import pytest
import torch

from panacea_pl.layers import PanaceaConfig, save_adapter
from panacea_pl.models import PanaceaPolicy
from panacea_pl.models.reward import VectorRewardModel


def test_missing_model_folder_names_the_argument(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"PanaceaPolicy\.model_name_or_path = .*no such"):
        PanaceaPolicy(str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match=r"VectorRewardModel\.model_name_or_path"):
        VectorRewardModel(str(tmp_path / "nope"), ["a"])


def test_bad_dtype_before_loading(tmp_path):
    # the folder does not exist either: the dtype is checked first, without loading anything
    with pytest.raises(ValueError, match=r"PanaceaPolicy\.dtype = 'float33'.*bf16"):
        PanaceaPolicy(str(tmp_path / "nope"), dtype="float33")


def test_dtype_alias(tiny_llama_dir):
    policy = PanaceaPolicy(str(tiny_llama_dir), PanaceaConfig(num_general=2), dtype="bf16")
    assert policy.model.get_input_embeddings().weight.dtype == torch.bfloat16


def test_adapter_path_contradicting_adapter(tiny_llama_dir, tmp_path):
    saved = PanaceaPolicy(str(tiny_llama_dir), PanaceaConfig(num_general=2, num_preferences=3))
    save_adapter(saved.adapter, tmp_path / "m3")
    with pytest.raises(
        ValueError,
        match=r"m3/panacea_config.json contradicts .*num_preferences 2 \(adapter\) vs 3 \(saved\)",
    ):
        PanaceaPolicy(
            str(tiny_llama_dir),
            PanaceaConfig(num_general=2, num_preferences=2),
            str(tmp_path / "m3"),
        )
    same = PanaceaPolicy(
        str(tiny_llama_dir), PanaceaConfig(num_general=2, num_preferences=3), str(tmp_path / "m3")
    )
    assert same.num_preferences == 3


def test_generate_grid_rows_must_match_prompts(tiny_llama_dir):
    policy = PanaceaPolicy(str(tiny_llama_dir), PanaceaConfig(num_general=2)).eval()
    tok = policy.tokenizer()
    batch = tok(
        ["Once upon", "The sad cat", "She", "Human: How"], return_tensors="pt", padding=True
    )
    kwargs = {"max_new_tokens": 3, "do_sample": False, "pad_token_id": tok.pad_token_id}
    grid = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    with pytest.raises(RuntimeError, match=r"2 rows but the batch has 4 sequences"):
        policy.generate(**batch, preference=grid, **kwargs)
    # num_return_sequences repeats each prompt's λ row, as asked
    two = {k: v[:2] for k, v in batch.items()}
    kwargs["do_sample"] = True
    out = policy.generate(**two, preference=grid, num_return_sequences=2, **kwargs)
    assert out.shape[0] == 4


def test_lambda_as_strings(tiny_llama_dir):
    policy = PanaceaPolicy(str(tiny_llama_dir), PanaceaConfig(num_general=2))
    with policy.preference("0.25,0.75"):
        assert policy.adapter.current_preference.tolist() == [0.25, 0.75]
    with policy.preference(["0.5", "0.5"]):
        assert policy.adapter.current_preference.tolist() == [0.5, 0.5]


def _gradients(policy, lam: torch.Tensor, ids: torch.Tensor) -> dict[str, torch.Tensor]:
    """The adapter's gradients of a loss whose backward runs after the λ block has exited, as
    in Lightning (the module's forward sets λ; `backward` comes later), with the adapter off
    for a reference pass in between."""
    policy.zero_grad()
    with policy.adapter.preference(lam):
        loss = policy.model(input_ids=ids).logits.log_softmax(-1)[..., 0].sum()
    with policy.adapter.disabled(), torch.no_grad():
        policy.model(input_ids=ids)
    loss.backward()
    return {n: p.grad.clone() for n, p in policy.adapter.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("per_row", [False, True], ids=["one λ", "λ per row"])
def test_gradient_checkpointing_recomputes_under_the_forwards_lambda(tiny_llama_dir, per_row):
    """Activation checkpointing recomputes each block in backward: under the λ of its forward,
    not the adapter's λ at backward time (none here)."""
    from panacea_pl.models import PanaceaCritic

    ids = torch.randint(3, 60, (3, 7), generator=torch.Generator().manual_seed(0))
    lam = (
        torch.tensor([[0.2, 0.8], [0.9, 0.1], [0.5, 0.5]]) if per_row else torch.tensor([0.3, 0.7])
    )
    config = PanaceaConfig(num_general=2, num_preferences=2)
    torch.manual_seed(0)
    plain = PanaceaPolicy(str(tiny_llama_dir), config)
    torch.manual_seed(0)
    checkpointed = PanaceaPolicy(str(tiny_llama_dir), config, gradient_checkpointing=True)
    assert checkpointed.model.is_gradient_checkpointing
    for policy in (plain, checkpointed):  # U starts at zero: give V's gradient something to see
        with torch.no_grad():
            for layer in policy.adapter.layers.values():
                layer.panacea_U.copy_(
                    torch.linspace(-0.1, 0.1, layer.panacea_U.numel()).view_as(layer.panacea_U)
                )
    expected, got = _gradients(plain, lam, ids), _gradients(checkpointed, lam, ids)
    assert expected.keys() == got.keys() and expected
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-5, atol=1e-7, msg=name)
    assert checkpointed.adapter.current_preference is None  # restored after the recomputation

    critic = PanaceaCritic(str(tiny_llama_dir), adapter=config, gradient_checkpointing=True)
    with critic.adapter.preference(lam):
        values = critic(ids, torch.ones_like(ids))
    values.sum().backward()  # recomputed under λ, not with none set
