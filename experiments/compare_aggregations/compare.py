"""Panacea-LS vs Panacea-Tche vs DPS vs rewarded soups on the stories benchmark (issue #6).

    python experiments/compare_aggregations/compare.py                    # m = 2, 3 and 10
    python experiments/compare_aggregations/compare.py --dims 2 --steps 100   # a quick look

Every method is `experiments/stories/panacea_dpo.yaml` with as few changes as possible: the same
data, β, adapter, optimiser, schedule, seed and steps per model. Panacea trains ONE model with λ
sampled per batch (linear scalarisation, or Tchebycheff with a running ideal point); DPS trains
one model per λ of the evaluation grid at that fixed λ; rewarded soups (RS) one per dimension,
interpolated by λ. All fronts are evaluated by the same `StoriesEvaluator` on the same λ grid
(m = 2: 5 points, m = 3: 6, m = 10: 55; DPS has a model at each), so hypervolume, regret and
the other metrics are comparable. At m = 10 only Panacea runs (DPS would need 55 models).

Writes into --out (default runs/compare_aggregations): each run's folder (CSV/W&B logs, pareto/
CSV + PNG), `results.csv`, `results.md` (the table for the README) and `front_m2.png` (every
m = 2 front beside the optimum).
"""

from __future__ import annotations

import argparse
import gc
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import torch
import yaml
from compare_report import Row, plot_m2, write_table

REPO = Path(__file__).resolve().parents[2]
BASE_CONFIG = REPO / "experiments/stories/panacea_dpo.yaml"
GRID_DIVISIONS = {2: 4, 3: 2, 10: 2}  # evaluation grid H per m: 5, 6 and 55 λ
# stories per prompt and λ (16 prompts): 512 per λ keeps the standard error of each objective
# near 0.0015, below the differences between methods; at m = 10, 128 per λ (55 λ).
SAMPLES_PER_PROMPT = {2: 32, 3: 32, 10: 8}
METHODS = (
    "panacea_ls",
    "panacea_tche",
    "dps",
    "rewarded_soups",
    "panacea_ppo",
    "panacea_online_dpo",
    "panacea_rloo",
    "panacea_rloo_token_kl",
)
# on-policy methods: their own shipped recipe, trained for a number of iterations (epochs)
ON_POLICY = {
    "panacea_ppo": REPO / "experiments/stories/panacea_ppo.yaml",
    "panacea_online_dpo": REPO / "experiments/stories/panacea_online_dpo.yaml",
    "panacea_rloo": REPO / "experiments/stories/panacea_grpo.yaml",
    "panacea_rloo_token_kl": REPO / "experiments/stories/panacea_grpo.yaml",  # kl_in: token
}


EMA_CLASS = "panacea_pl.callbacks.TrainableEMA"


def ema_decay(callbacks: list[dict]) -> float | None:
    """The decay of the `TrainableEMA` among a config's callbacks, or None without one."""
    for callback in callbacks:
        if callback.get("class_path") == EMA_CLASS:
            return float((callback.get("init_args") or {}).get("decay", 0.995))
    return None


