"""`panacea-pl baseline`: train a baseline's models from one YAML and log its front like Panacea's.

    panacea-pl baseline --config experiments/stories/dps.yaml
    panacea-pl baseline --config experiments/stories/rewarded_soups.yaml --trainer.max_steps=300
    run = panacea_pl.baselines.run_dps("experiments/stories/dps.yaml")       # from Python
    run.metrics["hypervolume"], run.compute["train_steps"], run.plot

The YAML is a LightningCLI config (trainer, model, data, seed_everything; overrides on the
command line as for `panacea-pl fit`) plus a `baseline:` block (`BaselineSettings`). The model
must be a `FixedPreferenceDPO` or a `FixedPreferencePPO` (DPS for RLHF). The runner

1. trains one member per λ — DPS: every λ of the Das–Dennis grid (the `ParetoSweep` callback's
   `divisions` unless `baseline.divisions` says otherwise); rewarded soups: the m corners e_i —
   each from the same YAML, so with the same Trainer settings, data, optimiser, step budget and
   seed (hence the same adapter initialisation), only `model.init_args.preference` differing.
   Members log to a CSV logger in their own folder and skip the sweep callback; their adapters
   are saved with `save_adapter` and listed in `members.json` (`load_members` reads it back).
   With `baseline.resume` a member already trained at the same λ is reused, not retrained.
2. evaluates the collection (`DPSPolicy` / `RewardedSoupsPolicy`) with `Trainer.validate` on the
   YAML's own trainer: the same `ParetoSweep` callback, evaluator and loggers as a Panacea run,
   so the same `pareto/final.csv`, `pareto/final.png` and `pareto/{metric}_final` keys (W&B:
   table, plot and run summary), plus the training compute as `compute/{train_steps,
   train_seconds, members, steps_per_member}`.
3. writes `summary.json` (metrics, compute, members, file paths) into the run folder.
"""

from __future__ import annotations

import gc
import json
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import yaml
from torch.utils.data import DataLoader

from panacea_pl.baselines.baseline_cli import BaselineCLI, BaselineSettings, config_key
from panacea_pl.baselines.collection import (
    MANIFEST_NAME,
    AdapterCollection,
    BaselineFront,
    DPSFront,
    DPSPolicy,
    RewardedSoupsFront,
    RewardedSoupsPolicy,
    read_adapter_state,
)
from panacea_pl.baselines.module import FixedPreference
from panacea_pl.callbacks import ParetoSweep
from panacea_pl.evaluation.result import FrontResult
from panacea_pl.layers import save_adapter
from panacea_pl.layers.io import CONFIG_NAME
from panacea_pl.preference import simplex_grid, validate_preference

KINDS = ("dps", "rewarded_soups")


@dataclass
class Member:
    """One trained member: its λ, adapter folder and training compute."""

    preference: list[float]
    adapter: str
    steps: int
    seconds: float
    reused: bool = False


@dataclass
class BaselineRun:
    """What `run_baseline` returns.

    Attributes:
        kind: "dps" or "rewarded_soups".
        members: the trained members, in training order.
        metrics: the sweep's metrics (hypervolume, inner_product, sparsity, spacing and the
            evaluator's summary, e.g. hypervolume_ratio and mean_regret).
        compute: training compute of all members (members, train_steps, steps_per_member,
            train_seconds) and the evaluation's wall time (eval_seconds).
        result: the front, per λ.
        log_dir: the run folder (config.yaml, pareto/, the loggers' files, summary.json).
        csv, plot, summary: paths of the front table, its plot and summary.json.
        front: the evaluated module (its `policy` is the collection).
    """

    kind: str
    members: list[Member]
    metrics: dict[str, float]
    compute: dict[str, float]
    result: FrontResult
    log_dir: Path
    csv: Path
    plot: Path
    summary: Path
    front: BaselineFront


