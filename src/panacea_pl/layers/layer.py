"""The Panacea layer: a frozen linear map plus an SVD-style update whose singular values carry λ.

    y = x W0ᵀ + b + c · ((dropout(x) Vᵀ) ⊙ d(λ)) Uᵀ,    d(λ) = [σ_1 … σ_k, s·λ_1 … s·λ_m]

Initialisation (so the adapted model equals the base model at step 0, yet every part learns):
U = 0, V has orthonormal rows, σ = 1 and s = 1. At step 0 the output is exactly the base output,
U receives gradient c·d(λ)·(xVᵀ)ᵀg (non-zero because d(λ) ≠ 0 and V ≠ 0); σ, s and V receive
gradient from the first optimiser step on, once U ≠ 0. This is LoRA's zero-B initialisation with
the singular values in between, and it keeps the orthogonality regulariser's V term at 0.

The forward and backward run as one autograd function (`functional.panacea_linear`: on CPU
it halves the adapter's extra cost per training step against autograd on the separate ops,
see `bench/adapter_overhead.py`); dropout in training and a base and adapter of different
dtypes outside autocast take the separate ops.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from transformers.pytorch_utils import Conv1D

from panacea_pl.checks import resolve_dtype
from panacea_pl.layers.config import PanaceaConfig
from panacea_pl.layers.functional import panacea_linear, singular_values
from panacea_pl.rows import repeat_rows


@dataclass
class AdapterState:
    """What every layer of one adapter shares: the config, the current λ and the on/off switch.

    Layers hold a reference to the same object, so setting λ once reaches every layer and costs
    a pointer assignment.
    """

    config: PanaceaConfig
    preference: torch.Tensor | None = None  # [m] or [B, m], validated
    enabled: bool = True
    merged_preference: torch.Tensor | None = None
    repeats: int = 1  # each λ row serves `repeats` consecutive sequences (num_return_sequences)
    layers: dict[str, PanaceaLinear] = field(default_factory=dict, repr=False)


def linear_shape(base: nn.Module) -> tuple[int, int]:
    """(in_features, out_features) of an nn.Linear or a transformers Conv1D."""
    if isinstance(base, nn.Linear):
        return base.in_features, base.out_features
    if isinstance(base, Conv1D):
        return base.weight.shape[0], base.weight.shape[1]
    raise TypeError(f"Panacea adapts nn.Linear and transformers Conv1D, not {type(base).__name__}")


class PanaceaLinear(nn.Module):
    """Wraps one frozen nn.Linear / Conv1D. Create through `inject_adapter`, not directly."""

    def __init__(self, base_layer: nn.Module, state: AdapterState):
        super().__init__()
        config = state.config
        self.in_features, self.out_features = linear_shape(base_layer)
        self.base_layer = base_layer
        self.is_conv1d = isinstance(base_layer, Conv1D)
        self.num_general = config.num_general
        self.num_preferences = config.num_preferences
        self.rank_per_preference = config.rank_per_preference
        self.scaling = config.scaling
        # Held outside the module tree so it is shared, not copied into each state dict.
        object.__setattr__(self, "state", state)
        self.dropout = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()

        factory = {
            "device": base_layer.weight.device,
            "dtype": resolve_dtype(config.dtype, "PanaceaConfig.dtype"),
        }
        r = config.total_rank
        self.panacea_V = nn.Parameter(torch.empty(r, self.in_features, **factory))
        self.panacea_U = nn.Parameter(torch.zeros(self.out_features, r, **factory))
        self.panacea_sigma = nn.Parameter(torch.ones(config.num_general, **factory))
        self.panacea_scale = nn.Parameter(torch.ones(1, **factory))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """U = 0, V with orthonormal rows (scaled if r > in), σ = 1, s = 1."""
        with torch.no_grad():
            v = torch.empty(self.panacea_V.shape, dtype=torch.float32, device=self.panacea_V.device)
            nn.init.orthogonal_(v)
            self.panacea_V.copy_(v)
            self.panacea_U.zero_()
            self.panacea_sigma.fill_(1.0)
            self.panacea_scale.fill_(1.0)

    def singular_values(self, preference: torch.Tensor) -> torch.Tensor:
        """c · d(λ): [r] for λ of shape [m], [B, r] for λ of shape [B, m] (r = total_rank)."""
        lam = preference.to(self.panacea_scale.dtype)
        return singular_values(
            self.panacea_sigma, self.panacea_scale, lam, self.scaling, self.rank_per_preference
        )

    def delta_weight(self, preference: torch.Tensor) -> torch.Tensor:
        """The update c · U diag(d(λ)) V for one λ, shaped like the base weight."""
        delta = (self.panacea_U * self.singular_values(preference)) @ self.panacea_V
        return delta.T if self.is_conv1d else delta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        state = self.state
        if not state.enabled or state.merged_preference is not None:
            return self.base_layer(x)
        if state.preference is None:
            raise RuntimeError(
                "no preference set on the Panacea adapter: call adapter.set_preference(λ) or use "
                "`with adapter.preference(λ):` before the forward pass"
            )
        lam = state.preference
        if lam.dim() == 2:
            lam = _repeat_rows(lam, x, state.repeats)
        if self._fused(x):
            return self._forward_fused(x, lam)
        return self._forward_composed(x, self.singular_values(lam))

    def _fused(self, x: torch.Tensor) -> bool:
        """Whether `panacea_linear` applies: a plain base layer, one dtype (or autocast's), no
        dropout to honour, and per-sample λ only over a batch dimension."""
        base = self.base_layer
        return (
            type(base) in (nn.Linear, Conv1D)
            and not (base._forward_hooks or base._forward_pre_hooks)
            and (
                x.dtype == base.weight.dtype == self.panacea_V.dtype
                or torch.is_autocast_enabled(x.device.type)
            )
            and x.dim() >= 2
            and not (self.training and isinstance(self.dropout, nn.Dropout))
        )

    def _forward_fused(self, x: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
        """The layer as one autograd function; under autocast, in autocast's dtype."""
        weight = self.base_layer.weight
        tensors = [
            x,
            weight.T if self.is_conv1d else weight,
            self.base_layer.bias,
            self.panacea_V,
            self.panacea_sigma,
            self.panacea_scale,
            lam.to(self.panacea_scale.dtype),
            self.panacea_U,
        ]
        device = x.device.type
        if not torch.is_autocast_enabled(device):
            return panacea_linear(*tensors, self.scaling, self.rank_per_preference)
        dtype = torch.get_autocast_dtype(device)  # x, W, b in it; U, V, d are cast inside
        tensors[:3] = [t if t is None else t.to(dtype) for t in tensors[:3]]
        with torch.autocast(device, enabled=False):
            return panacea_linear(*tensors, self.scaling, self.rank_per_preference)

    def _forward_composed(self, x: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        """The same map from separate ops (dropout and mixed dtypes go this way)."""
        out = self.base_layer(x)
        if d.dim() == 2:
            d = d.view(d.shape[0], *([1] * (x.dim() - 2)), d.shape[-1])
        h = F.linear(self.dropout(x).to(self.panacea_V.dtype), self.panacea_V) * d
        return out + F.linear(h, self.panacea_U).to(out.dtype)

    def orthogonality_penalty(self) -> torch.Tensor:
        """AdaLoRA's ‖UᵀU − I‖²_F + ‖VVᵀ − I‖²_F for this layer."""
        eye = torch.eye(self.panacea_U.shape[1], device=self.panacea_U.device)
        u, v = self.panacea_U.float(), self.panacea_V.float()
        return ((u.T @ u - eye) ** 2).sum() + ((v @ v.T - eye) ** 2).sum()

    def extra_repr(self) -> str:
        return (
            f"in={self.in_features}, out={self.out_features}, num_general={self.num_general}, "
            f"preferences={self.num_preferences}, rank_per_preference={self.rank_per_preference}, "
            f"scaling={self.scaling:g}"
        )


def _repeat_rows(rows: torch.Tensor, x: torch.Tensor, repeats: int) -> torch.Tensor:
    """Per-sample rows [B, ·] (λ) repeated to one row per sequence of x [N, ..., in].

    Only when asked: N must be B · repeats, where `repeats` was set with the preference
    (`adapter.preference(rows, repeats=k)` for generate with num_return_sequences=k).
    """
    b, n = rows.shape[0], x.shape[0]
    if n == b * repeats:
        return repeat_rows(rows, repeats)
    hint = (
        f"; to give each λ row to {n // b} consecutive sequences (generate with "
        f"num_return_sequences={n // b} or num_beams={n // b}), pass repeats={n // b} with the "
        "preference"
        if n % b == 0 and n > b
        else ""
    )
    raise RuntimeError(
        f"per-sample preference has {b} rows but the batch has {n} sequences (λ shape "
        f"[{b}, {rows.shape[1]}], repeats={repeats}); set one λ row per sequence, or a single λ "
        f"of shape [m] for the whole batch{hint}"
    )
