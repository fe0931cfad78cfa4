"""dtype names and model paths, as users type them."""

from __future__ import annotations

import pytest
import torch

from panacea_pl.checks import check_model_path, resolve_dtype


@pytest.mark.parametrize(
    ("name", "dtype"),
    [
        ("bf16", torch.bfloat16),
        ("bfloat16", torch.bfloat16),
        ("fp16", torch.float16),
        ("half", torch.float16),
        ("float16", torch.float16),
        ("fp32", torch.float32),
        ("float", torch.float32),
        ("Float32", torch.float32),
        ("torch.bfloat16", torch.bfloat16),
        (torch.float64, torch.float64),
    ],
)
def test_dtype_aliases(name, dtype):
    assert resolve_dtype(name, "x.dtype") is dtype


@pytest.mark.parametrize("name", ["float33", "Tensor", "int8", "", None, torch.int64])
def test_bad_dtype_lists_valid_names(name):
    with pytest.raises(ValueError, match=r"my\.dtype = .* expected one of .*bf16.*fp16.*fp32"):
        resolve_dtype(name, "my.dtype")


@pytest.mark.parametrize(
    "path", ["/no/such/model", "./missing", "../missing", "~/no_such_x", "a/b/c"]
)
def test_missing_local_model_folder(path):
    with pytest.raises(FileNotFoundError, match=r"Policy\.model_name_or_path = .*: no such folder"):
        check_model_path(path, "Policy.model_name_or_path")


def test_existing_folder_and_hub_id_pass(tmp_path, monkeypatch):
    assert check_model_path(str(tmp_path), "x") == str(tmp_path)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    assert check_model_path("owner/name", "x") == "owner/name"
    (tmp_path / "f.bin").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="is a file; expected a model folder"):
        check_model_path(str(tmp_path / "f.bin"), "x")


def test_hub_id_not_cached_while_offline(monkeypatch):
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    with pytest.raises(FileNotFoundError, match=r"tok = 'owner/name': .*HF_HUB_OFFLINE=1 forbids"):
        check_model_path("owner/name", "tok")


def test_neither_folder_nor_hub_id():
    with pytest.raises(FileNotFoundError, match=r"m = 'my model': no such folder .*not a hub id"):
        check_model_path("my model", "m")
