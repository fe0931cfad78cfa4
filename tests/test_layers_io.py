"""Bad adapter configs and folders: each refused with the file, field, value and expectation."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

import tiny
from panacea_pl.layers import (
    AdapterLoadError,
    PanaceaConfig,
    export_peft,
    inject_adapter,
    load_adapter,
    read_adapter_config,
    save_adapter,
)
from panacea_pl.modules.base import ADAPTER_CONFIG_KEY, PanaceaModule

CONFIG = "panacea_config.json"
WEIGHTS = "panacea_adapter.safetensors"


@pytest.fixture
def saved(tiny_llama_dir, tmp_path):
    adapter = inject_adapter(
        tiny.load(tiny_llama_dir), PanaceaConfig(num_general=4, num_preferences=2)
    )
    return save_adapter(adapter, tmp_path / "adapter")


def edit_meta(folder, edit) -> None:
    meta = json.loads((folder / CONFIG).read_text())
    edit(meta)
    (folder / CONFIG).write_text(json.dumps(meta))


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("alpha", 0, "alpha = 0: expected a finite number > 0"),
        ("alpha", -2.0, "alpha = -2.0: expected a finite number > 0"),
        ("alpha", float("nan"), "alpha = nan"),
        ("num_general", -1, "num_general = -1: expected an integer >= 0"),
        ("num_general", "4", "num_general = '4': expected an integer"),
        ("num_general", 2.5, "num_general = 2.5"),
        ("num_preferences", 0, "num_preferences = 0: expected an integer >= 1"),
        ("num_preferences", True, "num_preferences = True"),
        ("dropout", 1.0, r"dropout = 1.0: expected a number in \[0, 1\)"),
        ("dropout", float("nan"), "dropout = nan"),
        ("target_modules", [], "target_modules = \\[\\]: expected a non-empty list"),
        ("target_modules", "(", "target_modules = '\\(': expected a valid regular expression"),
        ("dtype", "float33", "dtype = 'float33' is not a floating-point dtype; expected one of"),
        (
            "dtype",
            "Tensor",
            "dtype = 'Tensor' is not a floating-point dtype; expected one of .*bf16",
        ),
    ],
)
def test_config_fields_refused(field, value, expected):
    with pytest.raises(ValueError, match=f"PanaceaConfig.{expected}"):
        PanaceaConfig(**{field: value})


def test_config_dtype_aliases_are_canonical():
    assert PanaceaConfig(dtype="bf16").dtype == "bfloat16"
    assert PanaceaConfig(dtype="FP16").dtype == "float16"
    assert PanaceaConfig(dtype="torch.float32").dtype == "float32"
    assert PanaceaConfig(alpha=16).scaling == 16 / 10


def test_adapter_dtype_alias_reaches_the_weights(tiny_llama_dir):
    adapter = inject_adapter(tiny.load(tiny_llama_dir), PanaceaConfig(num_general=2, dtype="bf16"))
    assert {p.dtype for p in adapter.parameters()} == {torch.bfloat16}


def test_missing_layers_field(saved):
    edit_meta(saved, lambda m: m.pop("layers"))
    with pytest.raises(AdapterLoadError, match=f"{CONFIG}: field 'layers' is missing; expected"):
        read_adapter_config(saved)


def test_string_num_general_in_saved_json(saved, tiny_llama_dir):
    edit_meta(saved, lambda m: m["config"].update(num_general="4"))
    with pytest.raises(
        AdapterLoadError, match=r"panacea_config.json: field 'config': .*num_general = '4'"
    ):
        load_adapter(tiny.load(tiny_llama_dir), saved)


def test_missing_config_field_is_not_defaulted(saved):
    edit_meta(saved, lambda m: m["config"].pop("num_preferences"))
    with pytest.raises(AdapterLoadError, match=r"field 'config' lacks \['num_preferences'\]"):
        read_adapter_config(saved)


def test_legacy_rank_field_is_read_as_num_general(saved, tiny_llama_dir):
    """Folders saved before the rename store k as `rank`; they load with k intact."""
    edit_meta(saved, lambda m: m["config"].update(rank=m["config"].pop("num_general")))
    assert read_adapter_config(saved).num_general == 4
    loaded = load_adapter(tiny.load(tiny_llama_dir), saved)
    assert loaded.config.num_general == 4 and loaded.config.total_rank == 6
    edit_meta(saved, lambda m: m["config"].update(num_general=4))
    with pytest.raises(AdapterLoadError, match="'rank' and 'num_general' both given"):
        read_adapter_config(saved)


def test_legacy_checkpoint_config_is_compared_under_the_new_name():
    """A checkpoint's saved adapter config with the old `rank` key names `num_general`."""
    module = SimpleNamespace(
        policy=SimpleNamespace(adapter=SimpleNamespace(config=PanaceaConfig()))
    )
    checkpoint = {ADAPTER_CONFIG_KEY: {"rank": 0, "num_preferences": 2}}
    message = PanaceaModule._mismatch_message(module, checkpoint, [], [])
    assert "num_general=0 in the checkpoint, 8 in the config" in message


