"""Models: the Panacea policy, the vector reward/cost scorer, response log-probabilities, PPO's
λ-conditioned critic, rollouts, and the scored rollouts every on-policy trainer samples."""

from panacea_pl.models.critic import PanaceaCritic
from panacea_pl.models.experience import ScoredRollout, sample_and_score
from panacea_pl.models.logprobs import sequence_logprobs, token_logprobs
from panacea_pl.models.policy import PanaceaPolicy, PreferencePolicy
from panacea_pl.models.reward import ScorerOutput, VectorRewardModel
from panacea_pl.models.rollout import Rollout, sample_rollout

__all__ = [
    "PanaceaCritic",
    "PanaceaPolicy",
    "PreferencePolicy",
    "Rollout",
    "ScoredRollout",
    "ScorerOutput",
    "VectorRewardModel",
    "sample_and_score",
    "sample_rollout",
    "sequence_logprobs",
    "token_logprobs",
]
