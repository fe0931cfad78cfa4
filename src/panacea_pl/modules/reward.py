"""Reward and cost models: one backbone, a vector head (one Bradley–Terry score per dimension)
and an optional safe-rlhf cost head.

    module = RewardModelModule(VectorRewardModel(path, ["helpful", "harmless"], cost_head=True),
                               cost_dimension="harmless")
    Trainer(max_epochs=1).fit(module, datamodule=PreferenceDataModule(...))
    module.model.save("runs/rm/scorer")     # evaluation and PPO load it by path

Loss = mean over dimensions of each dimension's mean Bradley–Terry loss on its labelled pairs,
plus the cost loss (−log σ(c_l − c_w) − log σ(s_a c_a) − log σ(s_b c_b)) when a cost head exists.
"""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.cli import OptimizerCallable

from panacea_pl.data.errors import ConfigError
from panacea_pl.models.reward import VectorRewardModel
from panacea_pl.modules.epoch_means import EpochMeans
from panacea_pl.objectives import BradleyTerryLoss, SafetyCostLoss
from panacea_pl.rows import split_pairs


def _adamw(params) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=1e-4, fused=True)


class RewardModelModule(pl.LightningModule):
    """Trains a `VectorRewardModel` on preference-pair batches.

    Logs `{stage}/{dimension}/loss` and `/accuracy` (pairs ranked right), and with a cost head
    `{stage}/cost/loss`, `/accuracy` (less safe response costs more) and `/safety_accuracy`
    (sign of the cost matches the safety label).

    Args:
        model: the reward model.
        cost_dimension: the dimension whose labels (and the batch's `is_safe`) train the cost head.
        save_dir: where `on_train_end` saves the scorer (default: `<log_dir>/scorer`).
        optimizer: builds the optimiser from all trainable parameters.
    """

    def __init__(
        self,
        model: VectorRewardModel,
        cost_dimension: str | None = None,
        save_dir: str | None = None,
        optimizer: OptimizerCallable = _adamw,
    ):
        super().__init__()
        self.save_hyperparameters(ignore=["model", "optimizer"])
        self.model = model
        if (cost_dimension is None) != (model.cost_head is None):
            raise ValueError("give cost_dimension exactly when the model has a cost head")
        if cost_dimension is not None and cost_dimension not in model.dimension_names:
            raise ValueError(f"cost_dimension {cost_dimension!r} not in {model.dimension_names}")
        self.cost_index = (
            None if cost_dimension is None else model.dimension_names.index(cost_dimension)
        )
        self.bt_loss = BradleyTerryLoss()
        self.cost_loss = SafetyCostLoss()
        self.save_dir = save_dir
        self.optimizer_factory = optimizer
        self.epoch_means = EpochMeans()

    def _shared_step(self, batch: dict, stage: str) -> torch.Tensor:
        out = self.model(batch["input_ids"], batch["attention_mask"])
        b = batch["labels"].shape[0]
        pairwise = self.bt_loss(*split_pairs(out.scores), batch["labels"])
        counts = pairwise.counts()
        labelled = counts > 0
        loss = pairwise.dimension_means()[labelled].sum() / labelled.sum().clamp(min=1)
        stats = {
            f"{name}/{key}": (values[i], counts[i])
            for key, values in (
                ("loss", pairwise.dimension_means()),
                ("accuracy", pairwise.accuracy()),
            )
            for i, name in enumerate(self.model.dimension_names)
            if counts[i] > 0
        }
        if self.cost_index is not None:
            cost = self.cost_loss(
                *split_pairs(out.cost), batch["labels"][:, self.cost_index], batch["is_safe"]
            )
            loss = loss + cost.mean_loss()
            n = cost.mask.sum()
            stats |= {
                "cost/loss": (cost.mean_loss(), n),
                "cost/accuracy": (cost.accuracy(), cost.margin_mask.sum()),
                "cost/safety_accuracy": (cost.safety_accuracy(), cost.sign_mask.sum()),
            }
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"non-finite {stage} loss at global step {self.global_step}: {stats}"
            )
        self.log(f"{stage}/loss", loss, prog_bar=True, batch_size=b, sync_dist=stage != "train")
        for key, (value, weight) in stats.items():
            if weight == 0:
                continue
            if stage == "train":
                self.log(f"train/{key}", value, batch_size=b)
            else:
                self.epoch_means.update(f"{stage}/{key}", value, weight)
        return loss

    def training_step(self, batch, batch_idx):
        return self._shared_step(batch, "train")

    def validation_step(self, batch, batch_idx):
        return self._shared_step(batch, "val")

    def test_step(self, batch, batch_idx):
        return self._shared_step(batch, "test")

    def on_validation_epoch_end(self) -> None:
        self.epoch_means.log_and_reset(self)

    def on_test_epoch_end(self) -> None:
        self.epoch_means.log_and_reset(self)

    def configure_optimizers(self):
        parameters = [p for p in self.parameters() if p.requires_grad]
        try:
            return self.optimizer_factory(parameters)
        except ValueError as err:  # torch's check of a setting, e.g. "Invalid learning rate"
            raise ConfigError(f"{type(self).__name__}: optimizer: {err}") from err

    def on_train_end(self) -> None:
        if self.trainer.is_global_zero:
            target = self.save_dir or str(
                Path(self.trainer.log_dir or self.trainer.default_root_dir) / "scorer"
            )
            self.model.save(target)
