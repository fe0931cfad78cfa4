"""The KL-regularised optimum π*_λ ∝ π_ref · exp(λ·r / β), estimated from reference samples.

    front = tilted_front(rewards, preferences, beta=0.04)   # rewards [P, n, m] from π_ref
    front.objectives      # [G, m]  E_{π*_λ}[r_i], averaged over the P prompts
    front.objectives_se   # [G, m]  its standard error
    front.kl, front.value # [G]     KL(π*_λ ‖ π_ref) and Σλ_i E[r_i] − β·KL (the optimum's value)
    front.ess             # [G]     effective sample size per prompt (mean over prompts)

For each prompt x the policy that maximises E_π[λ·r] − β·KL(π ‖ π_ref) is the tilted reference
π*_λ(y|x) = π_ref(y|x) exp(λ·r(y)/β) / Z_λ(x). With n samples y_j ~ π_ref(·|x) as the proposal,
self-normalised importance sampling weights them by w_j = e^{s_j} / Σ_k e^{s_k}, s = λ·r/β:

    E_{π*}[r]   ≈ Σ_j w_j r_j
    KL(π*‖π_ref) = E_{π*}[s] − log Z ≈ Σ_j w_j log(n w_j)
    value        = β log Z ≈ β log((1/n) Σ_j e^{s_j})          (= λ·E_{π*}[r] − β·KL exactly)

Standard errors come from the delta method (the estimators' influence functions: n w_j (r_j − μ)
for a weighted mean, n w_j − 1 for log Z) per prompt, combined over prompts as the standard error
of a mean of independent estimates. They are trustworthy while the effective sample size
ESS = 1 / Σ_j w_j² is large; SNIS is biased by O(1/ESS), so read a small ESS as "increase the
number of reference samples or β". The value's estimate is biased low (Jensen on log Z).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np


@dataclass
class TiltedFront:
    """Expected objectives of π*_λ over a grid of λ, with their estimation error.

    Attributes:
        preferences: [G, m] the λ grid.
        objectives: [G, m] E_{π*_λ}[r_i] (mean over prompts).
        objectives_se: [G, m] standard errors of `objectives`.
        kl: [G] KL(π*_λ ‖ π_ref) in nats per response (mean over prompts).
        kl_se: [G] its standard error.
        value: [G] λ·objectives − beta·kl, the optimum of the regularised objective.
        value_se: [G] its standard error.
        ess: [G] effective sample size per prompt, mean over prompts.
        ess_min: [G] the smallest per-prompt effective sample size.
        num_samples: n, reference samples per prompt.
        beta: β of the regularised objective.
        dimension_names: the m objective names.
    """

    preferences: np.ndarray
    objectives: np.ndarray
    objectives_se: np.ndarray
    kl: np.ndarray
    kl_se: np.ndarray
    value: np.ndarray
    value_se: np.ndarray
    ess: np.ndarray
    ess_min: np.ndarray
    num_samples: int
    beta: float
    dimension_names: tuple[str, ...]

    def rows(self) -> list[dict[str, float]]:
        """One flat dict per λ (for a CSV or a logger table)."""
        return _rows(self, ["kl", "kl_se", "value", "value_se", "ess", "ess_min"])

    def save(self, path: Path) -> None:
        """Write every field to an `.npz` file (no pickle)."""
        np.savez(path, **{f.name: np.asarray(getattr(self, f.name)) for f in fields(self)})

    @classmethod
    def load(cls, path: Path) -> TiltedFront:
        with np.load(path) as data:
            arrays = {k: data[k] for k in data.files}
        return cls(
            **arrays
            | {
                "num_samples": int(arrays["num_samples"]),
                "beta": float(arrays["beta"]),
                "dimension_names": tuple(arrays["dimension_names"].tolist()),
            }
        )


def tilted_front(
    rewards: np.ndarray,
    preferences: np.ndarray,
    beta: float,
    dimension_names: Sequence[str] | None = None,
) -> TiltedFront:
    """Estimate the optimum's objectives, KL and value for every λ by SNIS.

    Args:
        rewards: [P, n, m] rewards of n samples from π_ref for each of P prompts (or [n, m]
            for a single prompt). Objectives are averaged over prompts with equal weight.
        preferences: [G, m] λ grid (rows need not sum to 1: any weights work).
        beta: β > 0 of the regularised objective Σλ_i E[r_i] − β·KL.
        dimension_names: names of the m objectives (default "0", "1", …).

    Returns:
        The front, one row per λ.
    """
    r = np.asarray(rewards, dtype=np.float64)
    r = r[None] if r.ndim == 2 else r
    lam = np.asarray(preferences, dtype=np.float64)
    if r.ndim != 3 or lam.ndim != 2 or lam.shape[1] != r.shape[2]:
        raise ValueError(
            f"need rewards [P, n, m] and preferences [G, m], got {r.shape} and {lam.shape}"
        )
    if not beta > 0:
        raise ValueError(f"beta must be positive, got {beta}")
    num_prompts, n, m = r.shape
    s = np.einsum("pnm,gm->gpn", r, lam) / beta  # [G, P, n]
    top = s.max(-1, keepdims=True)
    log_z = top + np.log(np.exp(s - top).sum(-1, keepdims=True))  # log Σ_j e^{s_j}
    w = np.exp(s - log_z)
    nw = n * w

    mean_r = np.einsum("gpn,pnm->gpm", w, r)  # [G, P, m]
    var_r = np.einsum("gpn,gpnm->gpm", w**2, (r[None] - mean_r[:, :, None, :]) ** 2)
    mean_s = (w * s).sum(-1, keepdims=True)
    kl = (w * (s - log_z + np.log(n))).sum(-1)  # Σ w log(n w)
    kl_influence = nw * (s - mean_s) - (nw - 1)
    value = beta * (log_z[..., 0] - np.log(n))
    value_influence = beta * (nw - 1)

    def across_prompts(per_prompt_var: np.ndarray) -> np.ndarray:
        return np.sqrt(per_prompt_var.sum(1)) / num_prompts

    ess = 1.0 / (w**2).sum(-1)  # [G, P]
    return TiltedFront(
        preferences=lam,
        objectives=mean_r.mean(1),
        objectives_se=across_prompts(var_r),
        kl=kl.mean(1),
        kl_se=across_prompts((kl_influence**2).sum(-1) / n**2),
        value=value.mean(1),
        value_se=across_prompts((value_influence**2).sum(-1) / n**2),
        ess=ess.mean(1),
        ess_min=ess.min(1),
        num_samples=n,
        beta=float(beta),
        dimension_names=tuple(dimension_names or map(str, range(m))),
    )


def _rows(result, scalar_fields: Sequence[str]) -> list[dict[str, float]]:
    rows = []
    for g, lam in enumerate(result.preferences):
        row = {
            f"lambda_{name}": float(x) for name, x in zip(result.dimension_names, lam, strict=True)
        }
        for i, name in enumerate(result.dimension_names):
            row[name] = float(result.objectives[g, i])
            row[f"{name}_se"] = float(result.objectives_se[g, i])
        row |= {f: float(getattr(result, f)[g]) for f in scalar_fields}
        rows.append(row)
    return rows
