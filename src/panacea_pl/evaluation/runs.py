"""Read finished training runs back: their fronts, logged front metrics, scheme, W&B run, policy.

    run = load_run("runs/pku_saferlhf_local")     # a run root, or a Lightning version folder
    run.scheme, run.steps, run.metrics           # 'Tchebycheff', 60, {'hypervolume': …, …}
    front = run.front()                          # FrontResult of the last sweep (its CSV)
    run.wandb.summary["pareto/hypervolume"]      # the matching W&B offline run, if any
    policy = load_policy(run)                    # the trained policy, adapter loaded

A run is what `panacea-pl fit` leaves in a Lightning version folder `<save_dir>/<name>/version_N`:
`config.yaml` (the resolved config), `metrics.csv`, `checkpoints/*.ckpt` and the `ParetoSweep`
files `pareto/<tag>.csv`. Given a folder above it, the newest such version folder inside is used.
Its W&B offline run is looked for in `<save_dir>/**/offline-run-*` and is the newest one whose
logged front table (`pareto/front_<tag>`) equals the CSV's rows, so several runs sharing a
`save_dir` are told apart by what they logged, not by time stamps.

A front CSV holds λ, objectives and extra columns, not the hypervolume's reference point; fronts
read back get the reference point you give, by default their nadir (see `common_reference` to
compare several fronts at one point). The metrics logged during training (`metrics`, and the W&B
summary) were computed at the evaluator's own reference point.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from panacea_pl.evaluation.result import FrontResult
from panacea_pl.loggers.wandb_offline import OfflineRun, find_offline_runs, read_offline_run

LAMBDA_PREFIX = "lambda_"
NADIR_MARGIN = 0.1


def front_from_table(
    columns: Sequence[str],
    rows: Sequence[Sequence[float]],
    reference_point: Sequence[float] | None = None,
    maximize: bool | Sequence[bool] = True,
) -> FrontResult:
    """A `FrontResult` from `ParetoSweep`'s table layout: m `lambda_*` columns, m objectives,
    then extra columns. Reference point: given, else the front's nadir lowered by 10 % of its
    extent; lower/upper: the front's range."""
    columns = list(columns)
    m = sum(c.startswith(LAMBDA_PREFIX) for c in columns)
    if m == 0 or columns[:m] != [c for c in columns if c.startswith(LAMBDA_PREFIX)]:
        raise ValueError(f"not a front table (no leading {LAMBDA_PREFIX}* columns): {columns}")
    values = np.asarray(rows, dtype=np.float64).reshape(len(rows), len(columns))
    objectives = values[:, m : 2 * m]
    up = [maximize] * m if isinstance(maximize, bool) else list(maximize)
    reference = (
        np.asarray(reference_point, dtype=np.float64)
        if reference_point is not None
        else common_reference([objectives], up)
    )
    low, high = objectives.min(0), objectives.max(0)
    return FrontResult(
        preferences=values[:, :m],
        objectives=objectives,
        objective_names=columns[m : 2 * m],
        maximize=up,
        reference_point=reference,
        lower=low,
        upper=np.where(high > low, high, low + 1.0),
        columns={c: values[:, 2 * m + i] for i, c in enumerate(columns[2 * m :])},
    )


def read_front_csv(
    path: str | Path,
    reference_point: Sequence[float] | None = None,
    maximize: bool | Sequence[bool] = True,
) -> FrontResult:
    """A front written by `FrontResult.write_csv` (see `front_from_table` for the defaults)."""
    with Path(path).open(newline="") as handle:
        header, *rows = list(csv.reader(handle))
    return front_from_table(
        header, [[float(v) for v in row] for row in rows], reference_point, maximize
    )


def common_reference(
    objectives: Sequence[np.ndarray], maximize: bool | Sequence[bool] = True
) -> np.ndarray:
    """One reference point for several fronts: their joint nadir moved 10 % of the joint extent
    further out (so that every front's extreme points count)."""
    points = np.concatenate([np.asarray(o, dtype=np.float64) for o in objectives])
    up = np.broadcast_to(np.asarray(maximize, dtype=bool), points.shape[1])
    worst = np.where(up, points.min(0), points.max(0))
    best = np.where(up, points.max(0), points.min(0))
    extent = np.abs(best - worst)
    extent = np.where(extent > 0, extent, 1.0)
    return worst - np.where(up, 1.0, -1.0) * NADIR_MARGIN * extent


