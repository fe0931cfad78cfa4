"""Reward functions for PPO: a rollout in, one reward per response and dimension out.

    reward = VectorRewardFunction("runs/rm/scorer", tokenizer="path/to/policy",
                                  objectives={"helpful": "score:helpful", "harmless": "neg_cost"})
    rewards = reward(rollout)          # [N, m], higher is better in every dimension

A reward function subclasses `RewardFunction` (an `nn.Module`, so a scorer inside it follows
the LightningModule to its device): it names its m dimensions and maps a rollout to [N, m]. The
stories benchmark's ground-truth scorers are one (`panacea_pl.benchmarks.stories.StoriesReward`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from transformers import AutoTokenizer

from panacea_pl.checks import check_model_path
from panacea_pl.evaluation.reward_model import (
    check_objectives,
    default_objectives,
    select_objectives,
)
from panacea_pl.models.experience import eval_mode
from panacea_pl.models.generation import decode_rows
from panacea_pl.models.reward import VectorRewardModel
from panacea_pl.models.rollout import Rollout


class RewardFunction(nn.Module):
    """Base class: scores the responses of a rollout, one column per dimension.

    Subclasses set `dimension_names` (the m dimensions, in column order) and implement `forward`.
    Frozen scorers inside should be excluded from gradients (`requires_grad_(False)`): the
    module's checkpoints keep trainable tensors only.
    """

    dimension_names: Sequence[str]

    def forward(self, rollout: Rollout) -> torch.Tensor:
        """[N, m] reward of each response in each dimension (higher is better; a cost enters
        as its negative)."""
        raise NotImplementedError


class VectorRewardFunction(RewardFunction):
    """Rewards from a trained `VectorRewardModel`: reward heads and/or minus the cost head.

    Texts are decoded with the policy's tokenizer exactly as `RewardModelEvaluator` decodes
    them (prompt + response, special tokens kept but the leading BOS, stop token dropped) and
    scored with the scorer's own tokenizer, so training rewards and evaluated fronts agree and
    the scorer may use a different vocabulary from the policy's. The scorer is frozen and scores
    in eval mode (switched for the call only, so Lightning's train mode on the whole module
    neither reaches it nor warns about modules left in eval mode).

    Args:
        scorer: folder of a saved `VectorRewardModel`, or the model.
        tokenizer: the policy's tokenizer (path or hub name).
        dimension_names: the policy's dimensions, in order.
        objectives: {dimension: "score:<head>" | "neg_cost"}; default: `score:<dimension>`,
            and `neg_cost` for `cost_dimension` when the scorer has a cost head.
        cost_dimension: the dimension read as −cost by the default mapping.
        batch_size: texts per scorer forward pass.
        scorer_dtype: dtype to load the scorer in.
    """

    def __init__(
        self,
        scorer: str | VectorRewardModel,
        tokenizer: str,
        dimension_names: Sequence[str],
        objectives: dict[str, str] | None = None,
        cost_dimension: str | None = "harmless",
        batch_size: int = 32,
        scorer_dtype: str = "float32",
    ):
        super().__init__()
        if not isinstance(scorer, VectorRewardModel):
            scorer = VectorRewardModel.load(scorer, dtype=scorer_dtype)
        # frozen; in train mode like the rest of the LightningModule (Lightning warns about
        # modules left in eval mode), switched to eval mode for each scoring call
        self.scorer = scorer.train().requires_grad_(False)
        self.dimension_names = list(dimension_names)
        mapping = objectives or default_objectives(self.dimension_names, scorer, cost_dimension)
        check_objectives(mapping, self.dimension_names, scorer)
        self.sources = [mapping[d] for d in self.dimension_names]
        tokenizer = check_model_path(tokenizer, f"{type(self).__name__}.tokenizer")
        self.policy_tokenizer = AutoTokenizer.from_pretrained(tokenizer)
        self.scorer_tokenizer = AutoTokenizer.from_pretrained(scorer.model_name_or_path)
        self.scorer_tokenizer.padding_side = "right"
        if self.scorer_tokenizer.pad_token is None:
            self.scorer_tokenizer.pad_token = self.scorer_tokenizer.eos_token
        self.batch_size = batch_size

    @torch.no_grad()
    def forward(self, rollout: Rollout) -> torch.Tensor:
        texts = decode_rows(self.policy_tokenizer, rollout.prompt_ids(), rollout.response_ids())
        device = self.scorer.score_head.weight.device
        out = []
        with eval_mode(self.scorer):
            for start in range(0, len(texts.texts), self.batch_size):
                enc = self.scorer_tokenizer(
                    texts.texts[start : start + self.batch_size], return_tensors="pt", padding=True
                )
                scores = self.scorer(enc["input_ids"].to(device), enc["attention_mask"].to(device))
                out.append(select_objectives(scores, self.sources, self.scorer).float())
        return torch.cat(out)
