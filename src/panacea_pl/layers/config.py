"""Configuration of the Panacea SVD-LoRA adapter."""

from __future__ import annotations

from dataclasses import asdict, dataclass

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

    Args:
        rank: k, the number of general (preference-independent) singular values σ.
        num_preferences: m, the number of preference dimensions; λ has m entries.
        alpha: scaling numerator: c = alpha / (rank + num_preferences), as in LoRA. None means
            alpha = rank + num_preferences, i.e. c = 1.
        dropout: dropout on the adapter's input (training only).
        target_modules: which linear layers to adapt. A list of names matches a module whose full
            name equals an entry or ends with "." + entry; a string is a regular expression that
            must match the full name. None uses DEFAULT_TARGET_MODULES for the model's type.
        dtype: dtype of the adapter parameters ("float32" keeps them in full precision even
            when the base model is bf16).
    """

    rank: int = 8
    num_preferences: int = 2
    alpha: float | None = None
    dropout: float = 0.0
    target_modules: list[str] | str | None = None
    dtype: str = "float32"

    def __post_init__(self) -> None:
        if self.rank < 0 or self.num_preferences < 1:
            raise ValueError(
                f"need rank >= 0 and num_preferences >= 1, got rank={self.rank}, "
                f"num_preferences={self.num_preferences}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    @property
    def total_rank(self) -> int:
        """k + m: the number of singular values, i.e. the rank of the update."""
        return self.rank + self.num_preferences

    @property
    def scaling(self) -> float:
        """c = alpha / (k + m)."""
        alpha = self.total_rank if self.alpha is None else self.alpha
        return float(alpha) / self.total_rank

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> PanaceaConfig:
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(
                f"unknown PanaceaConfig fields {unknown}; known fields: {sorted(known)}"
            )
        return cls(**data)
