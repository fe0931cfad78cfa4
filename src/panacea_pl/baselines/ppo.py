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

from panacea_pl.baselines.module import FixedPreference
from panacea_pl.models import PanaceaCritic, PanaceaPolicy
from panacea_pl.modules.ppo import PanaceaPPO
from panacea_pl.modules.ppo_rewards import RewardFunction


class FixedPreferencePPO(FixedPreference, PanaceaPPO):
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
        self._fix_preference(preference)
