"""One member of a baseline: multi-objective DPO trained at one fixed λ.

    panacea-pl baseline --config experiments/stories/dps.yaml            # every member, then the front
    panacea-pl baseline --config experiments/stories/dps.yaml --baseline.preferences=[[0.3,0.7]]

`panacea-pl baseline` (`panacea_pl.baselines.runner`) trains one `FixedPreferenceDPO` per member
of DPS or rewarded soups and evaluates the collection; in a plain `panacea-pl fit` config,
`class_path: panacea_pl.baselines.FixedPreferenceDPO` with `preference: [0.3, 0.7]` trains one.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from panacea_pl.models import PanaceaPolicy
from panacea_pl.modules.dpo import PanaceaDPO
from panacea_pl.objectives import MultiObjectiveDPOLoss
from panacea_pl.preference import validate_preference


class FixedPreference:
    """Mixin for a `PanaceaModule` trained at one fixed λ instead of sampled ones: training,
    validation and the λ of every per-sample row are this λ. Call `_fix_preference` in
    `__init__` after the module's own.

    The λ is the buffer `fixed_preference` ([m]); `preference` is only the constructor's
    argument, since everywhere else `.preference(λ)` is the adapter's context manager.
    """

    fixed_preference: torch.Tensor

    def _fix_preference(self, preference: Sequence[float]) -> None:
        lam = validate_preference(preference, self.num_preferences)
        if lam.dim() != 1:
            raise ValueError(f"preference must be one λ of shape [m], got shape {list(lam.shape)}")
        self.register_buffer("fixed_preference", lam, persistent=False)

    def sample_preference(self, batch_size: int) -> torch.Tensor:
        lam = self.fixed_preference
        return lam.expand(batch_size, -1) if self.per_sample_preference else lam

    def evaluation_preference(self) -> torch.Tensor:
        return self.fixed_preference


class FixedPreferenceDPO(FixedPreference, PanaceaDPO):
    """`PanaceaDPO` with λ fixed instead of sampled: the loss is aggregate(L_1 … L_m; λ) at one λ.

    With the linear scalarisation this is Σ_i λ_i L_i; at a corner λ = e_i it is single-objective
    DPO on dimension i (rewarded soups' members). The adapter is Panacea's, with the λ slots
    held at this λ, so a member has exactly Panacea's parameter count and step cost. Validation
    losses are computed at this λ too.

    Args:
        policy: the causal LM with the Panacea adapter.
        preference: the fixed λ (m entries on the simplex).
        loss: the per-dimension DPO loss (β, sigmoid or IPO).
        **kwargs: see `PanaceaModule` (aggregator, optimiser, …; the λ sampler is unused).
    """

    def __init__(
        self,
        policy: PanaceaPolicy,
        preference: Sequence[float],
        loss: MultiObjectiveDPOLoss | None = None,
        **kwargs,
    ):
        super().__init__(policy, loss=loss, **kwargs)
        self._fix_preference(preference)
