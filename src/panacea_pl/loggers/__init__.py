"""Loggers: W&B that falls back to offline mode instead of stopping the run, and a reader of
W&B offline runs."""

from panacea_pl.loggers.wandb import WandbLogger
from panacea_pl.loggers.wandb_offline import OfflineRun, find_offline_runs, read_offline_run

__all__ = ["OfflineRun", "WandbLogger", "find_offline_runs", "read_offline_run"]
