"""The LightningCLI behind `panacea-pl fit|validate|test` and `panacea-pl baseline`.

    run_lightning_cli(["fit", "--config", "experiments/stories/panacea_dpo.yaml"])

What it adds to Lightning's: any LightningModule / DataModule subclass by `class_path`
(a user's own module too), omegaconf parsing with `panacea_pl.resolvers`, m stated once per
config file as its top-level `num_preferences` (components say `${panacea.num_preferences:}`),
atomic checkpoint writes (`AtomicCheckpointIO`), a `last.ckpt` in every run's `checkpoints/`
when the config names no `ModelCheckpoint`, checks that fail before anything loads (m stated
alike by every component; a `--ckpt_path` that is readable), and a quiet console.
"""

from __future__ import annotations

import inspect
import sys
from typing import Any

import lightning.pytorch as pl
from jsonargparse import set_parsing_settings
from lightning.pytorch.callbacks import ModelCheckpoint, ProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from omegaconf.errors import InterpolationResolutionError

from panacea_pl.callbacks.pareto_sweep import ParetoSweep
from panacea_pl.callbacks.progress import ProgressBar as PanaceaProgressBar
from panacea_pl.config_checks import DimensionMismatchError, check_dimension_agreement
from panacea_pl.console import quiet_console
from panacea_pl.data.errors import ConfigError, DataError
from panacea_pl.layers import PanaceaConfig
from panacea_pl.layers.io import AdapterLoadError
from panacea_pl.plugins.checkpoint_io import CheckpointError, read_checkpoint
from panacea_pl.preference import PreferenceError
from panacea_pl.resolvers import register_resolvers

#: Checkpoints are written atomically (see `panacea_pl.plugins.AtomicCheckpointIO`); a config
#: that sets `trainer.plugins` replaces this list, so it should list the plugin too.
TRAINER_DEFAULTS = {"plugins": [{"class_path": "panacea_pl.plugins.AtomicCheckpointIO"}]}

#: What every panacea-pl LightningCLI shares (`fit` & co., and `baseline` in the runner).
CLI_SETTINGS: dict[str, Any] = {
    "model_class": pl.LightningModule,
    "datamodule_class": pl.LightningDataModule,
    "subclass_mode_model": True,
    "subclass_mode_data": True,
    "parser_kwargs": {"parser_mode": "omegaconf"},
    "save_config_kwargs": {"overwrite": True},
    "trainer_defaults": TRAINER_DEFAULTS,
    "auto_configure_optimizers": False,
}

NUM_PREFERENCES_HELP = (
    "m, the number of preference dimensions, stated once in a config file: every component of "
    "that file that takes m says `${panacea.num_preferences:}`, resolved when the file is read. "
    "Given alone on the command line it does not reach them (they are resolved by then): the "
    "m check then names every statement that disagrees"
)

#: Errors that describe a bad input completely: `panacea-pl` shows them as one message.
USER_ERRORS: tuple[type[BaseException], ...] = (
    CheckpointError,
    DimensionMismatchError,
    ConfigError,
    DataError,
    AdapterLoadError,
    PreferenceError,
)

#: `--ckpt_path` values that Lightning resolves itself.
SPECIAL_CKPT_PATHS = ("last", "best", "hpc")

#: Hyperparameters that older checkpoints saved but no module takes any more.
LEGACY_HPARAMS = ("aggregation",)


def prepare_parsing() -> None:
    """What must hold before any panacea-pl config is parsed (idempotent)."""
    quiet_console()
    register_resolvers()
    # A dataclass config nested under a class that a later config file swaps by `class_path`
    # trips jsonargparse's dataclass handling; parsed as a class, it re-validates cleanly.
    set_parsing_settings(subclasses_enabled=[PanaceaConfig])


class ShortUsageParser(LightningArgumentParser):
    """Lightning's parser, except that an error is not preceded by the whole option list (a
    hundred lines for `fit`): one usage line, the tip to run `--help`, and the error."""

    def print_usage(self, file: Any = None) -> None:
        prog = self.prog.replace(" [options]", "")
        (file or sys.stderr).write(f"usage: {prog} [--config CONFIG ...] [--KEY VALUE ...]\n")


