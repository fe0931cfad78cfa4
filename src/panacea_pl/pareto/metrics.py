"""Front metrics as torchmetrics `Metric`s: accumulate (λ, f(λ)) rows, sync under DDP, score.

    hv = Hypervolume(reference=[0.0, 0.0])
    hv.update(preferences, objectives)    # [G, m] each, e.g. a simplex grid and its scores
    hv.compute()                          # tensor(…, dtype=torch.float64)

Rows from every update (and, under DDP, every rank) are concatenated before scoring, so a
grid may be split across batches and ranks. Each metric states `higher_is_better`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from panacea_pl.pareto.front import (
    ArrayLike,
    Maximize,
    hypervolume,
    inner_product,
    spacing,
    sparsity,
)


class FrontMetric(Metric):
    """Base class: stores the preferences [G, m] and objectives [G, m] of every update."""

    full_state_update = False
    is_differentiable = False

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self.add_state("preferences", default=[], dist_reduce_fx="cat")
        self.add_state("objectives", default=[], dist_reduce_fx="cat")

    def update(self, preferences: Tensor, objectives: Tensor) -> None:
        """Add rows: `preferences` [G, m], the λ used, and `objectives` [G, m], the f(λ) found."""
        preferences = torch.as_tensor(preferences)
        objectives = torch.as_tensor(objectives)
        if objectives.dim() != 2 or preferences.shape != objectives.shape:
            raise ValueError(
                "preferences and objectives must both have shape [G, m], got "
                f"{list(preferences.shape)} and {list(objectives.shape)}"
            )
        self.preferences.append(preferences.detach().double())
        self.objectives.append(objectives.detach().double())

    def front(self) -> tuple[np.ndarray, np.ndarray]:
        """All rows so far as float64 arrays (preferences [G, m], objectives [G, m])."""
        return (
            dim_zero_cat(self.preferences).cpu().numpy(),
            dim_zero_cat(self.objectives).cpu().numpy(),
        )


class Hypervolume(FrontMetric):
    """Hypervolume of the objectives (higher is better); see `front.hypervolume_estimate`.

    Args:
        reference: [m] the worst acceptable point.
        maximize: True if higher is better, one bool for all objectives or one per objective.
        approximate_from_dim: smallest m that is estimated by Monte Carlo instead of exactly.
        num_samples: Monte Carlo directions for the estimate.
        seed: seed of the estimate.
    """

    higher_is_better = True

    def __init__(
        self,
        reference: ArrayLike,
        maximize: Maximize = True,
        approximate_from_dim: int = 6,
        num_samples: int = 2**18,
        seed: int = 0,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        self.reference = reference
        self.maximize = maximize
        self.approximate_from_dim = approximate_from_dim
        self.num_samples = num_samples
        self.seed = seed

    def compute(self) -> Tensor:
        _, objectives = self.front()
        value = hypervolume(
            objectives,
            self.reference,
            self.maximize,
            approximate_from_dim=self.approximate_from_dim,
            num_samples=self.num_samples,
            seed=self.seed,
        )
        return torch.tensor(value, dtype=torch.float64)


class InnerProduct(FrontMetric):
    """Mean ⟨λ, f̂(λ)⟩ with f̂ normalised by a fixed range (higher is better).

    See `front.inner_product` for the normalisation.

    Args:
        lower: [m] low end of each objective's range.
        upper: [m] high end of each objective's range.
        maximize: True if higher is better, one bool for all objectives or one per objective.
    """

    higher_is_better = True

    def __init__(
        self, lower: ArrayLike, upper: ArrayLike, maximize: Maximize = True, **kwargs: Any
    ):
        super().__init__(**kwargs)
        self.lower = lower
        self.upper = upper
        self.maximize = maximize

    def compute(self) -> Tensor:
        preferences, objectives = self.front()
        value = inner_product(preferences, objectives, self.lower, self.upper, self.maximize)
        return torch.tensor(value, dtype=torch.float64)


class Sparsity(FrontMetric):
    """PGMORL sparsity of the objectives (lower is better); see `front.sparsity`."""

    higher_is_better = False

    def compute(self) -> Tensor:
        return torch.tensor(sparsity(self.front()[1]), dtype=torch.float64)


class Spacing(FrontMetric):
    """Schott's spacing of the objectives (lower is better); see `front.spacing`."""

    higher_is_better = False

    def compute(self) -> Tensor:
        return torch.tensor(spacing(self.front()[1]), dtype=torch.float64)
