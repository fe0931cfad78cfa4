"""The demo's independent runs: one recipe from n seeds, side by side (one process each, so the
two cores of a laptop both train), averaged into one adapter before the sweep.

    folders = train_side_by_side(configs, budget, seeds=[0, 1], root=Path("runs/stories/x"))
    save_average([f / "checkpoints" / "last.ckpt" for f in folders], root / "average")

Each run is `panacea-pl fit` with the configs, a seed and a CSV logger of its own, and without
the Pareto sweep (only the average is swept). Why average: about half of the KL a trained policy
spends off the reward's direction is its own run's, and an average of runs cancels it
(`panacea_pl.layers.average`).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import yaml

SWEEP_CLASS = "ParetoSweep"
# `panacea-pl ARGS` in a fresh interpreter, without relying on the console script's location
COMMAND = [sys.executable, "-m", "panacea_pl.cli"]


def effective_value(configs: Sequence[Path], *keys: str):
    """The value a stack of configs gives `keys` (the last config that sets it), or None."""
    found = None
    for path in configs:
        node = yaml.safe_load(Path(path).read_text()) or {}
        for key in keys:
            node = node.get(key) if isinstance(node, dict) else None
        if node is not None:
            found = node
    return found


def member_fragment(configs: Sequence[Path], folder: Path, seed: int) -> Path:
    """`<folder>.yaml` beside `folder`: the seed, a CSV logger writing into `folder`, and the
    configs' callbacks less the Pareto sweep."""
    callbacks = effective_value(configs, "trainer", "callbacks") or []
    kept = [
        c
        for c in callbacks
        if not (isinstance(c, dict) and str(c.get("class_path", "")).endswith(SWEEP_CLASS))
    ]
    logger = {
        "class_path": "lightning.pytorch.loggers.CSVLogger",
        "init_args": {"save_dir": str(folder.parent), "name": "", "version": folder.name},
    }
    fragment = {"seed_everything": seed, "trainer": {"logger": [logger], "callbacks": kept}}
    folder.parent.mkdir(parents=True, exist_ok=True)
    path = folder.with_name(f"{folder.name}.yaml")
    path.write_text(yaml.safe_dump(fragment, sort_keys=False))
    return path


def train_side_by_side(
    configs: Sequence[Path],
    budget: Sequence[str],
    seeds: Sequence[int],
    root: Path,
    threads: int = 1,
) -> list[Path]:
    """Train one run per seed at once, one process each; returns their log folders.

    The first run's console is this one's (its progress bar); the others write theirs to
    `<folder>.log`. If a run fails, the others are stopped and its log is named.

    Raises:
        RuntimeError: a run exited non-zero.
    """
    folders = [root / f"seed{seed}" for seed in seeds]
    procs = []
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    try:
        for i, (seed, folder) in enumerate(zip(seeds, folders, strict=True)):
            fragment = member_fragment(configs, folder, seed)
            args = ["fit", *(a for c in configs for a in ("--config", str(c)))]
            args += ["--config", str(fragment), *budget]
            log = None if i == 0 else open(folder.with_name(f"{folder.name}.log"), "w")  # noqa: SIM115
            procs.append(
                (
                    subprocess.Popen(
                        [*COMMAND, *args],
                        env=env,
                        stdout=log,
                        stderr=subprocess.STDOUT if log else None,
                    ),
                    log,
                )
            )
        first_failure = None
        while first_failure is None and any(p.poll() is None for p, _ in procs):
            time.sleep(0.5)
            first_failure = next(
                (i for i, (p, _) in enumerate(procs) if p.poll() not in (None, 0)), None
            )
    finally:
        for proc, log in procs:
            if proc.poll() is None:
                proc.terminate()
                proc.wait()
            if log is not None:
                log.close()
    if first_failure is None:
        first_failure = next((i for i, (p, _) in enumerate(procs) if p.returncode != 0), None)
    if first_failure is not None:
        folder, proc = folders[first_failure], procs[first_failure][0]
        where = folder.with_name(f"{folder.name}.log") if first_failure else "above"
        raise RuntimeError(
            f"the run from seed {seeds[first_failure]} ({folder}) exited with status "
            f"{proc.returncode}; its console output is {where}"
        )
    return folders
