"""Save and load the adapter (safetensors + JSON), and export one λ as a standard PEFT LoRA.

save_adapter(adapter, "runs/x/adapter")
adapter = load_adapter(AutoModelForCausalLM.from_pretrained(base), "runs/x/adapter")
export_peft(adapter, "runs/x/lora-helpful", preference=[0.8, 0.2])
# any LoRA server / PeftModel.from_pretrained(base, "runs/x/lora-helpful") serves that λ
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from panacea_pl.atomic import atomic_write
from panacea_pl.layers.config import PanaceaConfig, upgrade_fields
from panacea_pl.layers.functional import singular_values
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
    tensors = {name: t.contiguous().cpu() for name, t in adapter.state_dict().items()}
    layers = {name: list(linear_shape(layer.base_layer)) for name, layer in adapter.layers.items()}
    return write_adapter_folder(
        directory,
        {**adapter.config.to_dict(), "target_modules": sorted(adapter.layers)},
        tensors,
        layers,
        _base_name(adapter),
    )


def write_adapter_folder(
    directory: str | Path,
    config: dict,
    tensors: dict[str, torch.Tensor],
    layers: dict[str, list[int]],
    base_model: str | None,
    **extra,
) -> Path:
    """The adapter folder `load_adapter` reads: weights first, then the JSON with their sha256
    (so a folder whose JSON exists is whole). `layers` maps each adapted layer to its base
    layer's [in_features, out_features]; `extra` adds fields to the JSON."""
    directory = Path(directory)
    meta = {
        "format_version": FORMAT_VERSION,
        "config": config,
        "layers": layers,
        "base_model_name_or_path": base_model,
        **extra,
    }
    _atomic_write(directory / WEIGHTS_NAME, lambda tmp: save_file(tensors, tmp))
    meta["sha256"] = _sha256(directory / WEIGHTS_NAME)
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
    config = _config_of(meta, directory / CONFIG_NAME)
    _check_fits(model, meta["layers"], directory)
    tensors = _read_weights(directory, meta)
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


def read_adapter_config(directory: str | Path) -> PanaceaConfig:
    """The `PanaceaConfig` of a saved adapter, read from its JSON alone (no weights, no model).

    Raises:
        AdapterLoadError: no adapter folder, or a JSON file with missing or invalid fields.
    """
    directory = Path(directory)
    return _config_of(_read_meta(directory), directory / CONFIG_NAME)


def _read_meta(directory: Path) -> dict:
    path = directory / CONFIG_NAME
    if not directory.is_dir():
        raise AdapterLoadError(f"adapter folder {directory} does not exist")
    if not path.is_file():
        raise AdapterLoadError(f"no {CONFIG_NAME} in {directory}: not a Panacea adapter folder")
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise AdapterLoadError(f"{path} is not valid JSON ({err})") from err
    if not isinstance(meta, dict):
        raise AdapterLoadError(f"{path}: expected a JSON object, got {type(meta).__name__}")
    if meta.get("format_version") != FORMAT_VERSION:
        raise AdapterLoadError(
            f"{path}: format_version {meta.get('format_version')!r}, this version reads "
            f"{FORMAT_VERSION}"
        )
    for field, kind, expected in (
        ("config", dict, "an object of PanaceaConfig fields"),
        ("layers", dict, "an object {layer name: [in_features, out_features]}"),
    ):
        if field not in meta:
            raise AdapterLoadError(f"{path}: field '{field}' is missing; expected {expected}")
        if not isinstance(meta[field], kind):
            raise AdapterLoadError(
                f"{path}: field '{field}' = {meta[field]!r}; expected {expected}"
            )
    for name, shape in meta["layers"].items():
        if not (
            isinstance(shape, list)
            and len(shape) == 2
            and all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in shape)
        ):
            raise AdapterLoadError(
                f"{path}: field 'layers', layer '{name}' = {shape!r}; expected "
                "[in_features, out_features], two positive integers"
            )
    checksum = meta.get("sha256")
    if checksum is not None and not (isinstance(checksum, str) and len(checksum) == 64):
        raise AdapterLoadError(
            f"{path}: field 'sha256' = {checksum!r}; expected 64 hex digits (or no field)"
        )
    return meta


def _config_of(meta: dict, path: Path) -> PanaceaConfig:
    try:
        fields = upgrade_fields(meta["config"])
    except ValueError as err:
        raise AdapterLoadError(f"{path}: field 'config': {err}") from None
    missing = [f for f in ("num_general", "num_preferences") if f not in fields]
    if missing:
        raise AdapterLoadError(
            f"{path}: field 'config' lacks {missing}; expected the PanaceaConfig the adapter was "
            "saved with (its weights' shapes depend on them)"
        )
    try:
        return PanaceaConfig.from_dict(fields)
    except (TypeError, ValueError) as err:
        raise AdapterLoadError(f"{path}: field 'config': {err}") from None


