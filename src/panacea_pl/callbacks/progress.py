"""The progress bar `panacea-pl` adds when a config names none: Lightning's rich bar, except that
a run bounded by steps (`max_epochs: -1`) reads "Epoch 3", not "Epoch 3/-2", and a logger's
named version (the demo's "seed1") shows whole, not as its last four characters."""

from __future__ import annotations

from lightning.pytorch.callbacks import RichProgressBar


class ProgressBar(RichProgressBar):
    """`RichProgressBar` that shows the epoch total only when there is one."""

    def _get_train_description(self, current_epoch: int) -> str:
        max_epochs = self.trainer.max_epochs
        description = f"Epoch {current_epoch}"
        if max_epochs is not None and max_epochs > 0:
            description += f"/{max_epochs - 1}"
        if len(self.validation_description) > len(description):
            description = f"{description:{len(self.validation_description)}}"
        return description

    def get_metrics(self, trainer, pl_module) -> dict:
        items = super().get_metrics(trainer, pl_module)
        version = trainer.logger.version if trainer.logger is not None else None
        if isinstance(version, str) and "v_num" in items:
            items["v_num"] = version
        return items
