"""Models: the Panacea policy, the vector reward/cost scorer, response log-probabilities, and
PPO's λ-conditioned critic and rollouts."""

from panacea_pl.models.critic import PanaceaCritic
from panacea_pl.models.logprobs import sequence_logprobs, token_logprobs
from panacea_pl.models.policy import PanaceaPolicy, PreferencePolicy
from panacea_pl.models.reward import ScorerOutput, VectorRewardModel
from panacea_pl.models.rollout import Rollout, sample_rollout

__all__ = [
    "PanaceaCritic",
    "PanaceaPolicy",
    "PreferencePolicy",
    "Rollout",
    "ScorerOutput",
    "VectorRewardModel",
    "sample_rollout",
    "sequence_logprobs",
    "token_logprobs",
]
