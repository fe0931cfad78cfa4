"""Fixed-λ GRPO / RLOO: one critic-free run on the λ-weighted reward (MORLHF without a critic),
and with the DPS grid one member per λ.

    panacea-pl fit --config experiments/stories/panacea_grpo.yaml \
        --model.class_path=panacea_pl.baselines.FixedPreferenceGRPO \
        --model.init_args.preference=[1.0,0.0]
"""

from __future__ import annotations

from collections.abc import Sequence

from panacea_pl.baselines.module import FixedPreference
from panacea_pl.models import PanaceaPolicy
from panacea_pl.modules.grpo import PanaceaGRPO
from panacea_pl.modules.ppo_rewards import RewardFunction


class FixedPreferenceGRPO(FixedPreference, PanaceaGRPO):
    """`PanaceaGRPO` with λ fixed instead of sampled: every group, update and validation
    rollout uses this λ. With `LinearAdvantage` and the KL in the reward it maximises
    λ·E[r] − β·KL at one λ; the adapter is Panacea's with the λ slots held at λ.

    Args:
        policy: the causal LM with the Panacea adapter.
        reward: the reward function.
        preference: the fixed λ (m entries on the simplex).
        **kwargs: see `PanaceaGRPO`.
    """

    def __init__(
        self,
        policy: PanaceaPolicy,
        reward: RewardFunction,
        preference: Sequence[float],
        **kwargs,
    ):
        super().__init__(policy, reward, **kwargs)
        self._fix_preference(preference)
