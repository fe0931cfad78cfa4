"""`panacea-pl`: the command line.

    panacea-pl fit --config experiments/stories/panacea_dpo.yaml      # LightningCLI subcommands:
    panacea-pl validate|test --config ... --ckpt_path ...             #   fit, validate, test
    panacea-pl fit --config X.yaml --model.init_args.aggregator.class_path=panacea_pl.objectives.Tchebycheff
    panacea-pl demo                                                   # the README's first command
    panacea-pl baseline --config experiments/stories/dps.yaml          # DPS / rewarded soups
    panacea-pl convert-llama2c CHECKPOINT TOKENIZER OUTPUT_DIR

Model and data are given as `class_path` + `init_args`, so a subclass in the user's own module
plugs in with no change here. Configs are read with omegaconf (`${...}` interpolation), and the
resolved config is saved as `config.yaml` in every run's log folder.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import lightning.pytorch as pl
from lightning.pytorch.cli import LightningCLI

from panacea_pl.resolvers import register_resolvers


def _demo(argv: list[str]) -> int:
    from panacea_pl.demo import main

    return main(argv)


def _baseline(argv: list[str]) -> int:
    from panacea_pl.baselines.runner import main

    return main(argv)


def _convert(argv: list[str]) -> int:
    from panacea_pl.convert.llama2c import main

    return main(argv)


COMMANDS: dict[str, Callable[[list[str]], int]] = {
    "demo": _demo,
    "baseline": _baseline,
    "convert-llama2c": _convert,
}


#: Checkpoints are written atomically (see `panacea_pl.plugins.AtomicCheckpointIO`); a config
#: that sets `trainer.plugins` replaces this list, so it should list the plugin too.
TRAINER_DEFAULTS = {"plugins": [{"class_path": "panacea_pl.plugins.AtomicCheckpointIO"}]}

#: What every panacea-pl LightningCLI shares (`fit` & co. here, `baseline` in the runner):
#: any module / datamodule subclass, omegaconf parsing, our optimiser hooks, atomic checkpoints.
CLI_SETTINGS = {
    "model_class": pl.LightningModule,
    "datamodule_class": pl.LightningDataModule,
    "subclass_mode_model": True,
    "subclass_mode_data": True,
    "parser_kwargs": {"parser_mode": "omegaconf"},
    "save_config_kwargs": {"overwrite": True},
    "trainer_defaults": TRAINER_DEFAULTS,
    "auto_configure_optimizers": False,
}


def run_lightning_cli(argv: list[str] | None = None, run: bool = True) -> LightningCLI:
    """LightningCLI over any LightningModule / LightningDataModule subclass, omegaconf parsing
    (with `panacea_pl.resolvers` registered, e.g. `${panacea.stories_model:}`), and atomic
    checkpoint writes by default (`TRAINER_DEFAULTS`)."""
    register_resolvers()
    return LightningCLI(**CLI_SETTINGS, args=argv, run=run)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in COMMANDS:
        return COMMANDS[argv[0]](argv[1:])
    run_lightning_cli(argv)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
