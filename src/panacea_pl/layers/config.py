"""Configuration of the Panacea SVD-LoRA adapter."""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass
from typing import Any

from panacea_pl.checks import dtype_name, resolve_dtype

# Linear layers adapted by default, per `config.model_type` of a Hugging Face model.
_LLAMA_LIKE = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
DEFAULT_TARGET_MODULES: dict[str, list[str]] = {
    "llama": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "qwen3": _LLAMA_LIKE,
    "gemma": _LLAMA_LIKE,
    "gemma2": _LLAMA_LIKE,
    "phi3": ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"],
    "gpt2": ["c_attn", "c_proj", "c_fc"],
}


@dataclass
class PanaceaConfig:
    """Shape and placement of the adapter  W(λ) = W0 + c · U · diag(σ_1…σ_k, s·λ_1…s·λ_m) · V.

    The update's rank is `total_rank` = num_general + num_preferences · rank_per_preference
    (k + m for Panacea's one singular value per dimension): that is PEFT's LoRA `r` (what
    `export_peft` writes), not `num_general`.

    Args:
        num_general: k, the number of general (preference-independent) singular values σ.
            Called `rank` in earlier versions; adapter folders and checkpoints saved with `rank`
            still load (see `LEGACY_FIELDS`).
        num_preferences: m, the number of preference dimensions; λ has m entries.
        rank_per_preference: singular values per preference dimension, each s·λ_i (1, the
            paper's). An average of n adapters (`average_adapters`) has n times its members'.
        alpha: scaling numerator: c = alpha / total_rank, as in LoRA. None means alpha =
            total_rank, i.e. c = 1.
        dropout: dropout on the adapter's input (training only).
        target_modules: which linear layers to adapt. A list of names matches a module whose full
            name equals an entry or ends with "." + entry; a string is a regular expression that
            must match the full name. None uses DEFAULT_TARGET_MODULES for the model's type.
        dtype: dtype of the adapter parameters ("float32" keeps them in full precision even
            when the base model is bf16).
    """

    num_general: int = 8
    num_preferences: int = 2
    rank_per_preference: int = 1
    alpha: float | None = None
    dropout: float = 0.0
    target_modules: list[str] | str | None = None
    dtype: str = "float32"

    def __post_init__(self) -> None:
        check_fields(self)

    @property
    def total_rank(self) -> int:
        """k + m·rank_per_preference: the number of singular values, i.e. the rank of the update
        (PEFT's `r`)."""
        return self.num_general + self.num_preferences * self.rank_per_preference

    @property
    def scaling(self) -> float:
        """c = alpha / total_rank."""
        alpha = self.total_rank if self.alpha is None else self.alpha
        return float(alpha) / self.total_rank

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> PanaceaConfig:
        """The config from `to_dict`'s mapping, or from an older version's (see `LEGACY_FIELDS`)."""
        if not isinstance(data, dict):
            raise ValueError(f"a PanaceaConfig must be a mapping of fields, got {data!r}")
        data = upgrade_fields(data)
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(
                f"unknown PanaceaConfig fields {unknown}; known fields: {sorted(known)}"
            )
        return cls(**data)


#: The key under which a Panacea module's Lightning checkpoint holds its adapter's config
#: (`modules.base` writes it, `layers.average` reads it).
ADAPTER_CONFIG_KEY = "panacea_adapter_config"

# Fields renamed since earlier versions: old name -> new name. Adapter folders
# (`layers.io`'s config JSON) and Lightning checkpoints (`ADAPTER_CONFIG_KEY`)
# written before the rename store the old name.
LEGACY_FIELDS: dict[str, str] = {"rank": "num_general"}


def upgrade_fields(data: dict) -> dict:
    """A copy of a saved config mapping with `LEGACY_FIELDS` renamed to their current names.

    Raises:
        ValueError: the mapping holds both a field's old and its new name.
    """
    out = dict(data)
    for old, new in LEGACY_FIELDS.items():
        if old in out:
            if new in out:
                raise ValueError(
                    f"PanaceaConfig fields {old!r} and {new!r} both given; {old!r} is the old "
                    f"name of {new!r}, keep only {new!r}"
                )
            out[new] = out.pop(old)
    return out


def _bad(field: str, value: Any, expected: str) -> ValueError:
    return ValueError(f"PanaceaConfig.{field} = {value!r}: expected {expected}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def check_fields(config: PanaceaConfig) -> None:
    """Refuse a config that cannot train: each message names the field, value and expectation.

    `dtype` is rewritten to its canonical name ("bf16" → "bfloat16").
    """
    if not _is_int(config.num_general) or config.num_general < 0:
        raise _bad(
            "num_general", config.num_general, "an integer >= 0 (k, the general singular values)"
        )
    if not _is_int(config.num_preferences) or config.num_preferences < 1:
        raise _bad("num_preferences", config.num_preferences, "an integer >= 1 (m)")
    if not _is_int(config.rank_per_preference) or config.rank_per_preference < 1:
        raise _bad(
            "rank_per_preference",
            config.rank_per_preference,
            "an integer >= 1 (singular values per preference dimension)",
        )
    alpha = config.alpha
    if alpha is not None and not (_is_number(alpha) and math.isfinite(alpha) and alpha > 0):
        raise _bad(
            "alpha",
            alpha,
            "a finite number > 0 (the scaling c = alpha / total_rank; 0 "
            "would freeze the adapter at the base model) or null for c = 1",
        )
    dropout = config.dropout
    if not (_is_number(dropout) and 0.0 <= dropout < 1.0):
        raise _bad("dropout", dropout, "a number in [0, 1)")
    targets = config.target_modules
    if isinstance(targets, str):
        try:
            re.compile(targets)
        except re.error as err:
            raise _bad("target_modules", targets, f"a valid regular expression ({err})") from None
    elif targets is not None and (
        not isinstance(targets, list | tuple)
        or not targets
        or not all(isinstance(t, str) and t for t in targets)
    ):
        raise _bad(
            "target_modules", targets, "a non-empty list of layer names, a regex string, or null"
        )
    config.dtype = dtype_name(resolve_dtype(config.dtype, "PanaceaConfig.dtype"))