def config_for(
    m: int,
    method: str,
    steps: int,
    out: Path,
    samples_per_prompt: int,
    iterations: int = 0,
    cosine: bool = False,
    overrides: Sequence[str] = (),
    ema: float | None = None,
) -> dict:
    """The demo config (an on-policy method: its own recipe) adapted to m dimensions, one
    method, a fixed step (iteration) budget and `out`; `cosine`: an on-policy method's learning
    rate decays to 0 over its optimiser steps (cosine) instead of staying constant;
    `overrides`: `KEY=VALUE` settings of the recipe (`apply_overrides`); `ema`: evaluate an
    exponential moving average of the trained weights with this decay per optimiser step
    (`panacea_pl.callbacks.TrainableEMA`, replacing the recipe's own), or 0: the raw weights."""
    config = yaml.safe_load(ON_POLICY.get(method, BASE_CONFIG).read_text())
    apply_overrides(config, overrides)
    trainer, model = config["trainer"], config["model"]
    name = f"m{m}_{method}"
    if method in ON_POLICY:
        trainer.update(max_epochs=iterations, default_root_dir=str(out))
        trainer.pop("max_steps", None)
    else:
        trainer.update(max_steps=steps, max_epochs=-1, default_root_dir=str(out))
    trainer["logger"] = [
        {
            "class_path": "lightning.pytorch.loggers.CSVLogger",
            "init_args": {"save_dir": str(out), "name": name},
        },
        {
            "class_path": "panacea_pl.loggers.WandbLogger",
            "init_args": {
                "project": "panacea-pl",
                "name": f"stories-{name}",
                "save_dir": str(out),
            },
            "dict_kwargs": {"group": f"compare-aggregations-m{m}"},  # wandb.init's
        },
    ]
    sweep = trainer["callbacks"][0]["init_args"]
    if ema is not None:  # replaces the recipe's average, if it has one; 0: none
        callbacks = [c for c in trainer["callbacks"] if ema_decay([c]) is None]
        if ema > 0:
            average = {"class_path": EMA_CLASS, "init_args": {"decay": ema}}
            callbacks.append(average)
        trainer["callbacks"] = callbacks
    config["num_preferences"] = m  # the components say ${panacea.num_preferences:}
    sweep["evaluator"]["init_args"].update(samples_per_prompt=samples_per_prompt)
    sweep.update(
        divisions=GRID_DIVISIONS[m], every_n_epochs=0, sweep_on_fit_start=method == "panacea_ls"
    )
    init = model["init_args"]
    if method == "panacea_rloo_token_kl":
        init["kl_in"] = "token"  # the KL still to come per token, leave-one-out baseline
    if method in ON_POLICY:
        if cosine:
            init["scheduler"] = {
                "class_path": "torch.optim.lr_scheduler.CosineAnnealingLR",
                "init_args": {"T_max": iterations * optimiser_steps_per_iteration(config)},
            }
        return config
    init["scheduler"]["init_args"]["total_steps"] = steps
    if method == "panacea_tche":
        # DPO losses with soft labels never reach 0: their floor is the labels' entropy, so the
        # ideal point is the best loss seen so far (lowered by a small margin), not 0.
        init["aggregator"] = {
            "class_path": "panacea_pl.objectives.Tchebycheff",
            "init_args": {
                "ideal": "running",
                "num_preferences": "${panacea.num_preferences:}",
                "margin": 0.02,
            },
        }
    if method in ("dps", "rewarded_soups"):
        model["class_path"] = "panacea_pl.baselines.FixedPreferenceDPO"
        init["preference"] = [1.0 / m] * m  # set per member by the runner
        config["baseline"] = {
            "kind": method,
            "output_dir": str(out / f"{name}_members"),
            "resume": True,
            "num_threads": 1,
        }
    return config


def apply_overrides(config: dict, overrides: Sequence[str]) -> dict:
    """`KEY=VALUE` settings (a dotted path into the config, a YAML value) set on `config`, e.g.
    `model.init_args.group_size=4`; an unknown key is an error, not a silent new setting."""
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set {item!r}: expected KEY=VALUE, e.g. model.init_args.lr=0.001")
        *parents, leaf = key.split(".")
        node = config
        for i, part in enumerate(parents):
            if not isinstance(node.get(part), dict):
                where = ".".join(parents[: i + 1])
                raise ValueError(f"--set {item!r}: the config has no section {where!r}")
            node = node[part]
        if leaf not in node:
            raise ValueError(
                f"--set {item!r}: {'.'.join(parents) or 'the config'} has no key {leaf!r} "
                f"(it has: {', '.join(sorted(node))})"
            )
        node[leaf] = _yaml_value(text)
    return config


def _yaml_value(text: str):
    """`text` as YAML, except that a number PyYAML (YAML 1.1) reads as a string, like `5e-4`,
    is a float."""
    value = yaml.safe_load(text)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    return value