class PanaceaCLI(LightningCLI):
    """`LightningCLI` with `CLI_SETTINGS`, the checks above and the default callbacks."""

    def __init__(self, args: Any = None, run: bool = True, **kwargs: Any):
        prepare_parsing()
        settings = {"parser_class": ShortUsageParser, **CLI_SETTINGS, **kwargs}
        super().__init__(args=args, run=run, **settings)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        add_num_preferences(parser)

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        """Lightning's, with an interpolation that cannot resolve (e.g. a
        `${panacea.num_preferences:}` in a file without the top-level key) a parse error."""
        try:
            super().parse_arguments(parser, args)
        except InterpolationResolutionError as err:
            parser.error(str(err).splitlines()[0])

    def _parse_ckpt_path(self) -> None:
        """Read `--ckpt_path` with clear errors, and restore the module's arguments from it.

        Overrides Lightning's private hook of the same name: its `torch.load` errors name no file,
        and arguments that older checkpoints saved but the module no longer takes made it fail.
        """
        subcommand = self.config.get("subcommand")
        if not subcommand:
            return
        ckpt_path = self.config[subcommand].get("ckpt_path")
        if not ckpt_path or str(ckpt_path) in SPECIAL_CKPT_PATHS or "://" in str(ckpt_path):
            return
        checkpoint = read_checkpoint(ckpt_path)
        if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
            raise CheckpointError(
                f"checkpoint {ckpt_path} is a torch file but not a Lightning checkpoint (it has "
                "no 'state_dict'); an adapter folder is loaded with the policy's `adapter_path`"
            )
        hparams = dict(checkpoint.get("hyper_parameters") or {})
        hparams.pop("_instantiator", None)
        class_path = hparams.pop("_class_path", None)
        hparams = _accepted_arguments(class_path, hparams)
        if not hparams or class_path is None:
            return
        model = {"class_path": class_path, "dict_kwargs": hparams}
        try:
            self.config = self.parser.parse_object({subcommand: {"model": model}}, self.config)
        except SystemExit as err:
            raise CheckpointError(
                f"the module arguments saved in checkpoint {ckpt_path} ({sorted(hparams)}) do "
                f"not fit the configured model {class_path}; see the parser's message above"
            ) from err

    def before_instantiate_classes(self) -> None:
        config = self.config.get(self.subcommand) if self.subcommand else self.config
        check_dimension_agreement(config)

    def instantiate_classes(self) -> None:
        """Lightning's, with a constructor's refusal of its arguments (e.g. "PanaceaGRPO: kl_coef
        must be a finite number >= 0, got -1.0") raised as a bad input: jsonargparse wraps it in
        a ValueError listing the subtypes of a `class_path` union, which `panacea-pl` could only
        show as a traceback with the message inside."""
        try:
            super().instantiate_classes()
        except ValueError as err:
            root = _root_cause(err)
            if isinstance(root, USER_ERRORS):
                raise root from None
            if root is not err and isinstance(root, (ValueError, FileNotFoundError)):
                raise ConfigError(str(root)) from root
            raise

    def after_validate(self) -> None:
        """Sweep where `validate` found no validation rows to run its loop on (an on-policy
        recipe's prompts): what a user validating a finished model asks for is its front."""
        for callback in self.trainer.callbacks:
            if isinstance(callback, ParetoSweep):
                callback.sweep_unless_done(self.trainer, self.model)

    def instantiate_trainer(self, **kwargs: Any) -> pl.Trainer:
        """Lightning's trainer, plus `ModelCheckpoint(save_last=True)` and our progress bar when
        the config names no checkpoint callback or progress bar of its own."""
        trainer_config = self._get(self.config_init, "trainer", default={}) or {}
        callbacks = kwargs.get("callbacks", trainer_config.get("callbacks")) or []
        callbacks = list(callbacks) if isinstance(callbacks, (list, tuple)) else [callbacks]
        extra = []
        if trainer_config.get("enable_checkpointing") is not False and not any(
            isinstance(c, ModelCheckpoint) for c in callbacks
        ):
            extra.append(ModelCheckpoint(save_last=True))
        if trainer_config.get("enable_progress_bar") is not False and not any(
            isinstance(c, ProgressBar) for c in callbacks
        ):
            extra.append(PanaceaProgressBar())
        if extra:
            kwargs["callbacks"] = callbacks + extra
        return super().instantiate_trainer(**kwargs)


def add_num_preferences(parser: LightningArgumentParser) -> None:
    """The top-level `num_preferences`: m, stated once per config. A component that takes m says
    `${panacea.num_preferences:}` (`panacea_pl.resolvers`), which resolves to it."""
    parser.add_argument(
        "--num_preferences", type=int | None, default=None, help=NUM_PREFERENCES_HELP
    )


def _accepted_arguments(class_path: str | None, hparams: dict[str, Any]) -> dict[str, Any]:
    """`hparams` less `LEGACY_HPARAMS` and, for a class without `**kwargs`, less any name its
    constructor does not take."""
    hparams = {k: v for k, v in hparams.items() if k not in LEGACY_HPARAMS}
    if class_path is None:
        return hparams
    module_name, _, name = class_path.rpartition(".")
    try:
        cls = getattr(__import__(module_name, fromlist=[name]), name)
        parameters = inspect.signature(cls.__init__).parameters.values()
    except (ImportError, AttributeError, ValueError, TypeError):
        return hparams
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return hparams
    names = {p.name for p in parameters}
    return {k: v for k, v in hparams.items() if k in names}


def run_lightning_cli(argv: list[str] | None = None, run: bool = True) -> PanaceaCLI:
    """`PanaceaCLI` over `argv` (default: the command line)."""
    return PanaceaCLI(args=argv, run=run)


def _root_cause(err: BaseException) -> BaseException:
    """The last exception in `err`'s chain of causes (`err` itself if it has none)."""
    seen = {id(err)}
    while (cause := err.__cause__ or err.__context__) is not None and id(cause) not in seen:
        seen.add(id(cause))
        err = cause
    return err
