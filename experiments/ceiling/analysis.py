"""The ceiling study's analyses of the benchmark and of trained policies (no training): the
LS-vs-sum-of-DPO mismatch on the pair pool, and the decomposition of a policy's log-ratio on the
reference draw into the reward's tilt and the KL spent off it. Used by `ceiling.py --mismatch`
and `--decompose`.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from variants import BETA, VARIANTS

from panacea_pl.benchmarks.stories.benchmark import StoriesBenchmark
from panacea_pl.benchmarks.stories.optimum import tilted_front
from panacea_pl.benchmarks.stories.pairs import choose_pairs
from panacea_pl.benchmarks.stories.reference_draw import ReferenceDraw
from panacea_pl.benchmarks.stories.samples import StorySamples
from panacea_pl.benchmarks.stories.scorers import WORD


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


def tilt_parts(rewards: np.ndarray, ell: np.ndarray, lam: np.ndarray, beta: float) -> dict:
    """A log-ratio ℓ [P, n] on the reference draw split along the optimum's tilt s = λ·r/β:
    its slope a (within prompts), G and KL of π ∝ π_ref e^ℓ and of the aligned π ∝ π_ref e^{a·s},
    the KL between them ("off the tilt"), and the residual ℓ − a·s itself (centred)."""
    s = rewards @ lam / beta
    s_c, ell_c = s - s.mean(1, keepdims=True), ell - ell.mean(1, keepdims=True)
    a = float((ell_c * s_c).sum() / (s_c**2).sum())
    v_opt, kl_opt = tilt_value(rewards, s, lam, beta)
    v_0 = float((rewards @ lam).mean())
    v_pol, kl_pol = tilt_value(rewards, ell, lam, beta)
    v_al, kl_al = tilt_value(rewards, a * s, lam, beta)
    return {
        "tilt_slope": a,
        "G_is": (v_pol - v_0) / (v_opt - v_0),
        "G_aligned": (v_al - v_0) / (v_opt - v_0),
        "kl_is": kl_pol,
        "kl_aligned": kl_al,
        "kl_off_tilt": kl_pol - kl_al,
        "opt_kl": kl_opt,
        "off_tilt": ell_c - a * s_c,
    }


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
        parts = tilt_parts(rewards, ell, lam, beta)
        del parts["off_tilt"]
        out.append(
            {"kind": "decompose", "variant": variant, "step": int(step), "lam": lam.tolist()}
            | parts
        )
    return out


# ---- is the KL off the tilt each run's own? ----------------------------------------------------


def word_counts(texts: np.ndarray, min_count: int = 30) -> np.ndarray:
    """[P, n, V] counts of each word seen ≥ `min_count` times in `texts` ([P, n] stories)."""
    words = [WORD.findall(text.lower()) for text in texts.ravel()]
    seen = Counter(w for story in words for w in story)
    column = {w: i for i, w in enumerate(w for w, k in seen.items() if k >= min_count)}
    counts = np.zeros((len(words), len(column)))
    for row, story in enumerate(words):
        for w in story:
            if w in column:
                counts[row, column[w]] += 1
    return counts.reshape(*texts.shape, len(column))


def held_out_r2(features: np.ndarray, target: np.ndarray, ridge: float = 10.0) -> float:
    """R² on the second half of the prompts of a ridge fit on the first half (within-prompt
    centred features [P, n, F] and target [P, n])."""
    x = features - features.mean(1, keepdims=True)
    y = target - target.mean(1, keepdims=True)
    fit, test = slice(0, len(x) // 2), slice(len(x) // 2, None)
    a, b = x[fit].reshape(-1, x.shape[-1]), y[fit].ravel()
    coef = np.linalg.solve(a.T @ a + ridge * np.eye(a.shape[1]), a.T @ b)
    resid = y[test].ravel() - x[test].reshape(-1, x.shape[-1]) @ coef
    return float(1 - (resid**2).sum() / (y[test] ** 2).sum())


def story_features(draw: ReferenceDraw, samples: StorySamples) -> np.ndarray:
    """[P, n, 12] features of each reference story beyond its words: its length in words, its
    log-probability under the base model, and all ten scores."""
    texts = samples.texts[draw.rows]
    length = np.vectorize(lambda text: len(WORD.findall(text.lower())))(texts)
    return np.concatenate(
        [length[..., None], draw.base_logps[..., None], samples.rewards[draw.rows]], axis=-1
    )


def load_logratios(results: Path, policies: Sequence[str]) -> tuple[np.ndarray, list]:
    """The saved log-ratios of "variant@step" policies, which must share one λ."""
    where = results.parent / "logratios"
    lams, ells = set(), []
    for name in policies:
        variant, _, step = name.partition("@")
        path = where / f"{variant}_step{step}.npy"
        if variant not in VARIANTS or not path.is_file():
            saved = sorted(p.stem.replace("_step", "@") for p in where.glob("*.npy"))
            raise SystemExit(f"--shared {name}: no saved policy {path}; saved: {', '.join(saved)}")
        lams.add(tuple(VARIANTS[variant]["lam"]))
        ells.append(np.load(path).astype(np.float64))
    if len(lams) != 1:
        raise SystemExit(f"--shared needs policies at one λ; got {sorted(lams)}")
    return np.asarray(lams.pop(), dtype=np.float64), ells


def shared_off_tilt(
    draw: ReferenceDraw, samples: StorySamples, lam: np.ndarray, ells: list[np.ndarray]
) -> dict:
    """For saved policies' log-ratios `ells` at one λ (`load_logratios`): the correlation between
    their parts off the optimum's tilt, and the G of their average log-ratio π ∝ π_ref e^{mean ℓ}.
    Independent run noise would give correlations near 0, and averaging k runs would divide
    the off-tilt variance by k; a part every method shares (the same story pushed up or down
    whatever the run) survives the average. Also how much of each off-tilt part the story's
    word counts and its other features (`story_features`) explain (held-out R²; the tilt itself
    is a function of the word counts)."""
    counts = word_counts(samples.texts[draw.rows])
    features = story_features(draw, samples)
    parts = [tilt_parts(draw.rewards, ell, lam, draw.beta) for ell in ells]
    average = tilt_parts(draw.rewards, np.mean(ells, axis=0), lam, draw.beta)

    def summary(p: dict) -> dict:
        off = p["off_tilt"]
        return {
            "G_is": p["G_is"],
            "tilt_slope": p["tilt_slope"],
            "kl_off_tilt": p["kl_off_tilt"],
            "off_tilt_var": float(off.var()),
            "off_tilt_r2_words": held_out_r2(counts, off),
            "off_tilt_r2_features": held_out_r2(features, off, ridge=0.0),
        }

    return {
        "kind": "shared",
        "lam": lam.tolist(),
        "each": [summary(p) for p in parts],
        "average": summary(average),
        "off_tilt_corr": np.corrcoef([p["off_tilt"].ravel() for p in parts]).round(3).tolist(),
    } | context()
