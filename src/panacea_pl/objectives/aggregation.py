"""Aggregators: turn per-dimension losses and a preference vector λ into one scalar to optimise.

    agg = Tchebycheff(ideal="running", num_preferences=2, margin=0.01)
    loss = agg(losses, preference, mask)        # losses, mask [B, m]; preference [m] or [B, m]
    per_dimension = agg.dimension_means(losses, mask)   # [m], for logging

A new scheme is a subclass that overrides `aggregate`:

    class WeightedSquares(Aggregator):
        def aggregate(self, losses, preference, mask):
            return (preference * losses**2).masked_fill(~mask, 0).sum(-1)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_nn
from torch import Tensor, nn

from panacea_pl.objectives.outputs import masked_mean
from panacea_pl.objectives.tchebycheff import IdealPoint, distributed, weighted_gaps
from panacea_pl.preference import checked_step_preference


class Aggregator(nn.Module):
    """Base class: reduces losses [B, m] under a preference λ to a scalar.

    Two modes, chosen by the shape of `preference`:

    - one λ of shape [m] (the paper: one λ per batch): each dimension's losses are first reduced
      to its mean over labelled examples, L_i, and `aggregate` is applied once to (L, λ) over the
      dimensions with at least one labelled example;
    - one λ per example, shape [B, m]: `aggregate` is applied to each example over its labelled
      dimensions, and the result is averaged over the examples with at least one label.

    A batch with no label at all gives a zero that is still connected to the graph, so every
    rank of a distributed run calls backward on the same graph. In training mode under
    torch.distributed, the means are over the global batch (sums and counts all-reduced), so
    DDP trains exactly as one process with the whole batch; every rank must then call the
    aggregator equally often.

    Subclasses implement `aggregate`; entries of `losses` outside `mask` are already 0 there.

    λ must lie on the simplex and have one weight per loss column. Lists, strings and CPU tensors
    are checked in full on every call (no device sync); a λ already on an accelerator is only
    shape-checked, since it comes from a sampler or `set_preference` that validated it and reading
    its values would cost host syncs every step (see `checked_step_preference`).
    """

    def forward(self, losses: Tensor, preference: Tensor, mask: Tensor | None = None) -> Tensor:
        """Aggregate `losses` [B, m] under `preference` [m] or [B, m]; `mask` [B, m] bool or None.

        Returns:
            A scalar tensor.
        """
        losses, preference, mask = self._check(losses, preference, mask)
        losses = losses.masked_fill(~mask, 0.0)
        if preference.dim() == 1:
            sums, counts = self._over_ranks(losses.sum(0), mask.sum(0))
            labelled = counts > 0
            if not labelled.any():
                return losses.sum() * 0.0
            return self.aggregate(sums / counts.clamp(min=1), preference, labelled)
        rows = mask.any(1)
        values = self.aggregate(losses[rows], preference[rows], mask[rows])
        total, count = self._over_ranks(values.sum(), rows.sum())
        if not count:
            return losses.sum() * 0.0
        return total / count

    def _over_ranks(self, total: Tensor, count: Tensor) -> tuple[Tensor, Tensor]:
        """`total` and `count` summed over the ranks when training under torch.distributed.

        Means over labelled examples are then the means over the global batch, and the loss is
        the same number on every rank. The sum of `total` is differentiable: its backward sums
        the ranks' gradients, which DDP's averaging turns back into the gradient of the global
        batch's loss, so W processes step exactly as one process with the W-times larger batch
        (a mean of per-rank means would weigh a rank with few labels of a dimension too much).
        """
        if not (self.training and distributed()):
            return total, count
        if dist.get_world_size() == 1:
            return total, count
        count = count.to(total.dtype).clone()
        dist.all_reduce(count)
        return dist_nn.all_reduce(total), count

    def aggregate(self, losses: Tensor, preference: Tensor, mask: Tensor) -> Tensor:
        """Aggregate over the last dimension, only where `mask` is True.

        Args:
            losses: [..., m] per-dimension losses (0 where `mask` is False).
            preference: [..., m] λ.
            mask: [..., m] bool; at least one True per row.

        Returns:
            [...] one value per row.
        """
        raise NotImplementedError

    @staticmethod
    def dimension_means(losses: Tensor, mask: Tensor | None = None) -> Tensor:
        """[m] mean of each dimension's labelled losses (0 for a dimension with none)."""
        if mask is None:
            return losses.mean(0)
        return masked_mean(losses, mask)

    @staticmethod
    def _check(
        losses: Tensor, preference: Tensor, mask: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor]:
        if losses.dim() != 2:
            raise ValueError(f"losses must have shape [batch, m], got {list(losses.shape)}")
        batch, m = losses.shape
        preference = checked_step_preference(preference, m)
        if preference.shape not in ((m,), (batch, m)):
            raise ValueError(
                f"preference must have shape [{m}] (one λ per batch) or [{batch}, {m}] (one per "
                f"example) to match losses {list(losses.shape)} of {m} dimensions, got "
                f"{list(preference.shape)}"
            )
        preference = preference.to(dtype=losses.dtype, device=losses.device)
        if mask is None:
            mask = torch.ones_like(losses, dtype=torch.bool)
        elif mask.shape != losses.shape or mask.dtype != torch.bool:
            raise ValueError(
                f"mask must be a bool tensor of shape {list(losses.shape)}, "
                f"got {mask.dtype} {list(mask.shape)}"
            )
        return losses, preference, mask