def _read_weights(directory: Path, meta: dict) -> dict[str, torch.Tensor]:
    """The folder's tensors, checked against the sha256 its JSON recorded and for NaN/infinity.

    Raises:
        AdapterLoadError: a missing, changed, truncated or non-finite weights file.
    """
    weights = directory / WEIGHTS_NAME
    expected = meta.get("sha256")
    if expected is not None and weights.is_file() and _sha256(weights) != expected:
        raise AdapterLoadError(
            f"{weights} is truncated or corrupt: its sha256 differs from the one recorded in "
            f"{directory / CONFIG_NAME} when it was saved (the file was changed or damaged "
            "since); save the adapter again with save_adapter"
        )
    try:
        tensors = load_file(str(weights))
    except (SafetensorError, OSError) as err:
        raise AdapterLoadError(
            f"{weights} is missing, truncated or corrupt ({err}); "
            "save the adapter again with save_adapter"
        ) from err
    bad = sorted(name for name, t in tensors.items() if not torch.isfinite(t).all())
    if bad:
        raise AdapterLoadError(
            f"{weights} is corrupt: {len(bad)} tensors hold NaN or infinity (e.g. {bad[:3]}); "
            "expected finite weights"
        )
    return tensors


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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


PEFT_FILES = ("adapter_model.safetensors", "adapter_config.json", "adapter_model.bin", "README.md")


def _clear_for_export(directory: Path, overwrite: bool) -> None:
    """Refuse a non-empty folder, or with `overwrite` remove a previous export's files."""
    if directory.exists() and not directory.is_dir():
        raise FileExistsError(f"export_peft: {directory} is a file; expected a folder")
    present = sorted(p.name for p in directory.iterdir()) if directory.is_dir() else []
    if not present:
        return
    if not overwrite:
        raise FileExistsError(
            f"export_peft: {directory} is not empty ({present[:5]}); choose a new folder or "
            "pass overwrite=True to replace a previous export"
        )
    foreign = [name for name in present if name not in PEFT_FILES]
    if foreign:
        raise FileExistsError(
            f"export_peft: {directory} holds files that are not a PEFT export ({foreign[:5]}); "
            "refusing to overwrite it, choose a new folder"
        )
    for name in present:
        (directory / name).unlink()


def export_peft(
    adapter: PanaceaAdapter,
    directory: str | Path,
    preference: PreferenceLike,
    overwrite: bool = False,
) -> Path:
    """Write a standard PEFT LoRA folder equal to the adapter at one fixed λ.

    With r = `total_rank` (k + m for one singular value per dimension) and lora_alpha = r (PEFT
    scaling 1): lora_B = U and lora_A = diag(d)·V with d = c·[σ_1 … σ_k, s·λ_1 … s·λ_m]
    (`singular_values`: c sits in A, not in B), so B·A = c·U·diag(σ, s·λ)·V, our update. GPT-2's Conv1D layers get
    `fan_in_fan_out`.

    Args:
        adapter: the adapter to export.
        directory: a new or empty folder.
        preference: λ of shape [m].
        overwrite: replace a previous export in `directory` (its PEFT files are removed first).

    Raises:
        FileExistsError: `directory` holds files and `overwrite` is False, or holds files that are
            not a PEFT export (never deleted).
    """
    directory = Path(directory)
    lam = validate_preference(preference, adapter.num_preferences)
    if lam.dim() != 1:
        raise ValueError("export_peft needs one λ of shape [m]")
    _clear_for_export(directory, overwrite)
    tensors, conv1d = {}, set()
    state = adapter.state_dict()  # whole tensors, also from a sharded (FSDP2) model
    with torch.no_grad():
        for name, layer in adapter.layers.items():
            sigma, scale = state[f"{name}.panacea_sigma"], state[f"{name}.panacea_scale"]
            lam_l = lam.to(device=scale.device, dtype=scale.dtype)
            d = singular_values(sigma, scale, lam_l, layer.scaling, layer.rank_per_preference)
            prefix = f"base_model.model.{name}"
            lora_a = d[:, None] * state[f"{name}.panacea_V"]
            tensors[f"{prefix}.lora_A.weight"] = lora_a.contiguous().cpu()
            tensors[f"{prefix}.lora_B.weight"] = state[f"{name}.panacea_U"].contiguous().cpu()
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
