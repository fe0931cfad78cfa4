"""Models: the Panacea policy and token/sequence log-probabilities."""

from panacea_pl.models.logprobs import sequence_logprobs, token_logprobs
from panacea_pl.models.policy import PanaceaPolicy

__all__ = ["PanaceaPolicy", "sequence_logprobs", "token_logprobs"]
