"""The evaluator interface: given a trained module and a λ grid, return the front f(λ)."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import lightning.pytorch as pl
import torch

from panacea_pl.evaluation.result import FrontResult


@runtime_checkable
class FrontEvaluator(Protocol):
    """Anything with `evaluate(module, preferences) -> FrontResult`.

    `module` is the LightningModule being trained or evaluated; its `policy` is a
    `panacea_pl.models.PreferencePolicy` (Panacea's `PanaceaPolicy`, or a baseline's policy
    collection). The evaluator must evaluate the whole grid in per-sample batches (one λ row per
    sequence), not one pass per λ — unless the policy's `accepts_row_preferences` is False, in
    which case each batch holds one λ only.
    """

    def evaluate(self, module: pl.LightningModule, preferences: torch.Tensor) -> FrontResult: ...
