"""The progress bar `panacea-pl` adds when a config names none: Lightning's rich bar, except that
a run bounded by steps (`max_epochs: -1`) reads "Epoch 3", not "Epoch 3/-2"."""

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
