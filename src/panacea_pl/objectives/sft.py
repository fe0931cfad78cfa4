"""Panacea-SFT: the negative log-likelihood of each example's target, filed under its dimension.

out = PreferenceSFTLoss(num_preferences=3)(token_logps, dimension, token_mask)
loss = LinearScalarization()(out.losses, preference, out.mask)   # Σ_i λ_i NLL_i
nll_per_dimension = out.dimension_means()                         # [m]
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from panacea_pl.objectives.outputs import DimensionLosses


class PreferenceSFTLoss(nn.Module):
    """Per-dimension NLL for Panacea-SFT:  L = Σ_i λ_i · NLL_i  once aggregated.

    Each sequence n carries the target of one dimension d_n. Its NLL is the mean over its target
    tokens, NLL_n = −(1/|T_n|) Σ_{t ∈ T_n} log π(y_t | y_<t), and it is placed in column d_n of
    a [N, m] loss matrix whose mask is one-hot. An `Aggregator` then takes, per dimension, the
    mean over that dimension's sequences, NLL_i = mean_{n: d_n = i} NLL_n, and combines them
    with λ (or, with one λ per sequence, weighs each sequence's NLL by its own λ_{d_n}).

    Args:
        num_preferences: m.
    """

    def __init__(self, num_preferences: int):
        super().__init__()
        if num_preferences < 1:
            raise ValueError(f"num_preferences must be >= 1, got {num_preferences}")
        self.num_preferences = num_preferences

    def forward(
        self, token_logps: Tensor, dimension: Tensor, token_mask: Tensor | None = None
    ) -> DimensionLosses:
        """Per-sequence NLL in its dimension's column.

        Args:
            token_logps: [N, T] log-probabilities of the target tokens, or [N] one summed or
                averaged log-probability per sequence (taken as is).
            dimension: [N] int64, the dimension index d_n ∈ [0, m) of each sequence.
            token_mask: [N, T] bool, True on target tokens (default: all); a sequence with no
                target token is left unlabelled.

        Returns:
            `DimensionLosses` with losses [N, m] (NLL_n in column d_n, 0 elsewhere) and a
            one-hot mask [N, m].
        """
        if token_logps.dim() == 1:
            token_logps = token_logps[:, None]
        if token_logps.dim() != 2:
            raise ValueError(f"token_logps must be [N, T] or [N], got {list(token_logps.shape)}")
        if token_mask is None:
            token_mask = token_logps.new_ones(token_logps.shape, dtype=bool)
        if token_mask.shape != token_logps.shape:
            raise ValueError(
                f"token_mask {list(token_mask.shape)} must match token_logps "
                f"{list(token_logps.shape)}"
            )
        if dimension.shape != token_logps.shape[:1]:
            raise ValueError(
                f"dimension must have shape [{token_logps.shape[0]}], got {list(dimension.shape)}"
            )
        counts = token_mask.sum(1)
        nll = -token_logps.masked_fill(~token_mask, 0.0).sum(1) / counts.clamp(min=1)
        mask = F.one_hot(dimension.long(), self.num_preferences).bool() & (counts > 0)[:, None]
        return DimensionLosses(losses=nll[:, None].masked_fill(~mask, 0.0), mask=mask)
