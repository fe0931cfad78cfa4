"""Quality of a Pareto front: dominance, hypervolume, inner product, sparsity and spacing.

    from panacea_pl.pareto.front import hypervolume, non_dominated_mask
    front = [[1.0, 3.0], [2.0, 2.0], [3.0, 1.0], [1.0, 1.0]]   # higher is better
    non_dominated_mask(front)                    # array([ True,  True,  True, False])
    hypervolume(front, reference=[0.0, 0.0])     # 6.0

Points are arrays or tensors of shape [n, d] (n points, d objectives). `maximize` is one bool
for every objective or one per objective. Dominance and hypervolume come from `moocore`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import moocore
import numpy as np
import torch
from torchmetrics.functional.regression import spearman_corrcoef

from panacea_pl.preference import validate_preference

ArrayLike = np.ndarray | torch.Tensor | Sequence[Sequence[float]] | Sequence[float]
Maximize = bool | Sequence[bool]

APPROXIMATION_REPLICATES = 16


class HypervolumeEstimate(NamedTuple):
    """A hypervolume with its standard error (0 when computed exactly)."""

    value: float
    stderr: float
    exact: bool


def as_points(points: ArrayLike, name: str = "points") -> np.ndarray:
    """Return `points` as a float64 array [n, d], rejecting other shapes and non-finite values."""
    if isinstance(points, torch.Tensor):
        points = points.detach().cpu().double().numpy()
    array = np.asarray(points, dtype=np.float64)
    if array.ndim != 2:
        raise ValueError(f"{name} must have shape [n, d] (one row per point), got {array.shape}")
    bad = np.flatnonzero(~np.isfinite(array).all(axis=1))
    if len(bad):
        raise ValueError(
            f"{name} must be finite; row {bad[0]} is {array[bad[0]].tolist()} "
            f"({len(bad)} non-finite row(s) in all)"
        )
    return array


def non_dominated_mask(points: ArrayLike, maximize: Maximize = True) -> np.ndarray:
    """Boolean array [n]: True for each point that no other point dominates.

    A point dominates another if it is at least as good in every objective and better in one.
    Duplicates of a non-dominated point are all kept.
    """
    array = as_points(points)
    if len(array) == 0:
        return np.zeros(0, dtype=bool)
    return moocore.is_nondominated(array, maximise=_maximise(maximize, array), keep_weakly=True)


def hypervolume(
    points: ArrayLike,
    reference: ArrayLike,
    maximize: Maximize = True,
    *,
    approximate_from_dim: int = 6,
    num_samples: int = 2**18,
    seed: int = 0,
) -> float:
    """Volume of objective space dominated by `points` and dominating `reference`.

    Exact (moocore) below `approximate_from_dim` objectives, estimated at and above it; see
    `hypervolume_estimate` for the arguments and for the estimate's standard error.
    """
    return hypervolume_estimate(
        points,
        reference,
        maximize,
        approximate_from_dim=approximate_from_dim,
        num_samples=num_samples,
        seed=seed,
    ).value


def hypervolume_estimate(
    points: ArrayLike,
    reference: ArrayLike,
    maximize: Maximize = True,
    *,
    approximate_from_dim: int = 6,
    num_samples: int = 2**18,
    seed: int = 0,
) -> HypervolumeEstimate:
    """Hypervolume with its standard error: exact for few objectives, Monte Carlo for many.

    Dominated points, and points not strictly better than `reference` in every objective, add
    nothing. With d < `approximate_from_dim` objectives the value is exact
    (`moocore.hypervolume`; its cost grows like n^(d−2)). Otherwise it is the mean of
    16 independent runs of moocore's Monte Carlo estimator (`moocore.hv_approx`,
    method "DZ2019-MC", Deng & Zhang 2019) with `num_samples` / 16 directions each, seeded from
    `seed`, and `stderr` is the standard deviation of those runs over √16.

    Args:
        points: [n, d] objective values.
        reference: [d] the worst acceptable point (below every point when maximising).
        maximize: True if higher is better, one bool for all objectives or one per objective.
        approximate_from_dim: smallest d that is estimated rather than computed exactly.
        num_samples: total number of Monte Carlo directions.
        seed: seed of the Monte Carlo directions.
    """
    array = as_points(points)
    ref = _vector(reference, array.shape[1], "reference")
    maximise = _maximise(maximize, array)
    if len(array) == 0:
        return HypervolumeEstimate(0.0, 0.0, True)
    if array.shape[1] < approximate_from_dim:
        value = float(moocore.hypervolume(array, ref, maximise=maximise))
        return HypervolumeEstimate(value, 0.0, True)
    rng = np.random.default_rng(seed)
    per_run = max(1, num_samples // APPROXIMATION_REPLICATES)
    runs = np.array(
        [
            moocore.hv_approx(
                array, ref, maximise=maximise, nsamples=per_run, seed=rng, method="DZ2019-MC"
            )
            for _ in range(APPROXIMATION_REPLICATES)
        ]
    )
    stderr = runs.std(ddof=1) / np.sqrt(APPROXIMATION_REPLICATES)
    return HypervolumeEstimate(float(runs.mean()), float(stderr), False)


def inner_product(
    preferences: ArrayLike,
    objectives: ArrayLike,
    lower: ArrayLike,
    upper: ArrayLike,
    maximize: Maximize = True,
) -> float:
    """Mean over the grid of ⟨λ, f̂(λ)⟩, objectives normalised by a fixed range.

        f̂_i = (f_i − lower_i) / (upper_i − lower_i)    for a maximised objective,
        f̂_i = (upper_i − f_i) / (upper_i − lower_i)    for a minimised one,
        IP   = (1/G) Σ_g Σ_i λ_gi · f̂_gi              (higher is better)

    so f̂ = 1 is the best end of the range in every objective; values outside the range are not
    clipped. Use the same range for fronts you compare.

    Args:
        preferences: [G, m] the λ each row of `objectives` was produced with (rows on the simplex).
        objectives: [G, m] the objective values f(λ).
        lower: [m] low end of each objective's range.
        upper: [m] high end; upper > lower.
        maximize: True if higher is better, one bool for all objectives or one per objective.
    """
    f = as_points(objectives, name="objectives")
    pref = as_points(preferences, name="preferences")
    lam = validate_preference(pref, f.shape[1], dtype=torch.float64).numpy()
    if lam.shape[0] != f.shape[0]:
        raise ValueError(f"{lam.shape[0]} preferences but {f.shape[0]} rows of objectives")
    low = _vector(lower, f.shape[1], "lower")
    high = _vector(upper, f.shape[1], "upper")
    if not (high > low).all():
        raise ValueError(f"upper must exceed lower in every objective, got {low} and {high}")
    if len(f) == 0:
        return 0.0
    scaled = (f - low) / (high - low)
    scaled = np.where(_maximise(maximize, f), scaled, 1.0 - scaled)
    return float((lam * scaled).sum(axis=1).mean())


def sparsity(points: ArrayLike) -> float:
    """Sparsity of a front (PGMORL, Xu et al. 2020): how far apart neighbouring points are.

        SP = 1/(n − 1) · Σ_j Σ_{k=1}^{n−1} (P̃_j(k+1) − P̃_j(k))²

    where P̃_j is objective j's values sorted. The squared gaps are summed over the d
    objectives, as in PGMORL and morl-baselines (not averaged over them). Lower is better;
    0 for fewer than 2 points. In the objectives' own units (squared).
    """
    array = as_points(points)
    if len(array) < 2:
        return 0.0
    gaps = np.diff(np.sort(array, axis=0), axis=0)
    return float((gaps**2).sum() / (len(array) - 1))


def spacing(points: ArrayLike) -> float:
    """Schott's (1995) spacing: how uneven the distances to nearest neighbours are.

        d_k = min_{l ≠ k} Σ_j |f_j(k) − f_j(l)|        (L1 distance to the nearest other point)
        SP  = sqrt( 1/(n − 1) · Σ_k (d̄ − d_k)² )

    Lower is better (0: evenly spaced); 0 for fewer than 2 points. In the objectives' units.
    """
    array = as_points(points)
    if len(array) < 2:
        return 0.0
    distances = np.abs(array[:, None, :] - array[None, :, :]).sum(axis=2)
    np.fill_diagonal(distances, np.inf)
    return float(distances.min(axis=1).std(ddof=1))


def rank_correlations(preferences: ArrayLike, objectives: ArrayLike) -> np.ndarray:
    """[m] Spearman's ρ between λ_i and objective i over a front's rows: 1 when every dimension's
    score rises with its weight (a front ordered like its λ), −1 when it falls. Ties take average
    ranks (torchmetrics' `spearman_corrcoef`)."""
    lam = as_points(preferences, "preferences")
    points = as_points(objectives, "objectives")
    if lam.shape != points.shape:
        raise ValueError(
            f"preferences {list(lam.shape)} and objectives {list(points.shape)} must match"
        )
    return np.array(
        [
            float(spearman_corrcoef(torch.from_numpy(lam[:, i]), torch.from_numpy(points[:, i])))
            for i in range(lam.shape[1])
        ]
    )


def _maximise(maximize: Maximize, array: np.ndarray) -> np.ndarray:
    flags = np.asarray(maximize, dtype=bool).reshape(-1)
    if flags.size == 1:
        return np.full(array.shape[1], bool(flags[0]))
    if flags.size != array.shape[1]:
        raise ValueError(
            f"maximize has {flags.size} values, points have {array.shape[1]} objectives"
        )
    return flags


def _vector(x: ArrayLike, length: int, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().double().numpy()
    vector = np.asarray(x, dtype=np.float64).reshape(-1)
    if vector.shape != (length,) or not np.isfinite(vector).all():
        raise ValueError(f"{name} must be {length} finite values, got {vector.tolist()}")
    return vector
