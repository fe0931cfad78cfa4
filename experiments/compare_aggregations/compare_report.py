"""The comparison's outputs: `results.csv` (every number), `results.md` (the README's table) and
`front_m2.png` (every m = 2 front beside the optimum), from the rows `compare.py` collects."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

TABLE_METRICS = (
    "mean_gain",
    "mean_gain_se",
    "hypervolume",
    "hypervolume_ratio",
    "mean_regret",
    "inner_product",
    "sparsity",
    "spacing",
    "mean_kl",
)


@dataclass
class Row:
    """One method's result at one m."""

    m: int
    method: str
    metrics: dict[str, float]
    models: int
    steps: int
    seconds: float
    result: object  # FrontResult


def write_table(rows: list[Row], base: dict[int, dict[str, float]], out: Path) -> Path:
    """results.csv (every number) and results.md (the README table)."""
    fields = ["m", "method", *TABLE_METRICS, "models", "steps", "seconds"]
    with (out / "results.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(fields)
        for m, metrics in sorted(base.items()):
            writer.writerow([m, "base_model", *(metrics.get(k) for k in TABLE_METRICS), 0, 0, 0])
        for r in rows:
            writer.writerow(
                [r.m, r.method, *(r.metrics.get(k) for k in TABLE_METRICS), r.models, r.steps]
                + [round(r.seconds, 1)]
            )
    lines = [
        "| m | method | G ± se | HV | HV / optimum | mean regret | inner product | sparsity "
        "| spacing | mean KL | models | steps | wall time |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def fmt(metrics: dict[str, float]) -> str:
        gain = metrics.get("mean_gain")
        cells = [f"{gain:.2f} ± {metrics['mean_gain_se']:.2f}" if gain is not None else "–"]
        cells += [
            f"{metrics[k]:.4g}" if metrics.get(k) is not None else "–" for k in TABLE_METRICS[2:]
        ]
        return " | ".join(cells)

    for m in sorted({r.m for r in rows}):
        if m in base:
            lines.append(f"| {m} | base model (λ ignored) | {fmt(base[m])} | 0 | 0 | 0 s |")
        for r in (r for r in rows if r.m == m):
            lines.append(
                f"| {m} | {r.method} | {fmt(r.metrics)} | {r.models} | {r.steps} | "
                f"{r.seconds / 60:.1f} min |"
            )
    path = out / "results.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def plot_m2(rows: list[Row], out: Path) -> Path | None:
    """Every m = 2 front on one plot, beside the optimal front."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fronts = [r for r in rows if r.m == 2 and r.result is not None]
    if not fronts:
        return None
    fig, ax = plt.subplots(figsize=(6, 5))
    optimum = fronts[0].result.optimum
    if optimum is not None:
        ax.plot(optimum[:, 0], optimum[:, 1], "k--", marker="*", label="optimum")
    for r in fronts:
        obj = r.result.objectives
        hv = r.metrics.get("hypervolume_ratio", float("nan"))
        ax.plot(obj[:, 0], obj[:, 1], marker="o", label=f"{r.method} (HV {hv:.2f} of opt.)")
    names = fronts[0].result.objective_names
    ax.set_xlabel(names[0])
    ax.set_ylabel(names[1])
    ax.set_title("stories benchmark, m = 2: fronts on the same 5-λ grid")
    ax.legend(fontsize=8)
    path = out / "front_m2.png"
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path
