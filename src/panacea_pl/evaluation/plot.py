"""Pictures of a front: 2-D curve with λ annotated (and the optimum when known), 3-D scatter,
parallel coordinates beyond three objectives."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from panacea_pl.evaluation.result import FrontResult  # noqa: E402


def plot_front(result: FrontResult, path: str | Path, title: str = "Pareto front") -> Path:
    """Save a PNG of the front to `path` and return the path."""
    m = result.objectives.shape[1]
    if m == 2:
        fig = _plot_2d(result)
    elif m == 3:
        fig = _plot_3d(result)
    else:
        fig = _plot_parallel(result)
    fig.suptitle(title)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def _plot_2d(result: FrontResult):
    fig, ax = plt.subplots(figsize=(6.4, 5.2))
    x, y = result.objectives[:, 0], result.objectives[:, 1]
    if result.optimum is not None:
        ax.plot(
            result.optimum[:, 0], result.optimum[:, 1], "--", color="0.4", label="optimal front"
        )
    ax.plot(x, y, "-", color="tab:blue", alpha=0.4)
    points = ax.scatter(x, y, c=result.preferences[:, 0], cmap="viridis", zorder=3, label="f(λ)")
    fig.colorbar(points, ax=ax, label=f"λ ({result.objective_names[0]})")
    for g in range(len(x)):
        ax.annotate(
            f"{result.preferences[g, 0]:.1f}",
            (x[g], y[g]),
            textcoords="offset points",
            xytext=(4, 4),
            fontsize=7,
        )
    if result.base is not None and np.isfinite(result.base).all():
        ax.scatter(
            [result.base[0]], [result.base[1]], marker="s", color="tab:red", zorder=4,
            label="base model (every λ)",
        )  # fmt: skip
    ref = result.reference_point
    ax.scatter([ref[0]], [ref[1]], marker="x", color="0.3", label="hypervolume reference")
    _label_axes(ax, result)
    ax.legend(loc="best", fontsize=8)
    ax.grid(alpha=0.3)
    return fig


def _plot_3d(result: FrontResult):
    fig = plt.figure(figsize=(6.4, 5.6))
    ax = fig.add_subplot(projection="3d")
    obj = result.objectives
    if result.optimum is not None:
        ax.scatter(*result.optimum.T, marker="x", color="0.5", label="optimal front")
    ax.scatter(*obj.T, c=result.preferences, depthshade=False, label="f(λ) (colour = λ)")
    if result.base is not None and np.isfinite(result.base).all():
        ax.scatter(*result.base[:, None], marker="s", color="tab:red", label="base model")
    ax.set_xlabel(result.objective_names[0])
    ax.set_ylabel(result.objective_names[1])
    ax.set_zlabel(result.objective_names[2])
    ax.legend(fontsize=8)
    return fig


def _plot_parallel(result: FrontResult):
    fig, ax = plt.subplots(figsize=(1.1 * result.objectives.shape[1] + 3, 4.5))
    span = np.where(result.upper > result.lower, result.upper - result.lower, 1.0)
    norm = (result.objectives - result.lower) / span
    dominant = result.preferences.argmax(1)
    cmap = plt.get_cmap("tab10")
    for g in range(len(norm)):
        ax.plot(range(norm.shape[1]), norm[g], color=cmap(dominant[g] % 10), alpha=0.5)
    ax.set_xticks(range(norm.shape[1]), result.objective_names, rotation=30, ha="right")
    ax.set_ylabel("objective, normalised to its range")
    ax.set_title("colour = dimension with the largest λ", fontsize=8)
    ax.grid(alpha=0.3)
    return fig


def _label_axes(ax, result: FrontResult) -> None:
    arrows = ["↑" if up else "↓" for up in result.maximize]
    ax.set_xlabel(f"{result.objective_names[0]} {arrows[0]}")
    ax.set_ylabel(f"{result.objective_names[1]} {arrows[1]}")
