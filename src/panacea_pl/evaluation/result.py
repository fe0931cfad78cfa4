"""What an evaluator returns for a λ grid: the front f(λ), its metrics, and rows for tables."""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from panacea_pl.pareto.metrics import Hypervolume, InnerProduct, Spacing, Sparsity


@dataclass
class FrontResult:
    """The objectives reached at each λ of a grid.

    Attributes:
        preferences: [G, m] the grid.
        objectives: [G, m] f(λ), one column per objective (named in `objective_names`).
        objective_names: what each objective is, with its unit.
        maximize: per objective, True if higher is better.
        reference_point: [m] the worst point that counts for the hypervolume.
        lower, upper: [m] each objective's range, to normalise the inner product.
        columns: further per-λ columns (standard errors, KL, regret, …) for tables and CSV.
        summary: further scalars (e.g. the hypervolume ratio to a known optimum, mean regret).
        optimum: [G', m] the optimal front where the evaluator knows it (plotted beside ours).
        base: [m] the base model's point (the reference policy, which ignores λ), if measured.
    """

    preferences: np.ndarray
    objectives: np.ndarray
    objective_names: list[str]
    maximize: list[bool]
    reference_point: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    columns: dict[str, np.ndarray] = field(default_factory=dict)
    summary: dict[str, float] = field(default_factory=dict)
    optimum: np.ndarray | None = None
    base: np.ndarray | None = None

    def metrics(self) -> dict[str, float]:
        """Hypervolume ↑, inner product ↑, sparsity ↓, spacing ↓, plus `summary`."""
        lam = torch.as_tensor(self.preferences, dtype=torch.float64)
        obj = torch.as_tensor(self.objectives, dtype=torch.float64)
        # the front is whole on the rank that computes the metrics (sharded sweeps gather it
        # first; unsharded ones run on rank zero alone): a sync would wait on absent ranks
        local = {"sync_on_compute": False}
        metrics = {
            "hypervolume": Hypervolume(self.reference_point, self.maximize, **local),
            "inner_product": InnerProduct(self.lower, self.upper, self.maximize, **local),
            "sparsity": Sparsity(**local),
            "spacing": Spacing(**local),
        }
        values = {}
        for name, metric in metrics.items():
            metric.update(lam, obj)
            values[name] = float(metric.compute())
        return values | dict(self.summary)

    def header(self) -> list[str]:
        lam = [f"lambda_{n}" for n in self.objective_names]
        return [*lam, *self.objective_names, *self.columns]

    def rows(self) -> list[list[float]]:
        extra = list(self.columns.values())
        return [
            [
                *map(float, self.preferences[g]),
                *map(float, self.objectives[g]),
                *(float(c[g]) for c in extra),
            ]
            for g in range(len(self.preferences))
        ]

    def write_csv(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(self.header())
            writer.writerows(self.rows())
        return path
