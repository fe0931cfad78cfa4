"""The ceiling study's analyses of the benchmark and of trained policies (no training): the
LS-vs-sum-of-DPO mismatch on the pair pool, and the decomposition of a policy's log-ratio on the
reference draw into the reward's tilt and the KL spent off it. Used by `ceiling.py --mismatch`
and `--decompose`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from variants import BETA, VARIANTS

from panacea_pl.benchmarks.stories.benchmark import StoriesBenchmark
from panacea_pl.benchmarks.stories.optimum import tilted_front
from panacea_pl.benchmarks.stories.pairs import choose_pairs


def context() -> dict:
    """When and under what load a measurement was taken."""
    return {"utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "load1": os.getloadavg()[0]}


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
