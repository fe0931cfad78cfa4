"""Ceiling study (issue 15, deliverable 3): learning curves of the fraction of the achievable gain
G(λ) = 1 − regret(π, λ) / regret(π_ref, λ) for single-λ training on the stories benchmark.

    python experiments/ceiling/ceiling.py --variants dpo_r0_corner dpo_r0_centre
    python experiments/ceiling/ceiling.py --steps 30 60 120 --variants ppo_r0_corner  # iterations
    python experiments/ceiling/ceiling.py --mismatch          # LS-vs-sum-of-DPO analysis only
    python experiments/ceiling/ceiling.py --list

Each finished measurement is one JSON line in `--results`; a rerun skips what is there (a
variant with missing step counts is retrained from scratch up to the last missing one). A PPO
variant's steps are PPO iterations (each 16 prompts × 8 responses, 8 optimiser steps). G's
standard error propagates the policy's, the base model's and the optimum's value errors as
independent (delta method on G = (V − V_0) / (V* − V_0)).
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch
from analysis import context, decompose, load_logratios, mismatch, shared_off_tilt
from variants import (
    BETA,
    DEFAULTS,
    VARIANTS,
    FullFineTuneDPO,
    FullFineTunePPO,
    ppo_module,
    rloo_module,
    variant_policy,
)

from panacea_pl.baselines import FixedPreferenceDPO, FixedPreferenceGRPO, FixedPreferencePPO
from panacea_pl.benchmarks.stories import StoriesDataModule, StoriesPolicy
from panacea_pl.benchmarks.stories.benchmark import StoriesBenchmark
from panacea_pl.benchmarks.stories.evaluate import Evaluation
from panacea_pl.benchmarks.stories.reference_draw import ReferenceDraw
from panacea_pl.layers import PanaceaAdapter
from panacea_pl.objectives import LinearScalarization, MultiObjectiveDPOLoss

HERE = Path(__file__).resolve().parent

# ---- results file ------------------------------------------------------------------------------


def read_results(path: Path) -> list[dict]:
    """Every JSON line of the results file (none if it does not exist)."""
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def append_result(path: Path, record: dict) -> None:
    """Append one measurement and flush it to disk."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


# ---- evaluation --------------------------------------------------------------------------------


def evaluate_at(bench: StoriesBenchmark, model, lam: Sequence[float], spp: int, **kw) -> Evaluation:
    """The benchmark's evaluation at one λ with `spp` samples per prompt (seed 0: common noise)."""
    return bench.evaluate(model, preferences=np.array([lam]), samples_per_prompt=spp, seed=0, **kw)


def base_record(bench: StoriesBenchmark, lam: Sequence[float], spp: int) -> dict:
    """The base model's value and regret at λ (no adapter, KL 0)."""
    start = time.perf_counter()
    ev = evaluate_at(bench, bench.load_model(), lam, spp)
    front = bench.optimal_front(np.array([lam]))
    return {
        "kind": "base",
        "lam": list(lam),
        "spp": spp,
        "value": float(ev.value[0]),
        "value_se": float(ev.value_se[0]),
        "regret": float(ev.regret[0]),
        "regret_se": float(ev.regret_se[0]),
        "objectives": ev.objectives[0].tolist(),
        "opt_value": float(front.value[0]),
        "opt_value_se": float(front.value_se[0]),
        "opt_kl": float(front.kl[0]),
        "opt_objectives": front.objectives[0].tolist(),
        "eval_seconds": time.perf_counter() - start,
    } | context()


def gain(ev: Evaluation, base: dict) -> tuple[float, float]:
    """G and its standard error (policy, base and optimum values as independent estimates)."""
    v, v_se = float(ev.value[0]), float(ev.value_se[0])
    v0, v0_se = base["value"], base["value_se"]
    vs, vs_se = base["opt_value"], base["opt_value_se"]
    r0 = vs - v0
    g = (v - v0) / r0
    r = vs - v
    se = math.sqrt((v_se / r0) ** 2 + (r * v0_se / r0**2) ** 2 + (g * vs_se / r0) ** 2)
    return g, se