@dataclass
class LoggedRun:
    """A finished (or running) training run read from disk.

    Attributes:
        directory: the Lightning version folder.
        config: its resolved `config.yaml`.
        metrics: front metrics of the last sweep as logged in `metrics.csv` (`pareto/…`, the
            `_final` values when fitting ended), without the prefix.
        steps: the last logged global step.
        front_path: the last sweep's CSV (`final.csv`, else the newest).
        wandb: the matching W&B offline run, if found.
        label: a name for tables and legends (default: scheme and folder).
    """

    directory: Path
    config: dict[str, Any]
    metrics: dict[str, float] = field(default_factory=dict)
    steps: int | None = None
    front_path: Path | None = None
    wandb: OfflineRun | None = None
    label: str = ""

    @property
    def scheme(self) -> str:
        """The aggregation scheme's class name (`LinearScalarization`, `Tchebycheff`, …)."""
        model = (self.config.get("model") or {}).get("init_args") or {}
        if "policy" not in model:
            return ""
        aggregator = model.get("aggregator") or {}
        path = aggregator.get("class_path") if isinstance(aggregator, dict) else None
        return (path or "LinearScalarization").rsplit(".", 1)[-1]

    @property
    def dimension_names(self) -> list[str]:
        """The preference dimensions, from the config (model, then data), else the front CSV."""
        model = (self.config.get("model") or {}).get("init_args") or {}
        data = (self.config.get("data") or {}).get("init_args") or {}
        if model.get("dimension_names"):
            return list(model["dimension_names"])
        if data.get("dimensions"):
            return [d["name"] for d in data["dimensions"]]
        if data.get("dimension_names"):
            return list(data["dimension_names"])
        if self.front_path is not None:
            with self.front_path.open(newline="") as handle:
                header = next(csv.reader(handle))
            return [c[len(LAMBDA_PREFIX) :] for c in header if c.startswith(LAMBDA_PREFIX)]
        return []

    @property
    def checkpoint(self) -> Path | None:
        """`checkpoints/last.ckpt`, else the newest checkpoint."""
        folder = self.directory / "checkpoints"
        if (folder / "last.ckpt").is_file():
            return folder / "last.ckpt"
        found = sorted(folder.glob("*.ckpt"), key=lambda p: p.stat().st_mtime)
        return found[-1] if found else None

    def front(self, reference_point: Sequence[float] | None = None) -> FrontResult:
        """The last sweep's front from its CSV (reference point: see `front_from_table`)."""
        if self.front_path is None:
            raise FileNotFoundError(f"{self.directory} has no pareto/*.csv (no sweep ran)")
        return read_front_csv(self.front_path, reference_point)

    def wandb_front(self, reference_point: Sequence[float] | None = None) -> FrontResult | None:
        """The same front as logged to W&B (a `wandb.Table`), or None without a W&B run."""
        if self.wandb is None or self.front_path is None:
            return None
        columns, rows = self.wandb.table(f"pareto/front_{self.front_path.stem}")
        return front_from_table(columns, rows, reference_point)


def load_run(path: str | Path, label: str | None = None) -> LoggedRun:
    """Read the run in `path`: a Lightning version folder, or a folder with one inside (the
    newest is used)."""
    directory = _version_dir(Path(path))
    config = yaml.safe_load((directory / "config.yaml").read_text()) or {}
    metrics, steps = _logged_metrics(directory / "metrics.csv")
    sweeps = sorted((directory / "pareto").glob("*.csv"), key=lambda p: p.stat().st_mtime)
    front_path = directory / "pareto" / "final.csv"
    front_path = front_path if front_path.is_file() else (sweeps[-1] if sweeps else None)
    run = LoggedRun(directory, config, metrics, steps, front_path)
    run.wandb = _matching_wandb_run(run)
    run.label = label or f"{run.scheme or 'run'} ({directory.parent.parent.name}/{directory.name})"
    return run


def load_policy(run: LoggedRun | str | Path, checkpoint: str | Path | None = None):
    """The run's policy: built from its `config.yaml` (class_path + init_args, as the CLI did)
    with the adapter weights of `checkpoint` (default: `run.checkpoint`), in eval mode."""
    from jsonargparse import ArgumentParser

    from panacea_pl.models import PanaceaPolicy

    run = run if isinstance(run, LoggedRun) else load_run(run)
    checkpoint = Path(checkpoint) if checkpoint is not None else run.checkpoint
    if checkpoint is None:
        raise FileNotFoundError(f"{run.directory} has no checkpoint (checkpoints/*.ckpt)")
    node = run.config["model"]["init_args"]["policy"]
    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--policy", type=PanaceaPolicy)
    instantiate = getattr(parser, "instantiate", None) or parser.instantiate_classes  # 4.49+
    policy = instantiate(parser.parse_object({"policy": node})).policy
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    adapter = {k.removeprefix("policy."): v for k, v in state.items() if k.startswith("policy.")}
    trained = {name for name, p in policy.named_parameters() if p.requires_grad}
    missing = sorted(trained - set(adapter))
    if missing:
        raise KeyError(f"{checkpoint} lacks {len(missing)} adapter tensors, e.g. {missing[:3]}")
    policy.load_state_dict(adapter, strict=False)
    return policy.eval()


def _version_dir(path: Path) -> Path:
    if (path / "config.yaml").is_file():
        return path
    found = [p.parent for p in path.rglob("config.yaml") if (p.parent / "metrics.csv").is_file()]
    if not found:
        raise FileNotFoundError(f"no Lightning run (config.yaml + metrics.csv) in {path}")
    return max(found, key=lambda p: (p / "config.yaml").stat().st_mtime)


def _logged_metrics(path: Path) -> tuple[dict[str, float], int | None]:
    if not path.is_file():
        return {}, None
    last: dict[str, float] = {}
    steps = None
    with path.open(newline="") as handle:
        for row in csv.DictReader(handle):
            if row.get("step"):
                steps = max(steps or 0, int(float(row["step"])))
            for key, value in row.items():
                if key and key.startswith("pareto/") and value not in ("", None):
                    last[key[len("pareto/") :]] = float(value)
    metrics = {k: v for k, v in last.items() if not k.endswith(("_final", "_start"))}
    metrics |= {k[: -len("_final")]: v for k, v in last.items() if k.endswith("_final")}
    return metrics, steps


def _matching_wandb_run(run: LoggedRun) -> OfflineRun | None:
    if run.front_path is None:
        return None
    key = f"pareto/front_{run.front_path.stem}"
    with run.front_path.open(newline="") as handle:
        _, *rows = list(csv.reader(handle))
    expected = np.asarray(rows, dtype=np.float64)
    for folder in reversed(find_offline_runs(run.directory.parent.parent)):
        try:
            candidate = read_offline_run(folder)
            logged = np.asarray(candidate.table(key)[1], dtype=np.float64)
        except (OSError, KeyError, ValueError):
            continue  # an unreadable, unfinished or unrelated run
        if logged.shape == expected.shape and np.allclose(logged, expected, equal_nan=True):
            return candidate
    return None
