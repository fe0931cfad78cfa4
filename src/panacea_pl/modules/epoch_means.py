"""Count-weighted epoch means of per-dimension statistics, synced across ranks by torchmetrics."""

from __future__ import annotations

import lightning.pytorch as pl
import torch
from torchmetrics import MeanMetric


class EpochMeans(torch.nn.ModuleDict):
    """One `MeanMetric` per logged key, created on first use.

    means.update("val/helpful/accuracy", accuracy, weight=num_labelled_pairs)
    means.log_and_reset(module)       # in on_validation_epoch_end
    """

    def update(self, key: str, value: torch.Tensor, weight: torch.Tensor | float) -> None:
        slot = key.replace("/", "__")  # ModuleDict keys cannot contain "."; "/" reads badly
        if slot not in self:
            self[slot] = MeanMetric().to(value.device)
        self[slot].update(value, weight)

    def log_and_reset(self, module: pl.LightningModule) -> None:
        for slot, metric in self.items():
            if metric.update_called:
                module.log(slot.replace("__", "/"), metric.compute())
                metric.reset()