def run_baseline(
    config: str | Path | dict,
    overrides: list[str] | tuple[str, ...] = (),
    kind: str | None = None,
    verbose: bool = True,
) -> BaselineRun:
    """Train every member of a baseline and log the collection's front (see the module docs).

    Args:
        config: a baseline YAML (path), or the same as a dict.
        overrides: command-line style overrides, e.g. ["--trainer.max_steps=300"].
        kind: "dps" or "rewarded_soups", overriding `baseline.kind`.
        verbose: print progress and the result.
    """
    if kind is not None and kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    temporary = _write_temp_config(config) if isinstance(config, dict) else None
    argv = ["--config", str(temporary or config), *overrides]
    if kind is not None:
        argv.append(f"--baseline.kind={kind}")
    try:
        return _run(argv, verbose)
    finally:
        if temporary is not None:
            temporary.unlink(missing_ok=True)


def run_dps(config: str | Path | dict, overrides=(), verbose: bool = True) -> BaselineRun:
    """DPS from one YAML: one model per λ of the grid; see `run_baseline`."""
    return run_baseline(config, overrides, kind="dps", verbose=verbose)


def run_rewarded_soups(
    config: str | Path | dict, overrides=(), verbose: bool = True
) -> BaselineRun:
    """Rewarded soups from one YAML: one model per dimension, interpolated; see `run_baseline`."""
    return run_baseline(config, overrides, kind="rewarded_soups", verbose=verbose)


def _run(argv: list[str], verbose: bool) -> BaselineRun:
    say = print if verbose else (lambda *a, **k: None)
    cli = BaselineCLI(argv)  # the front's trainer, data and base model; settings; the seed
    settings: BaselineSettings = cli.config_init.baseline
    if settings.num_threads is not None:
        torch.set_num_threads(settings.num_threads)
    module = cli.model
    if not isinstance(module, FixedPreference):
        raise TypeError(
            "a baseline config's model must be panacea_pl.baselines.FixedPreferenceDPO or "
            "FixedPreferencePPO (or a subclass): it is trained at one λ per member; got "
            f"{type(module).__name__}"
        )
    sweep = next((c for c in cli.trainer.callbacks if isinstance(c, ParetoSweep)), None)
    if sweep is None:
        raise ValueError(
            "a baseline config needs a panacea_pl.callbacks.ParetoSweep callback under "
            "trainer.callbacks: its evaluator and grid evaluate the collection"
        )
    m = module.num_preferences
    if settings.kind == "rewarded_soups":
        preferences = torch.eye(m)
    elif settings.preferences:
        preferences = validate_preference(settings.preferences, m)
    else:
        preferences = simplex_grid(m, settings.divisions or sweep.divisions)
    seed = cli.config.seed_everything
    training_key = config_key(cli)
    root = Path(cli.trainer.default_root_dir)
    output = Path(settings.output_dir or root / f"{settings.kind}_members")

    members = []
    for k, lam in enumerate(preferences.tolist()):
        lam = [round(x, 10) for x in lam]
        folder = output / _tag(lam)
        say(f"[{settings.kind} {k + 1}/{len(preferences)}] λ={_fmt(lam)} → {folder}")
        member = _member(argv, lam, seed, folder, output, settings.resume, training_key)
        say(
            f"      {'reused: ' if member.reused else ''}{member.steps} steps, "
            f"{member.seconds:.1f} s"
        )
        members.append(member)
    _write_json(
        output / MANIFEST_NAME,
        {"kind": settings.kind, "members": [asdict(x) for x in members]},
    )

    states = [read_adapter_state(output / x.adapter) for x in members]
    steps = [x.steps for x in members]
    compute = {
        "members": len(members),
        "train_steps": sum(steps),
        "steps_per_member": max(steps),
        "train_seconds": sum(x.seconds for x in members),
    }
    policy: AdapterCollection
    if settings.kind == "dps":
        policy = DPSPolicy(module.policy, [x.preference for x in members], states)
        front_class = DPSFront
    else:
        policy = RewardedSoupsPolicy(module.policy, states)
        front_class = RewardedSoupsFront
    front = front_class(
        policy,
        loss=getattr(module, "loss", None),  # PPO members have no DPO loss
        dimension_names=module.hparams.get("dimension_names"),
        training_compute=compute,
    )
    say(f"[front] {type(sweep.evaluator).__name__} over the collection ({len(members)} adapters)")
    start = time.perf_counter()
    cli.trainer.validate(front, datamodule=cli.datamodule, verbose=False)
    if sweep.last_result is None:  # no validation split (PPO's prompts): one placeholder batch
        placeholder = DataLoader([{}], batch_size=None)
        cli.trainer.validate(front, dataloaders=placeholder, verbose=False)
    compute["eval_seconds"] = time.perf_counter() - start

    log_dir = Path(cli.trainer.log_dir or root)
    plot = sweep.last_plot
    csv = plot.with_suffix(".csv")
    summary_path = log_dir / "summary.json"
    _write_json(
        summary_path,
        {
            "kind": settings.kind,
            "metrics": sweep.last_metrics,
            "compute": compute,
            "members": [asdict(x) for x in members],
            "members_dir": str(output),
            "csv": str(csv),
            "plot": str(plot),
        },
    )
    run = BaselineRun(
        kind=settings.kind,
        members=members,
        metrics=dict(sweep.last_metrics),
        compute=compute,
        result=sweep.last_result,
        log_dir=log_dir,
        csv=csv,
        plot=plot,
        summary=summary_path,
        front=front,
    )
    _report(run, say)
    return run