class LinearScalarization(Aggregator):
    """Linear scalarisation (LS):  L(λ) = Σ_i λ_i L_i  over the labelled dimensions."""

    def aggregate(self, losses: Tensor, preference: Tensor, mask: Tensor) -> Tensor:
        return (preference * losses).masked_fill(~mask, 0.0).sum(-1)


class Tchebycheff(IdealPoint, Aggregator):
    """Tchebycheff scalarisation (Tche):  L(λ) = max_i λ_i (L_i − z_i)  over labelled dimensions.

    The ideal point z is

    - fixed: `ideal` a number (every dimension) or one number per dimension; 0 suits losses
      bounded below by 0 such as DPO, Bradley–Terry and NLL;
    - ``ideal="running"``: the best (lowest) per-dimension mean loss seen so far, batch means
      taken over labelled examples, this batch included. It lives in the buffer
      `ideal_point` (so it is checkpointed), is updated only in training mode, and is all-reduced
      with MIN across ranks when torch.distributed is initialised, so every rank uses the same z.
      Dimensions never seen use the current batch's mean. Needs `num_preferences`.

    In both cases z_i is lowered by `margin` ≥ 0 (the "utopia point" of the Tchebycheff
    literature): with a running z and margin 0, a dimension that has just reached its best
    contributes λ_i·0 whatever λ_i is; a small positive margin keeps λ_i in play.

    Args:
        ideal: a number, one number per dimension, or "running".
        num_preferences: m; required with ``ideal="running"``.
        margin: subtracted from z.

    Subclasses that override `aggregate` receive the shifted losses L − z. The ideal point and
    the weighted max are shared with `TchebycheffAdvantage` (`objectives.tchebycheff`).
    """

    def __init__(
        self,
        ideal: float | Sequence[float] | Literal["running"] = 0.0,
        num_preferences: int | None = None,
        margin: float = 0.0,
    ):
        super().__init__()
        self._init_ideal(ideal, num_preferences, margin, lower_is_better=True)

    def forward(self, losses: Tensor, preference: Tensor, mask: Tensor | None = None) -> Tensor:
        losses, preference, mask = self._check(losses, preference, mask)
        return super().forward(losses - self.current_ideal(losses, mask), preference, mask)

    def current_ideal(self, losses: Tensor, mask: Tensor) -> Tensor:
        """z − margin for this batch, after updating the running ideal (in training mode)."""
        m = losses.shape[1]
        if self.ideal_point.numel() not in (1, m):
            raise ValueError(f"ideal point has {self.ideal_point.numel()} values, losses have {m}")
        if not self.running:
            return self._utopia(self.ideal_point.to(losses.dtype))
        means = masked_mean(losses.detach(), mask).to(self.ideal_point.dtype)
        observed = means.masked_fill(~mask.any(0), float("inf"))
        best = self._improved_ideal(observed, sync=self.training)
        if self.training:
            self.ideal_point.copy_(best)
        z = torch.where(torch.isfinite(best), best, means)
        return self._utopia(z.to(losses.dtype))

    def aggregate(self, losses: Tensor, preference: Tensor, mask: Tensor) -> Tensor:
        return weighted_gaps(losses, preference, mask).amax(-1)


class SmoothTchebycheff(Tchebycheff):
    """Smooth Tchebycheff (Lin et al., 2024):  L(λ) = μ · log Σ_i exp(λ_i (L_i − z_i) / μ).

    A differentiable upper bound of Tchebycheff: Tche ≤ STche ≤ Tche + μ·log m, tending to
    Tche as μ → 0. The ideal point z and `margin` are as in `Tchebycheff`.

    Args:
        mu: temperature μ > 0, in the units of the losses.
        ideal: as in `Tchebycheff`.
        num_preferences: as in `Tchebycheff`.
        margin: as in `Tchebycheff`.
    """

    def __init__(
        self,
        mu: float = 0.1,
        ideal: float | Sequence[float] | Literal["running"] = 0.0,
        num_preferences: int | None = None,
        margin: float = 0.0,
    ):
        super().__init__(ideal=ideal, num_preferences=num_preferences, margin=margin)
        if mu <= 0:
            raise ValueError(f"mu must be > 0, got {mu}")
        self.mu = mu

    def aggregate(self, losses: Tensor, preference: Tensor, mask: Tensor) -> Tensor:
        scaled = (preference * losses / self.mu).masked_fill(~mask, float("-inf"))
        return self.mu * torch.logsumexp(scaled, dim=-1)