def test_bad_layer_shape_and_non_object_json(saved, tiny_llama_dir):
    edit_meta(saved, lambda m: m["layers"].update({next(iter(m["layers"])): "big"}))
    with pytest.raises(AdapterLoadError, match=r"field 'layers', layer '.*' = 'big'; expected"):
        load_adapter(tiny.load(tiny_llama_dir), saved)
    (saved / CONFIG).write_text("[1, 2]")
    with pytest.raises(AdapterLoadError, match="expected a JSON object, got list"):
        read_adapter_config(saved)


def test_missing_adapter_folder_is_named(tmp_path):
    with pytest.raises(AdapterLoadError, match="does not exist"):
        read_adapter_config(tmp_path / "nowhere")


def test_overwritten_payload_is_corrupt(saved, tiny_llama_dir):
    """Bytes of the payload overwritten with NaN patterns: the checksum catches it."""
    path = saved / WEIGHTS
    data = bytearray(path.read_bytes())
    data[-64:] = b"\xff" * 64  # float32 NaNs
    path.write_bytes(bytes(data))
    with pytest.raises(AdapterLoadError, match=f"{WEIGHTS} is truncated or corrupt: its sha256"):
        load_adapter(tiny.load(tiny_llama_dir), saved)


def test_old_adapter_without_checksum_loads_but_refuses_nan(saved, tiny_llama_dir):
    edit_meta(saved, lambda m: m.pop("sha256"))
    load_adapter(tiny.load(tiny_llama_dir), saved)  # older adapters still load
    path = saved / WEIGHTS
    data = bytearray(path.read_bytes())
    data[-64:] = b"\xff" * 64
    path.write_bytes(bytes(data))
    with pytest.raises(AdapterLoadError, match="hold NaN or infinity"):
        load_adapter(tiny.load(tiny_llama_dir), saved)


def test_export_peft_refuses_non_empty_folder(tiny_llama_dir, tmp_path):
    adapter = inject_adapter(tiny.load(tiny_llama_dir), PanaceaConfig(num_general=2))
    out = export_peft(adapter, tmp_path / "lora", [0.2, 0.8])
    first = (out / "adapter_model.safetensors").read_bytes()
    with pytest.raises(FileExistsError, match="is not empty.*overwrite=True"):
        export_peft(adapter, out, [0.9, 0.1])
    assert (out / "adapter_model.safetensors").read_bytes() == first  # nothing lost
    (out / "README.md").write_text("old export")
    export_peft(adapter, out, [0.9, 0.1], overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
    ]
    (out / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match=r"not a PEFT export \(\['notes.txt'\]\)"):
        export_peft(adapter, out, [0.9, 0.1], overwrite=True)
    assert (out / "notes.txt").exists()


def test_export_peft_puts_c_in_lora_a_and_u_in_lora_b(tiny_llama_dir, tmp_path):
    """As its docstring says: lora_B = U, lora_A = c·diag(σ, s·λ)·V (here c = 8 / (2 + 2) = 2)."""
    config = PanaceaConfig(num_general=2, num_preferences=2, alpha=8.0)
    adapter = inject_adapter(tiny.load(tiny_llama_dir), config)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in adapter.parameters():
            p.copy_(torch.randn_like(p))
    out = export_peft(adapter, tmp_path / "lora", [0.25, 0.75])
    tensors = load_file(out / "adapter_model.safetensors")
    name, layer = next(iter(adapter.layers.items()))
    lam = torch.tensor([0.25, 0.75])
    d = 2.0 * torch.cat([layer.panacea_sigma, layer.panacea_scale * lam]).detach()
    prefix = f"base_model.model.{name}"
    torch.testing.assert_close(tensors[f"{prefix}.lora_B.weight"], layer.panacea_U.detach())
    torch.testing.assert_close(
        tensors[f"{prefix}.lora_A.weight"], d[:, None] * layer.panacea_V.detach()
    )
    assert json.loads((out / "adapter_config.json").read_text())["r"] == config.total_rank == 4
