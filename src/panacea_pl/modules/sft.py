"""Panacea-SFT (the paper's Chat setting): L = Σ_i λ_i · NLL_i over per-dimension targets.

module = PanaceaSFT(policy=PanaceaPolicy(path, adapter=PanaceaConfig(num_preferences=3)))
Trainer(max_steps=200).fit(module, datamodule=SFTDataModule(...))
"""

from __future__ import annotations

import torch

from panacea_pl.models import PanaceaPolicy, token_logprobs
from panacea_pl.modules.base import PanaceaModule
from panacea_pl.objectives import DimensionLosses, PreferenceSFTLoss


class PanaceaSFT(PanaceaModule):
    """Supervised fine-tuning where each sequence is the target of one dimension.

    Batches are SFT batches (`input_ids`, `attention_mask`, `response_mask`, `dimension`).
    Logs `{stage}/{dimension}/loss` (mean token NLL of that dimension's targets).
    """

    def __init__(self, policy: PanaceaPolicy, **kwargs):
        super().__init__(policy, **kwargs)
        self.loss = PreferenceSFTLoss(policy.num_preferences)

    @staticmethod
    def batch_size_of(batch: dict) -> int:
        return batch["input_ids"].shape[0]

    def dimension_losses(self, batch: dict, preference: torch.Tensor) -> DimensionLosses:
        with self.policy.adapter.preference(preference, checked=True):  # drawn by the sampler
            logits = self.policy(batch["input_ids"], batch["attention_mask"])
        token_logps = token_logprobs(logits, batch["input_ids"])
        return self.loss(token_logps, batch["dimension"], batch["response_mask"][:, 1:])
