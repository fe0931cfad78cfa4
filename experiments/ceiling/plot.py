"""Plot the ceiling study's learning curves and print its table from results.jsonl.

python experiments/ceiling/plot.py   # writes learning_curves.png (DPO),
                                     # ppo_learning_curves.png and rloo_learning_curves.png
                                     # (single-λ PPO, RLOO), prints Markdown
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HERE = Path(__file__).resolve().parent
MIN_ESS = 20  # smallest per-prompt effective sample size for which the reference-draw G is drawn


def load(path: Path) -> list[dict]:
    """The JSON lines of the results file."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def curves(records: list[dict], method: str = "dpo") -> dict[str, list[dict]]:
    """Training measurements of one method by variant, sorted by step."""
    out: dict[str, list[dict]] = {}
    for r in records:
        if r["kind"] == "train" and r["method"] == method:
            out.setdefault(r["variant"], []).append(r)
    return {k: sorted(v, key=lambda r: r["step"]) for k, v in out.items()}


def plot(records: list[dict], target: Path, method: str = "dpo") -> None:
    """G vs steps per variant (sampled evaluation left, reference-draw estimate right)."""
    fig, axes = plt.subplots(1, 3, figsize=(17, 5))
    for name, rows in curves(records, method).items():
        steps = [0] + [r["step"] for r in rows]
        style = "--" if rows[0]["lam"][0] == 0.5 else "-"
        for ax, key in ((axes[0], "G"), (axes[1], "G_is")):
            # the reference-draw estimate is meaningless where the policy's ESS collapsed
            valid = [key == "G" or r["ess_is_min"] >= MIN_ESS for r in rows]
            ax.errorbar(
                steps,
                [0.0] + [r[key] if ok else float("nan") for r, ok in zip(rows, valid, strict=True)],
                yerr=[0.0] + [r[f"{key}_se"] for r in rows],
                marker="o",
                capsize=3,
                linestyle=style,
                label=name,
            )
        axes[2].plot(
            steps, [0.0] + [r["kl"] for r in rows], marker="o", linestyle=style, label=name
        )
    opt = {tuple(r["lam"]): r["opt_kl"] for r in records if r["kind"] == "base"}
    for lam, kl in opt.items():
        axes[2].axhline(kl, color="grey", linestyle="-" if lam[0] == 1.0 else "--", linewidth=0.8)
        axes[2].annotate(f"optimum's KL at λ={lam}", (0, kl), fontsize=8, va="bottom")
    axes[0].set_title("G, sampled evaluation (512 stories, ±1 SE)")
    axes[1].set_title("G on the reference draw (importance sampling, ±1 SE)")
    axes[2].set_title("KL(π‖π_ref) per response (sampled)")
    for ax in axes:
        ax.set_xlabel(f"{method.upper()} iterations" if method != "dpo" else "optimiser steps")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("fraction of the achievable gain G")
    axes[2].set_ylim(0, 1.5)
    for ax in axes[:2]:
        ax.set_ylim(-0.6, 1.05)  # rank 8 at lr 0.002 and full FT at lr 5e-4 dip below: see table
        ax.axhline(1.0, color="grey", linewidth=0.8)
        ax.axhline(0.0, color="grey", linewidth=0.8)
    axes[1].legend(fontsize=7, loc="upper left")
    fig.suptitle(
        f"Single-λ {method.upper()} on the stories benchmark "
        "(solid: corner λ=(1,0); dashed: centre)"
    )
    fig.tight_layout()
    fig.savefig(target, dpi=120)


def table(records: list[dict], method: str = "dpo") -> str:
    """Markdown table of every training measurement of one method (PPO, RLOO: steps are
    iterations, and the tilt slope and correlation on the reference draw are shown too)."""
    ppo = method != "dpo"
    tilt = " tilt slope | tilt corr |" if ppo else ""
    head = (
        f"| variant | λ | {'iteration' if ppo else 'step'} | G (sampled) | G (reference draw) |"
        f"{tilt} KL (sampled) | optimum's KL | min ESS | train s | eval s | load |\n"
        + "|---" * (13 if ppo else 11)
        + "|\n"
    )
    lines = []
    for name, rows in curves(records, method).items():
        for r in rows:
            slope = f" {r['tilt_slope']:.2f} | {r['tilt_corr']:.2f} |" if ppo else ""
            lines.append(
                f"| {name} | {tuple(r['lam'])} | {r['step']} | {r['G']:.2f} ± {r['G_se']:.2f} "
                f"| {r['G_is']:.2f} ± {r['G_is_se']:.2f} |{slope} {r['kl']:.3f} ± {r['kl_se']:.3f} "
                f"| {r['opt_kl']:.3f} | {r['ess_is_min']:.0f} | {r['train_seconds']:.0f} "
                f"| {r['eval_seconds']:.0f} | {r['load1']:.1f} |"
            )
    return head + "\n".join(lines)


def mismatch_table(records: list[dict]) -> str:
    """Markdown table of the LS-vs-sum-of-DPO analysis."""
    rows = [r for r in records if r["kind"] == "mismatch"]
    if not rows:
        return ""
    head = (
        "| λ | mean abs(Δh_opt) | mean abs(Δh_LS − Δh_opt) | relative gap | slope Δh_LS on Δh_opt "
        "| KL of the LS target's policy | optimum's KL | G of the LS target's policy |\n"
        "|---|---|---|---|---|---|---|---|\n"
    )
    return head + "\n".join(
        f"| {tuple(round(x, 2) for x in r['lam'])} | {r['mean_abs_dh_opt']:.3f} "
        f"| {r['mean_abs_dh_ls_minus_opt']:.3f} | {r['relative_gap']:.3f} "
        f"| {r['slope_ls_on_opt']:.3f} | {r['ls_policy_kl']:.3f} | {r['opt_kl']:.3f} "
        f"| {r['ls_policy_G']:.3f} |"
        for r in rows
    )


def decompose_table(records: list[dict]) -> str:
    """Markdown table of the log-ratio decomposition (aligned tilt vs KL off the tilt)."""
    rows = sorted(
        (r for r in records if r["kind"] == "decompose"), key=lambda r: (r["variant"], r["step"])
    )
    if not rows:
        return ""
    head = (
        "| variant | step | tilt slope a | G (reference draw) | G of the aligned tilt a·λ·r/β "
        "| KL | KL of the aligned tilt | KL off the tilt |\n|---|---|---|---|---|---|---|---|\n"
    )
    return head + "\n".join(
        f"| {r['variant']} | {r['step']} | {r['tilt_slope']:.2f} | {r['G_is']:.2f} "
        f"| {r['G_aligned']:.2f} | {r['kl_is']:.3f} | {r['kl_aligned']:.3f} | {r['kl_off_tilt']:.3f} |"
        for r in rows
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--results", type=Path, default=HERE / "results.jsonl")
    args = parser.parse_args()
    records = load(args.results)
    plot(records, HERE / "learning_curves.png")
    print(table(records))
    print()
    for method in ("ppo", "rloo"):
        if curves(records, method):
            plot(records, HERE / f"{method}_learning_curves.png", method)
            print(table(records, method))
            print()
    print(mismatch_table(records))
    print()
    print(decompose_table(records))


if __name__ == "__main__":
    main()
