"""Models: the Panacea policy, the vector reward/cost scorer, and response log-probabilities."""

from panacea_pl.models.logprobs import sequence_logprobs, token_logprobs
from panacea_pl.models.policy import PanaceaPolicy, PreferencePolicy
from panacea_pl.models.reward import ScorerOutput, VectorRewardModel

__all__ = [
    "PanaceaPolicy",
    "PreferencePolicy",
    "ScorerOutput",
    "VectorRewardModel",
    "sequence_logprobs",
    "token_logprobs",
]
