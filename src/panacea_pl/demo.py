"""`panacea-pl demo` (= `make demo`): Panacea on the stories benchmark, ending in a Pareto front.

Builds (or reuses) the benchmark — stories260K converted to a Hugging Face model, stories sampled
from it, labelled happy/sad pairs and the optimal front — then trains Panacea with critic-free RL
(RLOO, one λ per prompt) from `experiments/stories/panacea_grpo.yaml` for 250 iterations (1,000
optimiser steps) as two independent runs side by side (seeds 0 and 1, one process on each of two
cores), averages them into one adapter (`panacea-pl average`), sweeps λ over the simplex with it
(`panacea-pl validate`), and prints the front beside the optimum with G (the fraction of the
achievable gain, per λ and mean ± SE), the hypervolume ratio and the mean regret. The average
of two runs captures more of the gain than either run (README: G 0.51 against 0.45 and 0.46);
`--runs 1` trains one run in this process. `--config experiments/stories/panacea_dpo.yaml` runs
the offline DPO recipe (400 steps, the config's own length).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch
import yaml
from lightning.pytorch.utilities import rank_zero_only

from panacea_pl.benchmarks.stories.benchmark import StoriesBenchmark, default_data_dir
from panacea_pl.callbacks import ParetoSweep
from panacea_pl.demo_average import effective_value, train_side_by_side
from panacea_pl.layers.average import save_average
from panacea_pl.lightning_cli import run_lightning_cli

DEFAULT_CONFIG = Path("experiments/stories/panacea_grpo.yaml")
DEFAULT_STEPS = 1000  # optimiser steps of DEFAULT_CONFIG: 250 RLOO iterations of 4 steps


def _find_config(path: Path) -> Path:
    for candidate in (path, Path(__file__).resolve().parents[2] / path):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"demo config {path} not found; run from the repository root")


def _schedule_length(config: Path, steps: int) -> list[str]:
    """Make a scheduler's `total_steps` (OneCycleLR) the step budget: it refuses to step past it."""
    model = yaml.safe_load(config.read_text()).get("model") or {}
    scheduler = (model.get("init_args") or {}).get("scheduler") or {}
    if "total_steps" in (scheduler.get("init_args") or {}):
        return [f"--model.init_args.scheduler.init_args.total_steps={steps}"]
    return []


def _benchmark_settings(configs: list[Path]) -> dict:
    """The `benchmark` settings (`StoriesBenchmark` arguments) of the data or, where the data
    has none (the prompts of on-policy recipes), of the Pareto sweep's evaluator; later configs
    winning."""
    settings: dict = {}
    for path in configs:
        config = yaml.safe_load(path.read_text()) or {}
        data = (config.get("data") or {}).get("init_args") or {}
        callbacks = (config.get("trainer") or {}).get("callbacks") or []
        evaluators = [
            ((c.get("init_args") or {}).get("evaluator") or {}).get("init_args") or {}
            for c in callbacks
            if isinstance(c, dict)
        ]
        for found in (*evaluators, data):
            settings.update(found.get("benchmark") or {})
    return settings


def several_devices(devices) -> bool:
    """Whether a `trainer.devices` value starts more than one process (Lightning's forms: an
    int, "-1" for all, a list or "0,1" of device ids, "auto" = one on the CPU)."""
    if isinstance(devices, list | tuple):
        return len(devices) > 1
    text = str(devices).strip()
    if "," in text:
        return len([d for d in text.split(",") if d.strip()]) > 1
    return text == "-1" or (text.isdigit() and int(text) > 1)