class EvaluateAt(pl.Callback):
    """Evaluate G at the given global steps and append one JSON line per step."""

    def __init__(self, name: str, settings: dict, steps: Sequence[int], base: dict, args, bench):
        self.name, self.settings, self.steps = name, settings, set(steps)
        self.base, self.args, self.bench = base, args, bench
        self.train_start = time.perf_counter()
        self.eval_seconds = 0.0

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if isinstance(module, FixedPreferencePPO):
            step = int(module.iterations)
        elif isinstance(module, FixedPreferenceGRPO):
            step = trainer.current_epoch + 1  # one epoch of the 16 prompts is one iteration
        else:
            step = trainer.global_step
        if step not in self.steps:
            return
        self.steps.discard(step)
        start = time.perf_counter()
        policy = module.policy
        lam = self.settings["lam"]
        if isinstance(module, FullFineTuneDPO | FullFineTunePPO):
            ev = evaluate_at(
                self.bench,
                policy.model,
                lam,
                self.args.samples_per_prompt,
                set_preference=policy.set_preference,
                reference=module.reference_model,
            )
        else:
            ev = evaluate_at(
                self.bench,
                policy.model,
                lam,
                self.args.samples_per_prompt,
                adapter=PanaceaAdapter.of(policy.model),
            )
        draw = self.args.reference_draw
        with policy.preference(torch.tensor(lam)):
            logps = draw.logps(policy.model)
        is_est = draw.gain(logps, lam)
        where = self.args.results.parent / "logratios"
        where.mkdir(exist_ok=True)
        np.save(where / f"{self.name}_step{step}.npy", (logps - draw.base_logps).astype(np.float32))
        g, g_se = gain(ev, self.base)
        elapsed = time.perf_counter() - start
        self.eval_seconds += elapsed
        record = {
            "kind": "train",
            "variant": self.name,
            "method": self.settings["method"],
            "settings": self.settings,
            "lam": list(lam),
            "step": step,
            "spp": self.args.samples_per_prompt,
            "G": g,
            "G_se": g_se,
            "regret": float(ev.regret[0]),
            "regret_se": float(ev.regret_se[0]),
            "value": float(ev.value[0]),
            "value_se": float(ev.value_se[0]),
            "kl": float(ev.kl[0]),
            "kl_se": float(ev.kl_se[0]),
            "opt_kl": self.base["opt_kl"],
            "objectives": ev.objectives[0].tolist(),
            "base_regret": self.base["regret"],
            **is_est,
            "train_seconds": time.perf_counter() - self.train_start - self.eval_seconds,
            "eval_seconds": elapsed,
        } | context()
        append_result(self.args.results, record)
        print(
            f"{self.name} step {step}: G = {g:.3f} ± {g_se:.3f}, KL {ev.kl[0]:.3f}; on the "
            f"reference draw G = {is_est['G_is']:.3f} ± {is_est['G_is_se']:.3f}, "
            f"ESS {is_est['ess_is_min']:.0f}; {elapsed:.0f} s",
            flush=True,
        )
        if not self.steps:
            trainer.should_stop = True


# ---- one training run --------------------------------------------------------------------------


def run_variant(name: str, steps: Sequence[int], base: dict, args, bench) -> None:
    """Train one variant from scratch up to max(steps), evaluating at each of `steps`."""
    s = DEFAULTS | VARIANTS[name]
    total = args.schedule_steps  # one schedule for the whole curve, whichever steps are evaluated
    pl.seed_everything(s["seed"], workers=True)
    policy = variant_policy(s)
    if s["method"] in ("ppo", "rloo"):
        make = ppo_module if s["method"] == "ppo" else rloo_module
        module, data = make(policy, s, bench)
        limit = {"max_epochs": max(steps)}  # one epoch = one PPO iteration
    else:
        module, data = dpo_module(policy, s, total, bench)
        limit = {"max_steps": max(steps), "max_epochs": -1}
    callback = EvaluateAt(name, s | {"lam": list(s["lam"])}, steps, base, args, bench)
    study_trainer([callback], **limit).fit(module, datamodule=data)


def study_trainer(callbacks: list[pl.Callback], **limit) -> pl.Trainer:
    """The study's runs: one CPU process with no logger, checkpoints, progress bar or
    validation; `limit` is max_steps / max_epochs."""
    return pl.Trainer(
        accelerator="cpu",
        devices=1,
        **limit,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        callbacks=callbacks,
    )


