"""The LightningCLI of `panacea-pl baseline`: a baseline YAML's sections plus `baseline:`, the
trainer of one member or of the collection's sweep, and the key that says whether a member
trained earlier can be reused."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import yaml
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger

from panacea_pl.callbacks import ParetoSweep
from panacea_pl.hashing import settings_key
from panacea_pl.lightning_cli import PanaceaCLI


@dataclass
class BaselineSettings:
    """The `baseline:` block of a baseline YAML.

    Args:
        kind: "dps" (one model per grid λ) or "rewarded_soups" (one per dimension, interpolated).
        divisions: H of DPS's Das–Dennis grid; None: the `ParetoSweep` callback's, so every
            evaluated λ has its own model. A coarser grid serves each λ by the nearest member.
        preferences: DPS's members' λ given explicitly instead of a grid (e.g. [[0.3, 0.7]]).
        output_dir: members' adapters, logs and `members.json`; None:
            `<trainer.default_root_dir>/<kind>_members`.
        resume: reuse a member already trained in `output_dir` at the same λ under the same
            config (loggers, the sweep, output folders and display settings aside).
        num_threads: torch intra-op threads (1 is fastest for stories260K on a busy CPU);
            None leaves torch's setting.
    """

    kind: Literal["dps", "rewarded_soups"] = "dps"
    divisions: int | None = None
    preferences: list[list[float]] | None = None
    output_dir: str | None = None
    resume: bool = True
    num_threads: int | None = None


class BaselineCLI(PanaceaCLI):
    """LightningCLI (no subcommand) over a baseline YAML: the usual sections plus `baseline`.

    With `member_dir` the trainer is a member's: a CSV logger in `member_dir`, no `ParetoSweep`.
    Without, it is the YAML's own trainer, to validate (= sweep) the collection.
    """

    def __init__(self, args: list[str], member_dir: Path | None = None):
        self.member_dir = member_dir
        super().__init__(args=args, run=False)

    def add_arguments_to_parser(self, parser) -> None:
        super().add_arguments_to_parser(parser)
        parser.add_class_arguments(BaselineSettings, "baseline")

    def instantiate_trainer(self, **kwargs: Any) -> pl.Trainer:
        if self.member_dir is None:
            kwargs.setdefault("limit_val_batches", 1)  # the front module does nothing per batch
            return super().instantiate_trainer(**kwargs)
        callbacks = self._get(self.config_init, "trainer", default={}).get("callbacks") or []
        callbacks = [c for c in as_list(callbacks) if not isinstance(c, ParetoSweep)]
        for callback in callbacks:  # a fixed checkpoint folder would be shared by all members
            if isinstance(callback, ModelCheckpoint) and callback.dirpath:
                callback.dirpath = str(self.member_dir / "checkpoints")
        kwargs.update(
            logger=CSVLogger(self.member_dir, name="logs"),
            callbacks=callbacks,
            default_root_dir=str(self.member_dir),
        )
        return super().instantiate_trainer(**kwargs)


# Settings that do not change what a member learns: a member trained under a config that differs
# from the current one only in these is reused by `resume`.
NOT_TRAINING = (
    "config",
    "baseline",
    "num_preferences",  # m reaches training through the components that say it
    "model.init_args.preference",
    "trainer.logger",
    "trainer.default_root_dir",
    "trainer.enable_progress_bar",
    "trainer.enable_model_summary",
)


def config_key(cli: BaselineCLI) -> str:
    """A hash of the config as it bears on a member's training (λ aside; see NOT_TRAINING)."""
    dump = yaml.safe_load(cli.parser.dump(cli.config, skip_link_targets=False))
    for key in NOT_TRAINING:
        *path, last = key.split(".")
        node = dump
        for part in path:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(last, None)
    callbacks = (dump.get("trainer") or {}).get("callbacks") or []
    dump.setdefault("trainer", {})["callbacks"] = [
        c
        for c in as_list(callbacks)
        if not (isinstance(c, dict) and c.get("class_path", "").endswith("ParetoSweep"))
    ]
    return settings_key(dump)


def as_list(value) -> list:
    return list(value) if isinstance(value, list | tuple) else [value]
