"""Reach the known optimum (issue 15): train a shipped stories recipe and measure its front's
fraction of the achievable gain G at several points of one run, on common random numbers.

    python experiments/optimum/optimum.py --name odpo_k4 \
        --config experiments/stories/panacea_online_dpo.yaml --at 20 40 80
    python experiments/optimum/optimum.py --name odpo_k8 \
        --config experiments/stories/panacea_online_dpo.yaml --at 40 \
        -- --model.init_args.responses_per_prompt=8            # anything after -- is the CLI's

A run is exactly `panacea-pl fit --config <recipe> <overrides>` (the recipe's own sweep
callback and loggers replaced by this script's evaluation), so what is measured is what the
YAML ships. At each of `--at` (epochs = iterations for the on-policy trainers, or optimiser
steps with `--unit step` for offline DPO) the front is evaluated two ways and one JSON line is
appended to `--results`:

- **sampled** (`StoriesBenchmark.evaluate`, seed 0 for every λ and every run, the base model on
  the same draws): per-λ and mean G with paired standard errors, KL, hypervolume ratio, and the
  Spearman rank correlations of λ_happy with the happy and sad scores (front monotone in λ);
- **on the reference draw** (`ReferenceDraw`, importance sampling on the optimum's own samples,
  ±0.02–0.04 per λ): G_is per λ and its mean, the tilt slope and correlation.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch

from panacea_pl.benchmarks.stories.benchmark import StoriesBenchmark
from panacea_pl.benchmarks.stories.reference_draw import ReferenceDraw
from panacea_pl.layers import PanaceaAdapter
from panacea_pl.lightning_cli import run_lightning_cli
from panacea_pl.pareto.front import rank_correlations
from panacea_pl.preference import simplex_grid

HERE = Path(__file__).resolve().parent


class EvaluateFront(pl.Callback):
    """At the given epochs (or steps), evaluate the front and append one JSON line."""

    def __init__(self, args, bench: StoriesBenchmark, draw: ReferenceDraw | None):
        self.args, self.bench, self.draw = args, bench, draw
        self.todo = set(args.at)
        self.start = time.perf_counter()
        self.eval_seconds = 0.0
        self.grid = simplex_grid(bench.num_dimensions, args.divisions)

    def _count(self, trainer) -> int:
        return trainer.global_step if self.args.unit == "step" else trainer.current_epoch + 1

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if self.args.unit == "step":
            self._maybe(trainer, module)

    def on_train_epoch_end(self, trainer, module) -> None:
        if self.args.unit == "epoch":
            self._maybe(trainer, module)

    def _maybe(self, trainer, module) -> None:
        count = self._count(trainer)
        if count not in self.todo:
            return
        self.todo.discard(count)
        began = time.perf_counter()
        record = self.measure(module.policy) | {"at": count, "unit": self.args.unit}
        record["eval_seconds"] = time.perf_counter() - began
        self.eval_seconds += record["eval_seconds"]
        record["train_seconds"] = time.perf_counter() - self.start - self.eval_seconds
        record |= {"global_step": trainer.global_step, "name": self.args.name}
        record |= {"config": self.args.config, "overrides": self.args.overrides}
        record |= {"utc": time.strftime("%Y-%m-%dT%H:%M:%SZ"), "load1": os.getloadavg()[0]}
        with open(self.args.results, "a") as f:
            f.write(json.dumps(record) + "\n")
        print(
            f"{self.args.name} @ {count} {self.args.unit}s: G = {record['G']:.3f} ± "
            f"{record['G_se']:.3f} (reference draw {record.get('G_is', float('nan')):.3f}), "
            f"KL {np.mean(record['kl']):.3f}, HV ratio {record['hv_ratio']:.3f}, ρ "
            f"{record['rho_happy']:.2f}/{record['rho_sad']:.2f}; train {record['train_seconds']:.0f} s",
            flush=True,
        )
        if not self.todo:
            trainer.should_stop = True

    @torch.no_grad()
    def measure(self, policy) -> dict:
        model = policy.model
        was = model.training
        model.eval()
        ev = self.bench.evaluate(
            model,
            preferences=self.grid,
            adapter=PanaceaAdapter.of(model),
            samples_per_prompt=self.args.samples_per_prompt,
            seed=0,
            progress=False,
        )
        rho = rank_correlations(ev.preferences, ev.objectives)
        out = {
            "lams": ev.preferences.tolist(),
            "G": ev.mean_gain,
            "G_se": ev.mean_gain_se,
            "gain": ev.gain.tolist(),
            "gain_se": ev.gain_se.tolist(),
            "kl": ev.kl.tolist(),
            "objectives": ev.objectives.tolist(),
            "regret": float(ev.regret.mean()),
            "hv_ratio": ev.hypervolume_ratio,
            "rho_happy": float(rho[0]),
            "rho_sad": -float(rho[1]),  # ρ(λ_happy, sad) = −ρ(λ_sad, sad) for m = 2
            "spp": self.args.samples_per_prompt,
        }
        if self.draw is not None:
            per_lam = []
            for lam in ev.preferences[:: self.args.draw_every]:
                with policy.preference(torch.tensor(lam, dtype=torch.float32)):
                    logps = self.draw.logps(model)
                per_lam.append(self.draw.gain(logps, lam))
            out["G_is_lams"] = ev.preferences[:: self.args.draw_every].tolist()
            out["G_is_per_lam"] = [r["G_is"] for r in per_lam]
            out["G_is"] = float(np.mean(out["G_is_per_lam"]))
            out["G_is_se"] = float(np.sqrt(np.sum([r["G_is_se"] ** 2 for r in per_lam]))) / len(
                per_lam
            )
            out["ess_is_min"] = float(min(r["ess_is_min"] for r in per_lam))
            out["tilt_slope"] = [r["tilt_slope"] for r in per_lam]
            out["tilt_corr"] = [r["tilt_corr"] for r in per_lam]
        model.train(was)
        return out


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    overrides = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--name", required=True)
    parser.add_argument("--config", required=True, help="a shipped stories recipe (YAML)")
    parser.add_argument("--at", type=int, nargs="+", required=True, help="evaluate here")
    parser.add_argument("--unit", choices=["epoch", "step"], default="epoch")
    parser.add_argument("--samples-per-prompt", type=int, default=16, help="per λ (×16 prompts)")
    parser.add_argument("--divisions", type=int, default=10, help="λ grid: 11 points for m = 2")
    parser.add_argument("--no-reference-draw", action="store_true")
    parser.add_argument(
        "--draw-every", type=int, default=5, help="G on the reference draw at every k-th λ"
    )
    parser.add_argument("--results", type=Path, default=HERE / "results.jsonl")
    parser.add_argument("--root", type=Path, default=Path("runs/optimum"))
    args = parser.parse_args(argv)
    args.overrides = overrides
    torch.set_num_threads(1)
    bench = StoriesBenchmark(progress=False)
    draw = None if args.no_reference_draw else ReferenceDraw(bench)
    limit = "max_steps" if args.unit == "step" else "max_epochs"
    cli = run_lightning_cli(
        ["--config", args.config, *overrides]
        + [f"--trainer.{limit}={max(args.at)}", "--trainer.callbacks=[]", "--trainer.logger=false"]
        + [
            f"--trainer.default_root_dir={args.root / args.name}",
            "--trainer.enable_progress_bar=false",
        ],
        run=False,
    )
    cli.trainer.callbacks.append(EvaluateFront(args, bench, draw))
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)


if __name__ == "__main__":
    main()
