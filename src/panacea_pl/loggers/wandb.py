"""Lightning's WandbLogger, except that a run never dies for want of a W&B server or login.

    logger:
      - class_path: panacea_pl.loggers.WandbLogger
        init_args: {project: panacea-pl}

If `wandb.init` fails (no API key, server unreachable), the logger warns, switches to offline
mode and the run goes on; `wandb sync <run folder>` uploads it later.
"""

from __future__ import annotations

import os
import warnings

import wandb
from lightning.pytorch.loggers import WandbLogger as LightningWandbLogger

FALLBACK_ERRORS = (
    wandb.errors.UsageError,
    wandb.errors.CommError,
    wandb.errors.AuthenticationError,
)


class WandbLogger(LightningWandbLogger):
    """`lightning.pytorch.loggers.WandbLogger` with an offline fallback (same arguments)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # Lightning always passes `anonymous`, and W&B warns that it has no effect when None
        if self._wandb_init.get("anonymous") is None:
            self._wandb_init.pop("anonymous", None)

    @property
    def experiment(self):
        try:
            return LightningWandbLogger.experiment.fget(self)
        except FALLBACK_ERRORS as err:
            warnings.warn(
                f"W&B is unreachable ({type(err).__name__}: {err}); logging offline instead. "
                "Upload later with `wandb sync` on the run folder.",
                stacklevel=2,
            )
            os.environ["WANDB_MODE"] = "offline"
            self._wandb_init["mode"] = "offline"
            self._offline = True
            return LightningWandbLogger.experiment.fget(self)
