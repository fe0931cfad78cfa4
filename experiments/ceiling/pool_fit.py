"""Under-fitting or not generalising? Offline DPO's tilt on its own training responses vs fresh ones.

    python experiments/ceiling/pool_fit.py --variant dpo_r0_corner_lr0.01 --steps 100 200 400

Every offline-DPO policy of the ceiling study tilts its log-ratio ℓ = log π/π_ref only about half
as far as the optimum's λ·r/β_eff, on the reference draw (fresh π_ref samples the pairs never
saw). This trains the same variant (`variants.py`, the same seed and 800-step schedule as
`ceiling.py`, so the reference-draw numbers repeat its `decompose` rows) and measures the tilt
slope a (within-prompt regression of ℓ on λ·r/β_eff; 1 at the optimum) and the correlation on
both sets of responses: the pool's 256 per prompt that every training pair is made of, and the
reference draw's 512. A slope near 1 on the pool and 0.5 on the draw would mean the loss is fit
and the fit does not carry to new stories (coverage); about 0.5 on both, that the loss itself is
not fit (optimisation, capacity, or the soft labels' pull). One JSON line per step in
`pool_fit.jsonl`.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch
from ceiling import dpo_module, study_trainer
from variants import DEFAULTS, VARIANTS, variant_policy

from panacea_pl.benchmarks.stories.benchmark import StoriesBenchmark
from panacea_pl.benchmarks.stories.reference_draw import ReferenceDraw

HERE = Path(__file__).resolve().parent


def pool_draw(draw: ReferenceDraw, bench: StoriesBenchmark) -> ReferenceDraw:
    """The same log-prob machinery on the pair pool's responses ([P, 256], grouped by prompt)."""
    samples = bench.samples
    rows = np.flatnonzero(samples.for_pairs)
    rows = rows[np.argsort(samples.prompt_index[rows], kind="stable")]
    num_prompts = len(np.unique(samples.prompt_index))
    pool = copy.copy(draw)
    pool.rows = rows.reshape(num_prompts, -1)
    pool.rewards = samples.rewards[pool.rows][..., : bench.num_dimensions]
    pool.base_logps = pool.logps(bench.load_model())
    return pool


class MeasureTilt(pl.Callback):
    """At each of `steps` (optimiser steps): the tilt on the pool and on the reference draw."""

    def __init__(self, name: str, lam, steps, draws: dict, results: Path):
        self.name, self.lam, self.steps = name, np.asarray(lam, dtype=np.float64), set(steps)
        self.draws, self.results = draws, results
        self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step not in self.steps:
            return
        self.steps.discard(step)
        record = {"variant": self.name, "step": step, "lam": self.lam.tolist()}
        with module.policy.preference(torch.tensor(self.lam, dtype=torch.float32)):
            for where, draw in self.draws.items():
                logps = draw.logps(module.policy.model)
                slope, corr = draw.tilt(logps, self.lam)
                ell = logps - draw.base_logps
                spread = float((ell - ell.mean(1, keepdims=True)).std())
                record |= {
                    f"{where}_slope": slope,
                    f"{where}_corr": corr,
                    f"{where}_spread": spread,
                }
        record["seconds"] = time.perf_counter() - self.start
        with open(self.results, "a") as f:
            f.write(json.dumps(record) + "\n")
        print(
            f"{self.name} step {step}: tilt slope pool {record['pool_slope']:.2f} "
            f"(corr {record['pool_corr']:.2f}), reference draw {record['draw_slope']:.2f} "
            f"(corr {record['draw_corr']:.2f})",
            flush=True,
        )
        if not self.steps:
            trainer.should_stop = True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    dpo = sorted(v for v, s in VARIANTS.items() if (DEFAULTS | s)["method"] == "dpo")
    parser.add_argument("--variant", default="dpo_r0_corner_lr0.01", choices=dpo)
    parser.add_argument("--steps", type=int, nargs="+", default=[100, 200, 400])
    parser.add_argument("--schedule-steps", type=int, default=800, help="as ceiling.py's")
    parser.add_argument("--results", type=Path, default=HERE / "pool_fit.jsonl")
    args = parser.parse_args()
    torch.set_num_threads(1)
    settings = DEFAULTS | VARIANTS[args.variant]
    if settings["pair_responses_per_prompt"] != DEFAULTS["pair_responses_per_prompt"]:
        parser.error(f"{args.variant}: its pool is not the default benchmark's")
    bench = StoriesBenchmark(progress=False)
    draw = ReferenceDraw(bench)
    draws = {"pool": pool_draw(draw, bench), "draw": draw}
    pl.seed_everything(0, workers=True)
    module, data = dpo_module(variant_policy(settings), settings, args.schedule_steps, bench)
    callback = MeasureTilt(args.variant, settings["lam"], args.steps, draws, args.results)
    trainer = study_trainer([callback], max_steps=max(args.steps), max_epochs=-1)
    trainer.fit(module, datamodule=data)


if __name__ == "__main__":
    main()
