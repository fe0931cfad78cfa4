"""Evaluator (c): per-dimension implicit-reward accuracy on held-out pairs — no generation.

For each λ of the grid, the module's loss gives each response its implicit reward
(`PreferenceLoss.implicit_rewards`: β (log π_λ(y) − log π_ref(y)) for DPO, β log π_λ(y) for a
reference-free loss, which then needs no reference pass), and that ranks each held-out pair; f_i(λ) is the fraction of dimension-i pairs ranked as labelled. The grid is
evaluated in per-sample batches: each pair batch is repeated once per λ in a chunk. A policy that
takes one λ per forward pass (`accepts_row_preferences` False: the baselines' policy collections)
gets chunks of one λ.
"""

from __future__ import annotations

from collections.abc import Iterable

import lightning.pytorch as pl
import numpy as np
import torch

from panacea_pl.evaluation.result import FrontResult
from panacea_pl.rows import repeat_rows, tile_rows

SEQUENCE_KEYS = ("input_ids", "attention_mask", "response_mask")


class ImplicitRewardEvaluator:
    """Implicit-reward accuracy (↑) and margin per dimension, for every λ of a grid.

    Args:
        max_batches: held-out batches to use (None: all of the datamodule's validation set).
        max_rows: most sequences in one forward pass (the grid is chunked to fit).
        pairs: an iterable of pair batches; default: `trainer.datamodule.val_dataloader()`.
    """

    def __init__(
        self, max_batches: int | None = 8, max_rows: int = 256, pairs: Iterable | None = None
    ):
        self.max_batches = max_batches
        self.max_rows = max_rows
        self.pairs = pairs

    @torch.no_grad()
    def evaluate(self, module: pl.LightningModule, preferences: torch.Tensor) -> FrontResult:
        policy, loss = module.policy, module.loss
        grid = preferences.to(module.device)
        correct = torch.zeros(len(grid), policy.num_preferences, dtype=torch.float64)
        margin = torch.zeros_like(correct)
        counts = torch.zeros(policy.num_preferences, dtype=torch.float64)
        pairs = self.pairs if self.pairs is not None else module.trainer.datamodule.val_dataloader()
        for index, batch in enumerate(pairs):
            if self.max_batches is not None and index >= self.max_batches:
                break
            batch = {k: v.to(module.device) for k, v in batch.items() if torch.is_tensor(v)}
            b = batch["labels"].shape[0]
            signs = torch.sign(batch["labels"]).double().cpu()  # [B, m]
            reference = None
            if not loss.is_reference_free:
                with policy.reference():
                    reference = policy.sequence_logprobs(batch).double().cpu()
            chunk = max(1, self.max_rows // (2 * b)) if policy.accepts_row_preferences else 1
            for start in range(0, len(grid), chunk):
                lams = grid[start : start + chunk]
                g = len(lams)
                # rows: for each λ, a copy of the pair batch (its B a rows, then its B b rows)
                repeated = {k: tile_rows(batch[k], g) for k in SEQUENCE_KEYS}
                rows = repeat_rows(lams, 2 * b)
                with policy.preference(rows):
                    logps = policy.sequence_logprobs(repeated).double().cpu()
                ref = None if reference is None else tile_rows(reference, g)
                rewards = loss.implicit_rewards(logps, ref).view(g, 2, b)
                h = rewards[:, 0] - rewards[:, 1]  # [g, B]: implicit reward of a minus b
                signed = h[:, :, None] * signs[None]  # [g, B, m]
                labelled = signs[None] != 0
                correct[start : start + g] += ((signed > 0) & labelled).sum(1)
                margin[start : start + g] += (signed * labelled).sum(1)
            counts += (signs != 0).sum(0)
        if (counts == 0).any():
            raise ValueError(
                f"no held-out pair is labelled in dimension(s) {counts.eq(0).nonzero().flatten().tolist()}"
            )
        accuracy = (correct / counts).numpy()
        names = [f"{name} accuracy" for name in module.dimension_names]
        m = policy.num_preferences
        return FrontResult(
            preferences=preferences.cpu().numpy(),
            objectives=accuracy,
            objective_names=names,
            maximize=[True] * m,
            reference_point=np.zeros(m),
            lower=np.zeros(m),
            upper=np.ones(m),
            columns={
                f"{name} margin": (margin[:, i] / counts[i]).numpy()
                for i, name in enumerate(module.dimension_names)
            },
        )
