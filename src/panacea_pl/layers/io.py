"""Save and load the adapter (safetensors + JSON), and export one λ as a standard PEFT LoRA.

save_adapter(adapter, "runs/x/adapter")
adapter = load_adapter(AutoModelForCausalLM.from_pretrained(base), "runs/x/adapter")
export_peft(adapter, "runs/x/lora-helpful", preference=[0.8, 0.2])
# any LoRA server / PeftModel.from_pretrained(base, "runs/x/lora-helpful") serves that λ
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from panacea_pl.atomic import atomic_write
from panacea_pl.layers.config import PanaceaConfig
from panacea_pl.layers.layer import linear_shape
from panacea_pl.layers.model import PanaceaAdapter, inject_adapter
from panacea_pl.preference import PreferenceLike, validate_preference

CONFIG_NAME = "panacea_config.json"
WEIGHTS_NAME = "panacea_adapter.safetensors"
FORMAT_VERSION = 1


class AdapterLoadError(RuntimeError):
    """An adapter folder that is missing, corrupt, or does not fit the base model."""


def _atomic_write(path: Path, write) -> None:
    """Write through a temporary file in the same folder, fsync and rename: a crash never
    leaves a half-written file (see `panacea_pl.atomic`)."""
    atomic_write(path, write)


def _base_name(adapter: PanaceaAdapter) -> str | None:
    return getattr(getattr(adapter.model, "config", None), "_name_or_path", None)


def save_adapter(adapter: PanaceaAdapter, directory: str | Path) -> Path:
    """Write `panacea_config.json` and `panacea_adapter.safetensors` into `directory`."""
    directory = Path(directory)
    tensors = {name: t.contiguous().cpu() for name, t in adapter.state_dict().items()}
    meta = {
        "format_version": FORMAT_VERSION,
        "config": {**adapter.config.to_dict(), "target_modules": sorted(adapter.layers)},
        "layers": {
            name: list(linear_shape(layer.base_layer)) for name, layer in adapter.layers.items()
        },
        "base_model_name_or_path": _base_name(adapter),
    }
    _atomic_write(directory / WEIGHTS_NAME, lambda tmp: save_file(tensors, tmp))
    _atomic_write(
        directory / CONFIG_NAME, lambda tmp: Path(tmp).write_text(json.dumps(meta, indent=2))
    )
    return directory


def load_adapter(model: torch.nn.Module, directory: str | Path) -> PanaceaAdapter:
    """Inject a saved adapter into a freshly loaded base model and load its weights.

    Raises:
        AdapterLoadError: missing files, a corrupt/truncated weights file, or a base model whose
            layers do not match the ones the adapter was trained on (names and shapes listed).
    """
    directory = Path(directory)
    meta = _read_meta(directory)
    config = PanaceaConfig.from_dict(meta["config"])
    _check_fits(model, meta["layers"], directory)
    try:
        tensors = load_file(str(directory / WEIGHTS_NAME))
    except (SafetensorError, OSError) as err:
        raise AdapterLoadError(
            f"{directory / WEIGHTS_NAME} is missing, truncated or corrupt ({err}); "
            "save the adapter again with save_adapter"
        ) from err
    adapter = inject_adapter(model, config)
    params = dict(adapter.named_parameters())
    missing = sorted(set(params) - set(tensors))
    unexpected = sorted(set(tensors) - set(params))
    if missing or unexpected:
        raise AdapterLoadError(
            f"{directory / WEIGHTS_NAME} does not match its config: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}"
        )
    with torch.no_grad():
        for name, param in params.items():
            if tensors[name].shape != param.shape:
                raise AdapterLoadError(
                    f"{name}: saved shape {list(tensors[name].shape)}, expected {list(param.shape)}"
                )
            param.copy_(tensors[name])
    return adapter


def _read_meta(directory: Path) -> dict:
    path = directory / CONFIG_NAME
    if not path.is_file():
        raise AdapterLoadError(f"no {CONFIG_NAME} in {directory}: not a Panacea adapter folder")
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise AdapterLoadError(f"{path} is not valid JSON ({err})") from err
    if meta.get("format_version") != FORMAT_VERSION:
        raise AdapterLoadError(
            f"{path}: format_version {meta.get('format_version')!r}, this version reads "
            f"{FORMAT_VERSION}"
        )
    return meta


def _check_fits(model: torch.nn.Module, layers: dict[str, list[int]], directory: Path) -> None:
    modules = dict(model.named_modules())
    problems = []
    for name, (in_f, out_f) in layers.items():
        module = modules.get(name)
        if module is None:
            problems.append(f"{name}: not in the base model")
            continue
        try:
            shape = linear_shape(module)
        except TypeError:
            problems.append(f"{name}: is a {type(module).__name__}, expected Linear/Conv1D")
            continue
        if shape != (in_f, out_f):
            problems.append(
                f"{name}: base has in/out {list(shape)}, adapter expects {[in_f, out_f]}"
            )
    if problems:
        raise AdapterLoadError(
            f"the adapter in {directory} does not fit this base model "
            f"({len(problems)} of {len(layers)} layers): " + "; ".join(problems[:5])
        )


def export_peft(adapter: PanaceaAdapter, directory: str | Path, preference: PreferenceLike) -> Path:
    """Write a standard PEFT LoRA folder equal to the adapter at one fixed λ.

    With r = k + m and lora_alpha = r (PEFT scaling 1): lora_B = c·U and lora_A = diag(d(λ))·V,
    so B·A = c·U·diag(d(λ))·V, our update. GPT-2's Conv1D layers get `fan_in_fan_out`.
    """
    directory = Path(directory)
    lam = validate_preference(preference, adapter.num_preferences)
    if lam.dim() != 1:
        raise ValueError("export_peft needs one λ of shape [m]")
    tensors, conv1d = {}, set()
    with torch.no_grad():
        for name, layer in adapter.layers.items():
            d = layer.singular_values(lam.to(layer.panacea_scale.device))
            prefix = f"base_model.model.{name}"
            tensors[f"{prefix}.lora_A.weight"] = (d[:, None] * layer.panacea_V).contiguous().cpu()
            tensors[f"{prefix}.lora_B.weight"] = layer.panacea_U.detach().contiguous().cpu()
            conv1d.add(layer.is_conv1d)
    if len(conv1d) > 1:
        raise ValueError("PEFT needs one fan_in_fan_out for all targets; this model mixes both")
    r = adapter.config.total_rank
    peft_config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": _base_name(adapter),
        "r": r,
        "lora_alpha": r,
        "lora_dropout": 0.0,
        "target_modules": sorted(adapter.layers),
        "fan_in_fan_out": conv1d.pop(),
        "bias": "none",
        "inference_mode": True,
        "use_rslora": False,
        "init_lora_weights": True,
    }
    _atomic_write(directory / "adapter_model.safetensors", lambda t: save_file(tensors, t))
    _atomic_write(
        directory / "adapter_config.json",
        lambda t: Path(t).write_text(json.dumps(peft_config, indent=2)),
    )
    return directory
