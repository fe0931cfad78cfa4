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
