"""The Panacea adapter on tiny Llama (nn.Linear) and GPT-2 (Conv1D) models loaded from disk."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoTokenizer

import tiny
from panacea_pl.layers import (
    AdapterLoadError,
    PanaceaAdapter,
    PanaceaConfig,
    export_peft,
    inject_adapter,
    load_adapter,
    save_adapter,
)
from panacea_pl.preference import PreferenceError

LAM_A = [0.9, 0.1]
LAM_B = [0.2, 0.8]


def perturb(adapter: PanaceaAdapter, seed: int = 0) -> None:
    """Give U, σ and s non-trivial values, as after training."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in adapter.layers.values():
            layer.panacea_U.copy_(torch.randn(layer.panacea_U.shape, generator=gen) * 0.3)
            layer.panacea_sigma.uniform_(0.5, 1.5, generator=gen)
            layer.panacea_scale.fill_(2.0)


def adapted(model_dir, num_general=4, perturbed=True, **kwargs):
    """The tiny model with an adapter whose random initialisation (V) is seeded, so a test sees
    the same adapter whichever tests ran before it in its worker."""
    model = tiny.load(model_dir)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        adapter = inject_adapter(
            model, PanaceaConfig(num_general=num_general, num_preferences=2, **kwargs)
        )
    if perturbed:
        perturb(adapter)
    return model, adapter


@pytest.fixture
def batch(tiny_model_dir):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    tok.padding_side = "left"
    return tok(
        ["Once upon a time", "The sad cat did not", "Human: How do I"],
        return_tensors="pt",
        padding=True,
    )


def logits(model, batch):
    with torch.no_grad():
        return model(**batch).logits


def test_identity_at_init(tiny_model_dir, batch):
    base = logits(tiny.load(tiny_model_dir), batch)
    model, adapter = adapted(tiny_model_dir, perturbed=False)
    with adapter.preference(LAM_A):
        torch.testing.assert_close(logits(model, batch), base, rtol=0, atol=0)