def training_plan(
    configs: list[Path] | None, max_steps: int | None
) -> tuple[list[Path], int | None]:
    """The configs and step budget a demo runs: the default config for `DEFAULT_STEPS`
    optimiser steps; a config given with `--config` for `max_steps`, else for its own length
    (None: the config's trainer settings stand)."""
    if not configs:
        return [_find_config(DEFAULT_CONFIG)], DEFAULT_STEPS if max_steps is None else max_steps
    return [_find_config(path) for path in configs], max_steps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="panacea-pl demo", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--config",
        type=Path,
        action="append",
        help=f"training config (default {DEFAULT_CONFIG}); repeat to layer configs over it",
    )
    parser.add_argument(
        "--max-steps",
        type=int,
        default=None,
        help=f"optimiser steps (default: {DEFAULT_STEPS} with the default config, 250 RLOO "
        "iterations; with --config, the config's own length)",
    )
    parser.add_argument("--data-dir", default=None, help="folder with tinyllamas-stories260k/")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads; 1 is fastest for a 260K model"
    )
    parser.add_argument(
        "--runs",
        type=int,
        default=2,
        help="independent runs of the recipe (seeds s, s+1, …; s is the config's "
        "seed_everything), trained side by side, one process each, and averaged into one "
        "adapter (`panacea-pl average`) that is swept; 1: one run in this process, swept as "
        "trained (use 1 with a multi-process config)",
    )
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error(f"--runs must be >= 1, got {args.runs}")
    if args.data_dir:
        os.environ["PANACEA_DATA_DIR"] = args.data_dir
    torch.set_num_threads(args.threads)
    configs, max_steps = training_plan(args.config, args.max_steps)
    config = configs[0]
    devices = effective_value(configs, "trainer", "devices")
    if args.runs > 1 and several_devices(devices):
        parser.error(
            f"--runs {args.runs} trains one process per run, and the configs ask for "
            f"trainer.devices: {devices} (one process per device); add --runs 1"
        )
    start = time.perf_counter()

    # under DDP, Lightning starts the other ranks by running this command again: they train,
    # and only rank zero prints (Lightning reads the rank its launcher set in the environment)
    say = rank_zero_only(print)
    say(f"[1/3] stories benchmark (data: {Path(args.data_dir or default_data_dir()).resolve()})")
    bench = StoriesBenchmark(num_dimensions=2, **_benchmark_settings(configs)).build()
    say(f"      ready in {time.perf_counter() - start:.0f} s; pairs: {bench.pairs_path}")

    length = "its own length" if max_steps is None else f"{max_steps} optimiser steps"
    budget = []
    if max_steps is not None:
        budget = [f"--trainer.max_steps={max_steps}", "--trainer.max_epochs=-1"]
        budget += _schedule_length(config, max_steps)
    config_args = [arg for path in configs for arg in ("--config", str(path))]
    if args.runs == 1:
        say(f"[2/3] training Panacea for {length} ({config})")
        cli = run_lightning_cli(["fit", *config_args, *budget])
    else:
        seed = int(effective_value(configs, "seed_everything") or 0)
        seeds = list(range(seed, seed + args.runs))
        root = Path(effective_value(configs, "trainer", "default_root_dir") or "runs")
        root = root / "demo_runs" / time.strftime("%Y%m%d-%H%M%S")
        say(
            f"[2/3] training Panacea for {length} ({config}): {args.runs} runs side by side, "
            f"seeds {', '.join(map(str, seeds))}, one process each, in {root}"
        )
        try:
            folders = train_side_by_side(configs, budget, seeds, root, args.threads)
        except RuntimeError as err:
            print(f"panacea-pl demo: error: {err}", file=sys.stderr)
            return 1
        members = [folder / "checkpoints" / "last.ckpt" for folder in folders]
        average = save_average(members, root / "average")
        say(f"      averaged the {args.runs} runs into {average} (panacea-pl average)")
        fragment = root / "average.yaml"
        policy = {"init_args": {"adapter": None, "adapter_path": str(average)}}
        fragment.write_text(yaml.safe_dump({"model": {"init_args": {"policy": policy}}}))
        cli = run_lightning_cli(["validate", *config_args, "--config", str(fragment)])
    log_dir = cli.trainer.log_dir  # a broadcast under DDP: every rank asks for it
    if not cli.trainer.is_global_zero:
        return 0
    sweep = next(c for c in cli.trainer.callbacks if isinstance(c, ParetoSweep))
    _report(sweep, time.perf_counter() - start)
    kept = "checkpoints/, " if args.runs == 1 else ""
    print(f"      run folder: {log_dir} (config.yaml, metrics.csv, {kept}pareto/)")
    return 0


def _report(sweep: ParetoSweep, seconds: float) -> None:
    """Print the final front beside the optimum, G per λ and its mean, and the HV ratios."""
    result, metrics = sweep.last_result, sweep.last_metrics
    names = result.objective_names
    columns = result.columns
    print("[3/3] the front (one model, λ set at inference; common random numbers):")
    header = f"      {'λ_' + names[0]:>9} " + " ".join(f"{n:>8}" for n in names)
    print(
        header + f" {'opt ' + names[0]:>10} {'opt ' + names[1]:>9} {'KL':>6} {'regret':>7}"
        f" {'G ± se':>13}"
    )
    for g in range(len(result.preferences)):
        row = result.objectives[g]
        opt = result.optimum[g]
        print(
            f"      {result.preferences[g, 0]:9.2f} "
            + " ".join(f"{v:8.4f}" for v in row)
            + f" {opt[0]:10.4f} {opt[1]:9.4f} {columns['kl'][g]:6.3f}"
            f" {columns['regret'][g]:7.4f} {columns['gain'][g]:6.2f} ± {columns['gain_se'][g]:4.2f}"
        )
    if result.base is not None:
        base = " ".join(f"{v:8.4f}" for v in result.base)
        print(f"      {'base':>9} {base}   (the base model: one point, every λ)")
    print(
        f"      G, the fraction of the achievable gain (0 = base model, 1 = optimum): "
        f"{metrics['mean_gain']:.3f} ± {metrics['mean_gain_se']:.3f} (mean over the grid ± SE)"
    )
    rho = [metrics.get(f"rank_correlation/{n}") for n in names]
    if all(r is not None for r in rho):
        print(
            "      front ordered like λ (Spearman ρ of λ_i and objective i; 1 = monotone): "
            + ", ".join(f"{n} {r:.2f}" for n, r in zip(names, rho, strict=True))
        )
    # the base model ignores λ: its front is the one point the sweep sampled beside the policy's
    names_before = ("hypervolume_ratio", "mean_regret")
    before = {k: metrics[f"base_{k}"] for k in names_before if f"base_{k}" in metrics}
    before = before or sweep.first_metrics  # an evaluator without a base point: a start sweep
    if before:
        print(
            f"      hypervolume ratio to the optimal front: {before['hypervolume_ratio']:.3f} "
            f"(base model) -> {metrics['hypervolume_ratio']:.3f} (Panacea)"
        )
        print(
            f"      mean regret: {before['mean_regret']:.4f} -> {metrics['mean_regret']:.4f}  "
            f"(0 = optimal; estimation error included)"
        )
    else:
        print(
            f"      hypervolume ratio {metrics['hypervolume_ratio']:.3f}, "
            f"mean regret {metrics['mean_regret']:.4f}"
        )
    print(f"      plot: {sweep.last_plot}")
    print(f"      table: {sweep.last_plot.with_suffix('.csv')}")
    print(f"      total time {seconds / 60:.1f} min")
