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
from variants import FullFineTuneDPO, FullFineTunePPO, ppo_module

from panacea_pl.baselines import FixedPreferenceDPO, FixedPreferencePPO
from panacea_pl.benchmarks.stories import StoriesDataModule, StoriesPolicy
from panacea_pl.benchmarks.stories.benchmark import StoriesBenchmark
from panacea_pl.benchmarks.stories.evaluate import Evaluation
from panacea_pl.benchmarks.stories.optimum import tilted_front
from panacea_pl.benchmarks.stories.pairs import choose_pairs
from panacea_pl.benchmarks.stories.reference_draw import ReferenceDraw
from panacea_pl.layers import PanaceaAdapter, PanaceaConfig
from panacea_pl.objectives import LinearScalarization, MultiObjectiveDPOLoss

HERE = Path(__file__).resolve().parent
CORNER, CENTRE = (1.0, 0.0), (0.5, 0.5)
BETA = 1.25

# name → settings; every variant is the dps.yaml recipe at one λ except for what it names.
VARIANTS: dict[str, dict] = {
    "dpo_r0_corner": {"lam": CORNER},
    "dpo_r0_centre": {"lam": CENTRE},
    "dpo_r8_corner": {"lam": CORNER, "num_general": 8},
    "dpo_full_corner": {"lam": CORNER, "full": True, "lr": 5e-4},
    "dpo_r0_corner_pool0.25": {"lam": CORNER, "pairs_per_prompt": 256},
    "dpo_r0_corner_lr0.01": {"lam": CORNER, "lr": 0.01},
    "dpo_r0_corner_pool4": {"lam": CORNER, "pairs_per_prompt": 4096},
    "dpo_r8_centre": {"lam": CENTRE, "num_general": 8},
    "dpo_r8_corner_lr0.0005": {"lam": CORNER, "num_general": 8, "lr": 5e-4},
    "dpo_r0_centre_lr0.01": {"lam": CENTRE, "lr": 0.01},
    "dpo_full_corner_lr5e-05": {"lam": CORNER, "full": True, "lr": 5e-5},
    # 4× the distinct responses per prompt (and pairs, 4 per response as by default): coverage
    "dpo_r0_corner_lr0.01_resp1024": {
        "lam": CORNER,
        "lr": 0.01,
        "pair_responses_per_prompt": 1024,
        "pairs_per_prompt": 4096,
    },
    # FixedPreferencePPO, the panacea_ppo.yaml recipe at one λ (constant lr, critic lr 0.001)
    "ppo_r0_corner": {"method": "ppo", "lam": CORNER},
    "ppo_full_corner": {"method": "ppo", "lam": CORNER, "full": True, "lr": 1e-4},
    "ppo_full_corner_lr2e-05": {"method": "ppo", "lam": CORNER, "full": True, "lr": 2e-5},
    "ppo_r8_corner": {"method": "ppo", "lam": CORNER, "num_general": 8},
    "ppo_r8_corner_lr0.0005": {"method": "ppo", "lam": CORNER, "num_general": 8, "lr": 5e-4},
    "ppo_r0_centre": {"method": "ppo", "lam": CENTRE},
}
DEFAULTS = {
    "method": "dpo",
    "num_general": 0,
    "full": False,
    "lr": 0.002,
    "pairs_per_prompt": 1024,
    "pair_responses_per_prompt": 256,
}


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


def context() -> dict:
    """When and under what load a measurement was taken."""
    return {"utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "load1": os.getloadavg()[0]}


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
        ppo = isinstance(module, FixedPreferencePPO)
        step = int(module.iterations) if ppo else trainer.global_step  # PPO: iterations
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
    pl.seed_everything(0, workers=True)
    policy = StoriesPolicy(adapter=PanaceaConfig(num_general=s["num_general"], num_preferences=2))
    if s["method"] == "ppo":
        module, data = ppo_module(policy, s, bench)
        limit = {"max_epochs": max(steps)}  # one epoch = one PPO iteration
    else:
        module, data = dpo_module(policy, s, total, bench)
        limit = {"max_steps": max(steps), "max_epochs": -1}
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        **limit,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        callbacks=[EvaluateAt(name, s | {"lam": list(s["lam"])}, steps, base, args, bench)],
    )
    trainer.fit(module, datamodule=data)


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


# ---- LS-vs-sum-of-DPO mismatch -----------------------------------------------------------------


def _features(r: np.ndarray, degree: int) -> np.ndarray:
    """Polynomial features of a 2-D reward vector without the constant (shift-invariant)."""
    cols = [r[:, 0] ** i * r[:, 1] ** j for i in range(degree + 1) for j in range(degree + 1 - i)]
    return np.stack(cols[1:], axis=1)