def test_default_targets_and_only_adapter_trainable(tiny_model_dir):
    model, adapter = adapted(tiny_model_dir)
    leaves = {name.rsplit(".", 1)[-1] for name in adapter.layers}
    expected = {
        "llama": {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"},
        "gpt2": {"c_attn", "c_proj", "c_fc"},
    }[model.config.model_type]
    assert leaves == expected
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert trainable == {id(p) for p in adapter.parameters()}
    assert len(adapter.parameters()) == 4 * len(adapter.layers)


def test_preference_changes_outputs(tiny_model_dir, batch):
    model, adapter = adapted(tiny_model_dir)
    with adapter.preference(LAM_A):
        a = logits(model, batch)
    with adapter.preference(LAM_B):
        b = logits(model, batch)
    assert (a - b).abs().max() > 1e-3


def test_disabled_equals_base(tiny_model_dir, batch):
    base = logits(tiny.load(tiny_model_dir), batch)
    model, adapter = adapted(tiny_model_dir)
    adapter.set_preference(LAM_A)
    with adapter.disabled():
        torch.testing.assert_close(logits(model, batch), base, rtol=0, atol=0)
    assert (logits(model, batch) - base).abs().max() > 1e-3  # back on after the block


def test_per_sample_preference_matches_single_runs_in_forward(tiny_model_dir, batch):
    model, adapter = adapted(tiny_model_dir)
    rows = torch.tensor([LAM_A, LAM_B, [0.5, 0.5]])
    with adapter.preference(rows):
        together = logits(model, batch)
    for b in range(3):
        with adapter.preference(rows[b]):
            alone = logits(model, batch)[b]
        torch.testing.assert_close(together[b], alone, rtol=1e-5, atol=1e-5)


def test_per_sample_preference_matches_single_runs_in_generate(tiny_model_dir, batch):
    model, adapter = adapted(tiny_model_dir)
    rows = torch.tensor([LAM_A, LAM_B, [0.5, 0.5]])
    kwargs = {"max_new_tokens": 12, "do_sample": False, "use_cache": True, "pad_token_id": 0}
    with adapter.preference(rows), torch.no_grad():
        together = model.generate(**batch, **kwargs)
    for b in range(3):
        with adapter.preference(rows[b]), torch.no_grad():
            alone = model.generate(**batch, **kwargs)[b]
        assert together[b].tolist() == alone.tolist()
    # the grid really spans different outputs: λ matters in generation too
    with adapter.preference(LAM_A), torch.no_grad():
        a = model.generate(**batch, **kwargs)
    with adapter.preference(LAM_B), torch.no_grad():
        b = model.generate(**batch, **kwargs)
    assert not torch.equal(a, b)


def test_num_return_sequences_repeats_rows(tiny_model_dir, batch):
    """generate(num_return_sequences=2) with 3 λ rows == 6 explicit rows, same sampling seed."""
    model, adapter = adapted(tiny_model_dir)
    rows = torch.tensor([LAM_A, LAM_B, [0.5, 0.5]])
    kwargs = {"max_new_tokens": 6, "do_sample": True, "pad_token_id": 0}
    with adapter.preference(rows, repeats=2), torch.no_grad():
        torch.manual_seed(0)
        out = model.generate(**batch, num_return_sequences=2, **kwargs)
    repeated = {k: v.repeat_interleave(2, dim=0) for k, v in batch.items()}
    with adapter.preference(rows.repeat_interleave(2, dim=0)), torch.no_grad():
        torch.manual_seed(0)
        explicit = model.generate(**repeated, **kwargs)
    assert out.tolist() == explicit.tolist()
    # without repeats, a batch that is a multiple of the rows is an error, not a silent repeat
    with adapter.preference(rows), torch.no_grad(), pytest.raises(RuntimeError, match="repeats=2"):
        model.generate(**batch, num_return_sequences=2, **kwargs)


def test_merge_equals_unmerged_and_unmerge_restores(tiny_model_dir, batch):
    model, adapter = adapted(tiny_model_dir)
    weights = {n: p.detach().clone() for n, p in model.named_parameters() if "base_layer" in n}
    with adapter.preference(LAM_B):
        unmerged = logits(model, batch)
    adapter.merge(LAM_B)
    torch.testing.assert_close(logits(model, batch), unmerged, rtol=1e-5, atol=1e-5)
    with pytest.raises(RuntimeError, match="merged"):
        adapter.set_preference(LAM_A)
    adapter.unmerge()
    for n, p in model.named_parameters():
        if n in weights:
            torch.testing.assert_close(p, weights[n], rtol=0, atol=1e-6)
    with adapter.preference(LAM_B):
        torch.testing.assert_close(logits(model, batch), unmerged, rtol=1e-6, atol=1e-6)


def test_merge_refuses_a_weight_tied_to_another_layer(tiny_model_dir, batch):
    """The output layer adapted in a model whose input and output embeddings are one tensor:
    merging would change the embeddings too, so it is refused before any weight moves; the
    unmerged adapter works, and after untying, the merge equals it."""
    model = tiny.load(tiny_model_dir)
    embedding = model.get_input_embeddings()
    model.get_output_embeddings().weight = embedding.weight  # what tie_word_embeddings does
    before = embedding.weight.detach().clone()
    config = PanaceaConfig(num_general=2, num_preferences=2, target_modules=["lm_head"])
    adapter = inject_adapter(model, config)
    with torch.no_grad():
        adapter.layers["lm_head"].panacea_U.normal_(0, 0.1)
    with adapter.preference(LAM_B):
        unmerged = logits(model, batch)
    with pytest.raises(ValueError, match=r"lm_head: its weight is also .*(embed_tokens|wte).*tied"):
        adapter.merge(LAM_B)
    assert not adapter.merged
    torch.testing.assert_close(embedding.weight, before, rtol=0, atol=0)
    model.lm_head.base_layer.weight = torch.nn.Parameter(before.clone(), requires_grad=False)
    adapter.merge(LAM_B)
    torch.testing.assert_close(logits(model, batch), unmerged, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(embedding.weight, before, rtol=0, atol=0)


def test_save_load_identical(tiny_model_dir, batch, tmp_path):
    model, adapter = adapted(tiny_model_dir)
    with adapter.preference(LAM_B):
        expected = logits(model, batch)
    save_adapter(adapter, tmp_path / "adapter")
    fresh = tiny.load(tiny_model_dir)
    loaded = load_adapter(fresh, tmp_path / "adapter")
    assert loaded.config.num_general == 4
    with loaded.preference(LAM_B):
        torch.testing.assert_close(logits(fresh, batch), expected, rtol=0, atol=0)


def test_peft_export_reproduces_outputs(tiny_model_dir, batch, tmp_path):
    peft = pytest.importorskip("peft")
    model, adapter = adapted(tiny_model_dir)
    with adapter.preference(LAM_B):
        expected = logits(model, batch)
    export_peft(adapter, tmp_path / "lora", LAM_B)
    served = peft.PeftModel.from_pretrained(tiny.load(tiny_model_dir), tmp_path / "lora").eval()
    torch.testing.assert_close(logits(served, batch), expected, rtol=1e-5, atol=1e-5)


def test_gradients_reach_every_part_within_two_steps(tiny_model_dir, batch):
    model, adapter = adapted(tiny_model_dir, perturbed=False)
    opt = torch.optim.Adam(adapter.parameters(), lr=1e-2)
    seen = {name: False for name, _ in adapter.named_parameters()}
    for _ in range(2):
        with adapter.preference(LAM_A):
            loss = model(**batch, labels=batch["input_ids"]).loss
        opt.zero_grad()
        loss.backward()
        for name, p in adapter.named_parameters():
            seen[name] |= bool(p.grad is not None and p.grad.abs().sum() > 0)
        opt.step()
    assert all(seen.values()), [n for n, ok in seen.items() if not ok][:5]


def test_bf16_base_weights(tiny_llama_dir, batch):
    model = tiny.load(tiny_llama_dir, dtype=torch.bfloat16)
    adapter = inject_adapter(model, PanaceaConfig(num_general=4, num_preferences=2))
    perturb(adapter)
    assert all(p.dtype == torch.float32 for p in adapter.parameters())
    with adapter.preference(LAM_A):
        out = model(**batch).logits
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()
    with adapter.preference(LAM_A):
        model(**batch, labels=batch["input_ids"]).loss.backward()
    assert all(p.grad is not None for p in adapter.parameters())


def test_orthogonality_loss_zero_for_orthonormal_factors(tiny_llama_dir):
    model, adapter = adapted(tiny_llama_dir, perturbed=False)
    # V starts with orthonormal rows and U at 0, so only the U term (= r per layer) remains.
    r = adapter.config.total_rank
    expected = r * len(adapter.layers)
    assert adapter.orthogonality_loss().item() == pytest.approx(expected, rel=1e-4)


def test_regex_targets(tiny_llama_dir):
    model = tiny.load(tiny_llama_dir)
    adapter = inject_adapter(
        model, PanaceaConfig(target_modules=r".*layers\.1\.self_attn\.[qv]_proj")
    )
    assert sorted(adapter.layers) == [
        "model.layers.1.self_attn.q_proj",
        "model.layers.1.self_attn.v_proj",
    ]
    assert PanaceaAdapter.of(model).layers.keys() == adapter.layers.keys()


# ---- clear errors ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("lam", "message"),
    [
        ([0.5, 0.3, 0.2], r"shape \[2\]"),
        ([-0.1, 1.1], "negative"),
        ([0.5, 0.6], "sums to 1.1"),
        ([float("nan"), 1.0], "NaN"),
        ([[0.5, 0.5], [0.7, 0.7]], r"row 1"),
    ],
)
def test_bad_preference_is_rejected(tiny_llama_dir, lam, message):
    _, adapter = adapted(tiny_llama_dir)
    with pytest.raises(PreferenceError, match=message):
        adapter.set_preference(lam)


def test_normalize_flag(tiny_llama_dir):
    _, adapter = adapted(tiny_llama_dir)
    adapter.set_preference([1.0, 3.0], normalize=True)
    assert adapter.current_preference.tolist() == [0.25, 0.75]


def test_forward_without_preference_explains(tiny_llama_dir, batch):
    model, _ = adapted(tiny_llama_dir)
    with pytest.raises(RuntimeError, match="set_preference"):
        logits(model, batch)


def test_per_sample_rows_must_match_batch(tiny_llama_dir, batch):
    model, adapter = adapted(tiny_llama_dir)
    with (
        adapter.preference([LAM_A, LAM_B]),
        pytest.raises(RuntimeError, match="2 rows but the batch has 3"),
    ):
        logits(model, batch)


def test_unknown_targets_list_what_exists(tiny_llama_dir):
    with pytest.raises(ValueError, match=r"leaf names \[.*'q_proj'"):
        inject_adapter(tiny.load(tiny_llama_dir), PanaceaConfig(target_modules=["query"]))


def test_adapter_onto_wrong_base(tiny_llama_dir, tiny_gpt2_dir, tmp_path):
    _, adapter = adapted(tiny_llama_dir)
    save_adapter(adapter, tmp_path / "a")
    with pytest.raises(AdapterLoadError, match="does not fit this base model"):
        load_adapter(tiny.load(tiny_gpt2_dir), tmp_path / "a")


def test_adapter_onto_base_of_other_width(tiny_llama_dir, tiny_tokenizer_dir, tmp_path):
    _, adapter = adapted(tiny_llama_dir)
    save_adapter(adapter, tmp_path / "a")
    other = tmp_path / "wide"
    tiny.build_llama(other, tiny_tokenizer_dir)
    cfg = json.loads((other / "config.json").read_text())
    cfg.update(hidden_size=48, intermediate_size=96)
    (other / "config.json").write_text(json.dumps(cfg))
    from transformers import AutoConfig, AutoModelForCausalLM

    wide = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(other))
    with pytest.raises(AdapterLoadError, match=r"q_proj: base has in/out \[48, "):
        load_adapter(wide, tmp_path / "a")


def test_truncated_adapter_file(tiny_llama_dir, tmp_path):
    _, adapter = adapted(tiny_llama_dir)
    path = save_adapter(adapter, tmp_path / "a") / "panacea_adapter.safetensors"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(AdapterLoadError, match="truncated or corrupt"):
        load_adapter(tiny.load(tiny_llama_dir), tmp_path / "a")


def test_missing_adapter_folder(tiny_llama_dir, tmp_path):
    with pytest.raises(AdapterLoadError, match="not a Panacea adapter folder"):
        load_adapter(tiny.load(tiny_llama_dir), tmp_path)


def test_double_injection_refused(tiny_llama_dir):
    model, _ = adapted(tiny_llama_dir)
    with pytest.raises(ValueError, match="already has a Panacea adapter"):
        inject_adapter(model, PanaceaConfig())
