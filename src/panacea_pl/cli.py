"""`panacea-pl`: the command line.

    panacea-pl fit --config experiments/stories/panacea_dpo.yaml      # LightningCLI subcommands:
    panacea-pl validate|test --config ... --ckpt_path ...             #   fit, validate, test
    panacea-pl fit --config X.yaml --model.init_args.aggregator.class_path=panacea_pl.objectives.Tchebycheff
    panacea-pl fit --config X.yaml --ckpt_path <run>/checkpoints/last.ckpt   # resume after a crash
    panacea-pl demo                                                   # the README's first command
    panacea-pl baseline --config experiments/stories/dps.yaml          # DPS / rewarded soups
    panacea-pl average --out runs/avg RUN_A/checkpoints/last.ckpt RUN_B/...  # average of runs
    panacea-pl convert-llama2c CHECKPOINT TOKENIZER OUTPUT_DIR

Model and data are given as `class_path` + `init_args`, so a subclass in the user's own module
plugs in with no change here (`panacea_pl.lightning_cli`). Configs are read with omegaconf
(`${...}` interpolation), and the resolved config is saved as `config.yaml` in every run's log
folder. A bad input (a config that disagrees with itself, an unreadable checkpoint, a bad data
row) ends the command with `panacea-pl: error: ...` and exit status 2; `PANACEA_VERBOSE=1`
shows the traceback too.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

from panacea_pl.lightning_cli import USER_ERRORS, run_lightning_cli


def _demo(argv: list[str]) -> int:
    from panacea_pl.demo import main

    return main(argv)


def _baseline(argv: list[str]) -> int:
    from panacea_pl.baselines.runner import main

    return main(argv)


def _average(argv: list[str]) -> int:
    from panacea_pl.layers.average import main

    return main(argv)


def _convert(argv: list[str]) -> int:
    from panacea_pl.convert.llama2c import main

    return main(argv)


COMMANDS: dict[str, Callable[[list[str]], int]] = {
    "demo": _demo,
    "baseline": _baseline,
    "average": _average,
    "convert-llama2c": _convert,
}


def main(argv: list[str] | None = None) -> int:
    """Run `panacea-pl ARGS`; returns the exit status."""
    from_command_line = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] in COMMANDS:
            return COMMANDS[argv[0]](argv[1:])
        run_lightning_cli(None if from_command_line else argv)
    except USER_ERRORS as err:
        if os.environ.get("PANACEA_VERBOSE") == "1":
            raise
        print(f"panacea-pl: error: {err}", file=sys.stderr)
        return 2
    finally:
        _close_process_group()
    return 0


def _close_process_group() -> None:
    """Close the process group a distributed run left open (Lightning keeps it for reuse): a gloo
    group still open at interpreter exit can abort a rank (a joinable C++ thread destroyed at
    shutdown), so a finished torchrun job exited -6 about one time in ten."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    raise SystemExit(main())