def dpo_module(policy: StoriesPolicy, s: dict, total: int, bench: StoriesBenchmark) -> tuple:
    """FixedPreferenceDPO with the dps.yaml settings (OneCycle over `total` steps), and its data."""
    kwargs = {
        "preference": list(s["lam"]),
        "loss": MultiObjectiveDPOLoss(beta=BETA),
        "aggregator": LinearScalarization(),
        "optimizer": functools.partial(torch.optim.AdamW, lr=s["lr"], fused=True),
        "scheduler": functools.partial(
            torch.optim.lr_scheduler.OneCycleLR,
            max_lr=s["lr"],
            total_steps=total,
            pct_start=0.05,
            cycle_momentum=False,
        ),
    }
    if s["full"]:
        module = FullFineTuneDPO(policy, reference_model=bench.load_model(), **kwargs)
    else:
        module = FixedPreferenceDPO(policy, **kwargs)
    data = StoriesDataModule(
        num_dimensions=2,
        batch_size=32,
        benchmark={
            "pairs_per_prompt": s["pairs_per_prompt"],
            "pair_responses_per_prompt": s["pair_responses_per_prompt"],
            "progress": False,
        },
    )
    return module, data


def print_shared(rec: dict) -> None:
    """The `--shared` record as a table: each policy, then their average log-ratio."""
    names = [*rec["policies"], "average of the log-ratios"]
    print(
        f"{'policy':42s} {'G_is':>6s} {'slope':>6s} {'KL off':>7s} {'R² words':>8s} "
        f"{'R² other':>8s}  off-tilt corr."
    )
    for i, (name, m) in enumerate(zip(names, [*rec["each"], rec["average"]], strict=True)):
        corr = (
            " ".join(f"{c:5.2f}" for c in rec["off_tilt_corr"][i]) if i < len(rec["each"]) else ""
        )
        print(
            f"{name:42s} {m['G_is']:6.3f} {m['tilt_slope']:6.2f} {m['kl_off_tilt']:7.3f} "
            f"{m['off_tilt_r2_words']:8.3f} {m['off_tilt_r2_features']:8.3f}  {corr}"
        )


# ---- main --------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), help="which to run")
    parser.add_argument("--steps", type=int, nargs="+", default=[100, 200, 400, 800])
    parser.add_argument(
        "--schedule-steps", type=int, default=800, help="OneCycle length (≥ the last step)"
    )
    parser.add_argument("--samples-per-prompt", type=int, default=32)
    parser.add_argument("--results", type=Path, default=HERE / "results.jsonl")
    parser.add_argument("--mismatch", action="store_true", help="only the LS-vs-sum analysis")
    parser.add_argument("--decompose", action="store_true", help="only the log-ratio analysis")
    parser.add_argument(
        "--shared",
        nargs="+",
        metavar="VARIANT@STEP",
        help="only the off-tilt correlation of saved policies at one λ, and their average's G",
    )
    parser.add_argument("--list", action="store_true", help="print the variants and exit")
    args = parser.parse_args(argv)
    if args.list:
        for name, s in VARIANTS.items():
            print(name, DEFAULTS | s)
        return
    torch.set_num_threads(1)
    bench = StoriesBenchmark(progress=False)
    done = read_results(args.results)
    if args.decompose:
        for rec in decompose(bench, args.results, done):
            append_result(args.results, rec)
            print(json.dumps(rec), flush=True)
        return
    if args.shared:
        lam, ells = load_logratios(args.results, args.shared)  # before the model loads
        rec = {"policies": args.shared} | shared_off_tilt(
            ReferenceDraw(bench), bench.samples, lam, ells
        )
        append_result(args.results, rec)
        print_shared(rec)
        return
    if args.mismatch:
        have = {tuple(r["lam"]) for r in done if r["kind"] == "mismatch"}
        grid = [tuple(float(x) for x in lam) for lam in bench.default_preferences()]
        for rec in mismatch(bench, [lam for lam in grid if lam not in have]):
            append_result(args.results, rec)
            print(json.dumps(rec), flush=True)
        return
    args.reference_draw = ReferenceDraw(bench)
    for name in args.variants:
        lam = list(VARIANTS[name]["lam"])
        bases = [r for r in done if r["kind"] == "base" and r["lam"] == lam]
        bases = [r for r in bases if r["spp"] == args.samples_per_prompt]
        if not bases:
            bases = [base_record(bench, lam, args.samples_per_prompt)]
            append_result(args.results, bases[0])
            done.append(bases[0])
            print(f"base at {lam}: regret {bases[0]['regret']:.5f}", flush=True)
        have = {
            r["step"]
            for r in done
            if r["kind"] == "train" and r["variant"] == name and r["spp"] == args.samples_per_prompt
        }
        missing = [s for s in args.steps if s not in have]
        if not missing:
            print(f"{name}: done, skipped", flush=True)
            continue
        start = time.perf_counter()
        run_variant(name, missing, bases[0], args, bench)
        print(f"{name}: {time.perf_counter() - start:.0f} s", flush=True)
        done = read_results(args.results)


if __name__ == "__main__":
    main()
