"""What training at a smaller KL coefficient aims at: the G, under the benchmark's β_eff, of the
exact optimum of a training β_t < β_eff, π_ref·exp(λ·r/β_t), and its KL, on the reference draw.

Trained policies tilt towards λ·r/β with about 0.65 of its slope (`ceiling.py --decompose`), so
a recipe may train at β_t = β_eff / 1.25 to land nearer the β_eff optimum; this prints what the
training target itself would score if the policy reached it (G = 1 only at β_t = β_eff). No
model is trained or loaded: the reference draw's rewards and self-normalised importance weights.

    python experiments/ceiling/training_beta.py --dims 2 --betas 0.05 0.045 0.04 0.035 0.03
"""

from __future__ import annotations

import argparse

import numpy as np
from analysis import tilt_parts

from panacea_pl.benchmarks.stories.benchmark import StoriesBenchmark


def target_rows(rewards: np.ndarray, beta: float, lams: np.ndarray, betas: list[float]) -> list:
    """For each λ and training β_t: (λ, β_t, G under β, KL) of π ∝ π_ref e^{λ·r/β_t}."""
    rows = []
    for lam in lams:
        for beta_t in betas:
            parts = tilt_parts(rewards, rewards @ lam / beta_t, lam, beta)
            rows.append((lam, beta_t, parts["G_is"], parts["kl_is"]))
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dims", type=int, default=2, help="m, the number of objectives")
    parser.add_argument("--betas", type=float, nargs="+", default=[0.05, 0.045, 0.04, 0.035])
    args = parser.parse_args(argv)
    if any(b <= 0 for b in args.betas):
        parser.error(f"--betas: positive KL coefficients; got {args.betas}")
    bench = StoriesBenchmark(num_dimensions=args.dims, progress=False)
    lams = np.asarray(bench.default_preferences(), dtype=float)
    rows = target_rows(bench.samples.reference_rewards(args.dims), bench.beta_eff, lams, args.betas)
    print(f"β_eff = {bench.beta_eff}; G and KL of the training target π_ref·exp(λ·r/β_t)")
    print("| λ | " + " | ".join(f"β_t = {b}: G, KL" for b in args.betas) + " |")
    print("|---|" + "---|" * len(args.betas))
    for i in range(0, len(rows), len(args.betas)):
        lam = ", ".join(f"{x:.2f}" for x in rows[i][0])
        cells = [f"{g:.2f}, {kl:.3f}" for _, _, g, kl in rows[i : i + len(args.betas)]]
        print(f"| ({lam}) | " + " | ".join(cells) + " |")
    means = [np.mean([r[2] for r in rows[j :: len(args.betas)]]) for j in range(len(args.betas))]
    print("| mean G | " + " | ".join(f"{g:.2f}" for g in means) + " |")


if __name__ == "__main__":
    main()