def _member(
    argv: list[str],
    lam: list[float],
    seed,
    folder: Path,
    output: Path,
    resume: bool,
    config_key: str,
) -> Member:
    """Train (or reuse) the member at λ; save its adapter and its compute record."""
    record = folder / "member.json"
    if resume and record.is_file() and (folder / "adapter" / CONFIG_NAME).is_file():
        saved = json.loads(record.read_text())
        same_lambda = torch.allclose(
            torch.tensor(saved["preference"], dtype=torch.float64),
            torch.tensor(lam, dtype=torch.float64),
            atol=1e-6,
        )
        if same_lambda and saved.get("config_key") == config_key:
            fields = ("preference", "adapter", "steps", "seconds")
            return Member(**{k: saved[k] for k in fields}, reused=True)
    member_argv = [*argv, f"--model.init_args.preference={json.dumps(lam)}"]
    if seed is not False:
        member_argv.append(f"--seed_everything={seed}")
    cli = BaselineCLI(member_argv, member_dir=folder)
    start = time.perf_counter()
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    seconds = time.perf_counter() - start
    save_adapter(cli.model.policy.adapter, folder / "adapter")
    member = Member(
        preference=lam,
        adapter=(folder / "adapter").relative_to(output).as_posix(),
        steps=int(cli.trainer.global_step),
        seconds=seconds,
    )
    saved = {k: v for k, v in asdict(member).items() if k != "reused"}
    _write_json(record, saved | {"config_key": config_key})
    del cli
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return member


def _report(run: BaselineRun, say) -> None:
    metrics = run.metrics
    shown = ["hypervolume", "hypervolume_ratio", "mean_regret", "inner_product"]
    shown += ["sparsity", "spacing"]
    say("      " + " · ".join(f"{k} {metrics[k]:.4g}" for k in shown if k in metrics))
    c = run.compute
    say(
        f"      training compute: {c['members']} models, {c['train_steps']} steps "
        f"({c['steps_per_member']} per model), {c['train_seconds']:.0f} s; "
        f"evaluation {c['eval_seconds']:.0f} s"
    )
    say(f"      plot: {run.plot}\n      table: {run.csv}\n      summary: {run.summary}")


def _tag(lam: list[float]) -> str:
    return "lambda-" + "-".join(f"{x:.4f}".rstrip("0").rstrip(".") for x in lam)


def _fmt(lam: list[float]) -> str:
    return "(" + ", ".join(f"{x:.3g}" for x in lam) + ")"


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=float))


def _write_temp_config(config: dict) -> Path:
    with tempfile.NamedTemporaryFile(
        "w", suffix=".yaml", prefix="panacea-baseline-", delete=False
    ) as handle:
        yaml.safe_dump(config, handle)
    return Path(handle.name)


def main(argv: list[str] | None = None) -> int:
    """`panacea-pl baseline --config X.yaml [--section.key=value …]` (`--help`: every option)."""
    argv = list(argv or [])
    if not argv:
        print("usage: panacea-pl baseline --config CONFIG.yaml [--section.key=value ...]")
        print(__doc__)
        return 2
    _run(argv, verbose=True)
    return 0
