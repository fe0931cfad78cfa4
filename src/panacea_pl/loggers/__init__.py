"""Loggers: W&B that falls back to offline mode instead of stopping the run."""

from panacea_pl.loggers.wandb import WandbLogger

__all__ = ["WandbLogger"]
