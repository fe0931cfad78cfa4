"""Fixed-λ PPO: MORLHF (one PPO run on the λ-weighted reward) and, with the DPS grid, the
paper's DPS for RLHF.

    panacea-pl baseline --config experiments/stories/dps_ppo.yaml       # one member per grid λ
    panacea-pl fit --config experiments/stories/dps_ppo.yaml ...        # (a `fit` config with
        model.class_path: panacea_pl.baselines.FixedPreferencePPO and preference: [0.3, 0.7]
        trains one MORLHF model)

With `LagrangianAdvantage` as the aggregator it is safe-rlhf's PPO-Lagrangian (the preference
then only weighs the unconstrained dimensions).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from panacea_pl.models import PanaceaCritic, PanaceaPolicy
from panacea_pl.modules.ppo import PanaceaPPO
from panacea_pl.modules.ppo_rewards import RewardFunction
from panacea_pl.preference import validate_preference


class FixedPreferencePPO(PanaceaPPO):
    """`PanaceaPPO` with λ fixed instead of sampled: every rollout row, every update and the
    validation rollouts use this λ. With `LinearAdvantage` it maximises λ·E[r] − β·KL at one λ
    (MORLHF); the adapter is Panacea's with the λ slots held at λ, so a member has Panacea's
    parameter count and step cost.

    Args:
        policy: the causal LM with the Panacea adapter.
        critic: the critic (its λ input is this λ too).
        reward: the reward function.
        preference: the fixed λ (m entries on the simplex).
        **kwargs: see `PanaceaPPO`.
    """

    def __init__(
        self,
        policy: PanaceaPolicy,
        critic: PanaceaCritic,
        reward: RewardFunction,
        preference: Sequence[float],
        **kwargs,
    ):
        super().__init__(policy, critic, reward, **kwargs)
        lam = validate_preference(preference, self.num_preferences)
        if lam.dim() != 1:
            raise ValueError(f"preference must be one λ of shape [m], got shape {list(lam.shape)}")
        self.register_buffer("fixed_preference", lam, persistent=False)

    @property
    def preference(self) -> torch.Tensor:
        """The fixed λ, [m]."""
        return self.fixed_preference

    def sample_preference(self, batch_size: int) -> torch.Tensor:
        lam = self.fixed_preference
        return lam.expand(batch_size, -1) if self.per_sample_preference else lam

    def evaluation_preference(self) -> torch.Tensor:
        return self.fixed_preference
