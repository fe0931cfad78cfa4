"""The stories benchmark's ground-truth scorers as a PPO reward function.

    reward = StoriesReward(num_dimensions=2, tokenizer=str(bench.model_dir))
    rewards = reward(rollout)     # [N, 2]: happy and sad word shares of each response

Texts are cut from the decoded prompt + response exactly as the benchmark's sampler cuts them
(`sampling.response_texts`), so a rollout is scored as `StoriesBenchmark.evaluate` would score
the same tokens. With `PanaceaPPO(kl_coef=bench.beta_eff)` and linear scalarisation, PPO's
optimum is the benchmark's optimum π_ref·exp(λ·r / β_eff).
"""

from __future__ import annotations

import torch
from transformers import AutoTokenizer

from panacea_pl.benchmarks.stories.benchmark import StoriesBenchmark
from panacea_pl.benchmarks.stories.sampling import response_texts
from panacea_pl.benchmarks.stories.scorers import get_scorers, score_texts
from panacea_pl.models.rollout import Rollout
from panacea_pl.modules.ppo_rewards import RewardFunction


class StoriesReward(RewardFunction):
    """Scores responses with the first m benchmark scorers (a `RewardFunction`).

    Args:
        num_dimensions: m, 2 to 10.
        tokenizer: the policy's tokenizer folder; default: the converted stories260K model's.
        data_dir, cache_dir: where the stories260K checkpoint is and where it is converted
            (only used to find the default tokenizer).
    """

    def __init__(
        self,
        num_dimensions: int = 2,
        tokenizer: str | None = None,
        data_dir: str | None = None,
        cache_dir: str | None = None,
    ):
        super().__init__()
        self.scorers = get_scorers(num_dimensions)
        self.dimension_names = [s.name for s in self.scorers]
        if tokenizer is None:
            tokenizer = str(StoriesBenchmark(data_dir, cache_dir, progress=False).model_dir)
        self.tokenizer = AutoTokenizer.from_pretrained(tokenizer)

    def texts(self, rollout: Rollout) -> list[str]:
        """The response texts, as the benchmark's sampler decodes them."""
        width = rollout.prompt_length
        return response_texts(
            self.tokenizer,
            rollout.sequences[:, :width].cpu(),
            rollout.attention_mask[:, :width].cpu(),
            rollout.response_ids(keep_stop=True),
            rollout.stop_ids,
        )

    def forward(self, rollout: Rollout) -> torch.Tensor:
        scores = score_texts(self.texts(rollout), self.scorers)
        return torch.as_tensor(scores, dtype=torch.float32, device=rollout.sequences.device)