def mismatch(bench: StoriesBenchmark, lams: Sequence[Sequence[float]], degree: int = 4) -> list:
    """Pair by pair on the benchmark's pool: the sum-of-DPO target β·Δh = logit Σλ_i p_i vs the
    optimum's Σλ_i logit p_i; then the policy π ∝ π_ref exp(g(r)/β) with g the best function of
    the reward vector for the sum-of-DPO loss on the pool, scored against the optimum by SNIS."""
    samples = bench.samples
    tau, beta_eff = bench.label_temperature, bench.beta_eff
    cand = np.flatnonzero(samples.for_pairs & (np.char.strip(samples.texts) != ""))
    r_all = samples.rewards[:, :2].astype(np.float64)
    chosen = choose_pairs(
        samples.prompt_index[cand], bench.pairs_per_prompt, bench.seed, r_all[cand]
    )
    a, b = cand[chosen[:, 0]], cand[chosen[:, 1]]
    dr = (r_all[a] - r_all[b]) / tau  # [K, 2] Δr_i / τ
    p = 1 / (1 + np.exp(-dr))
    ref = bench.samples.reference_rewards(2)  # [P, n, 2]
    out = []
    for lam in lams:
        lam_arr = np.asarray(lam, dtype=np.float64)
        target = p @ lam_arr
        u_opt = dr @ lam_arr
        u_ls = np.log(target) - np.log1p(-target)
        informative = np.abs(u_opt) > 1e-9
        rel = np.abs(u_ls - u_opt)[informative].mean() / np.abs(u_opt)[informative].mean()
        slope = float((u_ls * u_opt).sum() / (u_opt**2).sum())
        # the sum-of-DPO loss's minimiser among functions g(r) (polynomial, degree `degree`)
        fa = torch.tensor(_features(r_all[a], degree) - _features(r_all[b], degree))
        scale = fa.abs().max(0).values.clamp_min(1e-12)
        x = fa / scale
        y = torch.tensor(target)
        w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
        opt = torch.optim.LBFGS(
            [w], max_iter=500, tolerance_grad=1e-10, line_search_fn="strong_wolfe"
        )

        def closure(x=x, y=y, w=w, opt=opt) -> torch.Tensor:
            opt.zero_grad()
            loss = torch.nn.functional.binary_cross_entropy_with_logits(x @ w, y)
            loss.backward()
            return loss

        opt.step(closure)
        coef = (w.detach() / scale).numpy()
        # π ∝ π_ref exp(g/β) with β·Δh = Δg: a tilt of π_ref by g/β; SNIS on the reference samples
        g_ref = (_features(ref.reshape(-1, 2), degree) @ coef).reshape(ref.shape[:2])
        s = g_ref / BETA
        w_snis = np.exp(s - s.max(1, keepdims=True))
        w_snis /= w_snis.sum(1, keepdims=True)
        n = ref.shape[1]
        mean_r = np.einsum("pn,pnm->pm", w_snis, ref).mean(0)
        kl = float((w_snis * np.log(n * w_snis + 1e-300)).sum(1).mean())
        value_ls = float(mean_r @ lam_arr - beta_eff * kl)
        front = tilted_front(ref, lam_arr[None], beta_eff)
        value_ref = float(ref.mean((0, 1)) @ lam_arr)
        g_ls = 1 - (front.value[0] - value_ls) / (front.value[0] - value_ref)
        out.append(
            {
                "kind": "mismatch",
                "lam": list(lam),
                "num_pairs": int(len(a)),
                "mean_abs_dh_opt": float(np.abs(u_opt).mean() / BETA),
                "mean_abs_dh_ls_minus_opt": float(np.abs(u_ls - u_opt).mean() / BETA),
                "relative_gap": float(rel),
                "slope_ls_on_opt": slope,
                "fit_degree": degree,
                "ls_policy_kl": kl,
                "opt_kl": float(front.kl[0]),
                "ls_policy_objectives": mean_r.tolist(),
                "opt_objectives": front.objectives[0].tolist(),
                "ls_policy_G": float(g_ls),
            }
            | context()
        )
    return out


# ---- decomposition of a trained policy's log-ratio -----------------------------------------------


def tilt_value(rewards: np.ndarray, ell: np.ndarray, lam: np.ndarray, beta: float) -> tuple:
    """Value and KL of the policy π ∝ π_ref e^ℓ by SNIS on the reference draw (ℓ [P, n])."""
    w = np.exp(ell - ell.max(1, keepdims=True))
    w /= w.sum(1, keepdims=True)
    log_ratio = ell - np.log(np.exp(ell - ell.max(1, keepdims=True)).mean(1, keepdims=True))
    log_ratio -= ell.max(1, keepdims=True)
    kl = float((w * log_ratio).sum(1).mean())
    value = float((w * (rewards @ lam)).sum(1).mean() - beta * kl)
    return value, kl


def decompose(bench: StoriesBenchmark, results: Path, done: list[dict]) -> list[dict]:
    """For each saved log-ratio ℓ of a trained policy on the reference draw: its slope a on the
    optimum's tilt λ·r/β (within prompts), and the G of the aligned policy π ∝ π_ref e^{a·λ·r/β},
    which has the same tilt strength but spends no KL off the reward direction. G_is − G_aligned
    is then the cost of the KL spent on directions the reward does not care about."""
    have = {(r["variant"], r["step"]) for r in done if r["kind"] == "decompose"}
    rewards = bench.samples.reference_rewards(2)
    beta = bench.beta_eff
    out = []
    for f in sorted((results.parent / "logratios").glob("*.npy")):
        variant, step = f.stem.rsplit("_step", 1)
        if (variant, int(step)) in have:
            continue
        ell = np.load(f).astype(np.float64)
        lam = np.asarray(VARIANTS[variant]["lam"], dtype=np.float64)
        s = rewards @ lam / beta
        s_c, ell_c = s - s.mean(1, keepdims=True), ell - ell.mean(1, keepdims=True)
        a = float((ell_c * s_c).sum() / (s_c**2).sum())
        v_opt, kl_opt = tilt_value(rewards, s, lam, beta)
        v_0 = float((rewards @ lam).mean())
        v_pol, kl_pol = tilt_value(rewards, ell, lam, beta)
        v_al, kl_al = tilt_value(rewards, a * s, lam, beta)
        out.append(
            {
                "kind": "decompose",
                "variant": variant,
                "step": int(step),
                "lam": lam.tolist(),
                "tilt_slope": a,
                "G_is": (v_pol - v_0) / (v_opt - v_0),
                "G_aligned": (v_al - v_0) / (v_opt - v_0),
                "kl_is": kl_pol,
                "kl_aligned": kl_al,
                "kl_off_tilt": kl_pol - kl_al,
                "opt_kl": kl_opt,
            }
        )
    return out


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
