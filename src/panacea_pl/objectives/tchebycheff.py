"""The one Tchebycheff idea behind `Tchebycheff` (losses) and `TchebycheffAdvantage` (PPO).

Both weigh each dimension's gap to an ideal point z by λ and follow the largest:

    max_i λ_i · gap_i,   gap_i = L_i − z_i   (losses: lower is better, z a lower bound)
                         gap_i = z_i − J_i   (objectives: higher is better, z an upper bound)

which are the same number with L = −J and z^L = −z. The loss aggregator takes the max (its
value is the loss); the advantage aggregator takes the argmax (the active dimension's advantage
is the policy gradient of the max). Both share here:

- `ideal_point`: a fixed z (one number or one per dimension) or the start of a running one;
- `IdealPoint`: the running ideal (the best value seen per dimension: the minimum of losses,
  the maximum of objectives, best over ranks under torch.distributed, in the buffer
  `ideal_point` so it is checkpointed) and the utopia point (z moved by `margin` ≥ 0 past the
  best, so a dimension at its best keeps a positive gap and its λ_i stays in play);
- `weighted_gaps`: the terms λ_i · gap_i whose max (or argmax) is taken.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.distributed as dist
from torch import Tensor


def distributed() -> bool:
    """Whether torch.distributed is initialised (so state is reduced over the ranks)."""
    return dist.is_available() and dist.is_initialized()


def ideal_point(
    ideal: float | Sequence[float] | str,
    num_preferences: int | None,
    margin: float,
    unseen: float,
) -> Tensor:
    """Check a Tchebycheff ideal-point setting and return the buffer that starts it.

    `ideal` is a number, one number per dimension, or "running" (then the buffer is
    `num_preferences` copies of `unseen`, the value that any observation replaces).
    """
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    if isinstance(ideal, str):
        if ideal != "running":
            raise ValueError(f'ideal must be a number, numbers or "running", got {ideal!r}')
        if num_preferences is None:
            raise ValueError('ideal="running" needs num_preferences (m) for its buffer')
        return torch.full((num_preferences,), unseen)
    point = torch.as_tensor(ideal, dtype=torch.float32)
    if point.dim() > 1 or not torch.isfinite(point).all():
        raise ValueError(f"ideal must be a finite number or a list of them, got {ideal}")
    return point


def weighted_gaps(gaps: Tensor, preference: Tensor, mask: Tensor | None = None) -> Tensor:
    """λ_i · gap_i [..., m]; −inf outside `mask`, so a max or argmax over the last dimension
    never picks an unlabelled dimension."""
    terms = preference * gaps
    return terms if mask is None else terms.masked_fill(~mask, float("-inf"))


class IdealPoint:
    """Mixin for an `nn.Module` with a Tchebycheff ideal point z (buffer `ideal_point`).

    Call `_init_ideal` in `__init__`. `lower_is_better` says which way z bounds the values:
    True for losses (z ≤ L, the running z is the minimum seen, the utopia point is z − margin),
    False for objectives (z ≥ J, the running z the maximum, the utopia point z + margin).
    """

    ideal_point: Tensor

    def _init_ideal(
        self,
        ideal: float | Sequence[float] | Literal["running"],
        num_preferences: int | None,
        margin: float,
        lower_is_better: bool,
    ) -> None:
        self.running, self.margin = ideal == "running", margin
        self.lower_is_better = lower_is_better
        unseen = float("inf") if lower_is_better else float("-inf")
        self.register_buffer("ideal_point", ideal_point(ideal, num_preferences, margin, unseen))

    def _improved_ideal(self, observed: Tensor, sync: bool) -> Tensor:
        """The running z after `observed` [m] (the better of the two per dimension; with `sync`
        under torch.distributed, the best over the ranks). The buffer is not written."""
        if self.lower_is_better:
            best, op = torch.minimum(self.ideal_point, observed), dist.ReduceOp.MIN
        else:
            best, op = torch.maximum(self.ideal_point, observed), dist.ReduceOp.MAX
        if sync and distributed():
            dist.all_reduce(best, op=op)
        return best

    def _utopia(self, z: Tensor) -> Tensor:
        """z moved by `margin` past the best value: z − margin for losses, z + margin else."""
        return z - self.margin if self.lower_is_better else z + self.margin