def optimiser_steps_per_iteration(config: dict) -> int:
    """Optimiser steps of one on-policy iteration: passes × minibatches of the rollout."""
    init = config["model"]["init_args"]
    rows = config["data"]["init_args"]["batch_size"]
    rows *= init.get("group_size") or init.get("samples_per_prompt") or 1
    epochs = init.get("epochs") or init.get("ppo_epochs") or 1
    return epochs * -(-rows // (init.get("minibatch_size") or rows))


def run_panacea(config: dict, m: int, method: str) -> tuple[list[Row], dict[str, float]]:
    """Train one Panacea module and sweep it; with a `TrainableEMA` callback the sweep is of the
    average and a second row sweeps the raw weights on the same draws (a paired comparison)."""
    from panacea_pl.callbacks import ParetoSweep, TrainableEMA
    from panacea_pl.cli import run_lightning_cli
    from panacea_pl.preference import simplex_grid

    path = _write(config)
    start = time.perf_counter()
    cli = run_lightning_cli(["fit", "--config", str(path)])
    seconds = time.perf_counter() - start
    path.unlink()
    trainer, module = cli.trainer, cli.model
    sweep = next(c for c in trainer.callbacks if isinstance(c, ParetoSweep))
    rows = [
        Row(m, method, dict(sweep.last_metrics), 1, trainer.global_step, seconds, sweep.last_result)
    ]
    ema = next((c for c in trainer.callbacks if isinstance(c, TrainableEMA)), None)
    if ema is not None:
        ema.load_final_raw(module)
        module.eval()
        raw = sweep.evaluator.evaluate(module, simplex_grid(m, sweep.divisions))
        raw.write_csv(Path(trainer.log_dir) / "pareto" / "final_raw_weights.csv")
        label = f"{method}: raw weights"
        rows.append(Row(m, label, raw.metrics(), 1, trainer.global_step, seconds, raw))
    return rows, dict(sweep.first_metrics)


def run_baseline(config: dict, m: int, method: str) -> Row:
    from panacea_pl.baselines.runner import run_baseline as run

    start = time.perf_counter()
    out = run(config, verbose=True)
    seconds = time.perf_counter() - start
    return Row(
        m,
        method,
        dict(out.metrics),
        int(out.compute["members"]),
        int(out.compute["train_steps"]),
        seconds,
        out.result,
    )


def _write(config: dict) -> Path:
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as handle:
        yaml.safe_dump(config, handle)
    return Path(handle.name)


def build_parser() -> argparse.ArgumentParser:
    """The command line (`--set` may be repeated: every setting is kept)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dims", type=int, nargs="+", default=[2, 3, 10], choices=[2, 3, 10])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--steps", type=int, default=400, help="training steps per model")
    parser.add_argument(
        "--iterations", type=int, default=120, help="iterations of the on-policy methods"
    )
    parser.add_argument(
        "--samples-per-prompt", type=int, default=None, help="stories per λ and prompt"
    )
    parser.add_argument(
        "--cosine",
        action="store_true",
        help="PPO and RLOO: decay the learning rate to 0 over the run (cosine)",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        metavar="KEY=VALUE",
        nargs="+",
        action="extend",
        default=[],
        help="change a recipe setting, e.g. model.init_args.group_size=4 (dotted path, YAML "
        "value); repeat it or give several; the table's method name lists them",
    )
    parser.add_argument(
        "--ema",
        type=float,
        default=None,
        metavar="DECAY",
        help="Panacea methods: train as usual, evaluate an exponential moving average of the "
        "trained weights (decay per optimiser step, e.g. 0.995; replaces a recipe's own; 0: "
        "none) and, beside it, the raw weights on the same draws",
    )
    parser.add_argument("--out", type=Path, default=Path("runs/compare_aggregations"))
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.cosine and not set(args.methods) <= {"panacea_ppo", "panacea_rloo"}:
        parser.error("--cosine applies to panacea_ppo and panacea_rloo only")
    if args.ema is not None and not all(x.startswith("panacea") for x in args.methods):
        parser.error("--ema applies to the Panacea methods only (one model each)")
    if args.ema is not None and not 0.0 <= args.ema < 1.0:
        parser.error(f"--ema: a decay in (0, 1), or 0 for no average; got {args.ema}")
    torch.set_num_threads(1)  # stories260K: one thread is fastest

    # at m = 10 only Panacea-LS runs (DPS would need 55 models)
    runs = [(m, x) for m in args.dims for x in (args.methods if m <= 3 else ["panacea_ls"])]
    configs = {}
    for m, method in runs:  # every config built (and every --set checked) before anything trains
        samples = args.samples_per_prompt or SAMPLES_PER_PROMPT[m]
        try:
            configs[m, method] = config_for(
                m,
                method,
                args.steps,
                args.out,
                samples,
                args.iterations,
                args.cosine,
                args.overrides,
                args.ema,
            )
        except ValueError as error:
            parser.error(f"{method}: {error}")
    args.out.mkdir(parents=True, exist_ok=True)

    rows: list[Row] = []
    base: dict[int, dict[str, float]] = {}
    for m, method in runs:
        budget = (
            f"{args.iterations} iterations"
            if method in ON_POLICY
            else f"{args.steps} steps per model"
        )
        print(f"=== m={m} {method}: {budget} ===", flush=True)
        config = configs[m, method]
        decay = ema_decay(config["trainer"].get("callbacks") or [])
        settings = [
            *args.overrides,
            *(["cosine lr"] if args.cosine and method in ON_POLICY else []),
            *([f"ema {decay}"] if decay is not None else []),
        ]
        label = f"{method} [{', '.join(settings)}]" if settings else method
        if method.startswith("panacea"):
            new_rows, first = run_panacea(config, m, label)
            if first:
                base[m] = first
        else:
            new_rows = [run_baseline(config, m, label)]
        rows.extend(new_rows)
        for row in new_rows:
            print(
                f"=== m={m} {row.method}: G {row.metrics.get('mean_gain', 0):.2f}, "
                f"HV ratio {row.metrics.get('hypervolume_ratio', 0):.3f}, "
                f"mean regret {row.metrics.get('mean_regret', 0):.4f}, {row.steps} steps, "
                f"{row.seconds / 60:.1f} min ===",
                flush=True,
            )
        write_table(rows, base, args.out)  # after every run: nothing lost on a crash
        gc.collect()
    table = write_table(rows, base, args.out)
    plot = plot_m2(rows, args.out)
    print(table.read_text())
    print(f"table: {table}\nplot: {plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
