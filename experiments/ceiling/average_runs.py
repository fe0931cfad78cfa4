"""G of an average of independent runs (`panacea-pl average`) against each run alone, on the same
draws: compare.py's sweep (m = 2: 5 λ × 512 stories; m = 3: 6 × 512) or the demo's
(`--divisions 10 --samples-per-prompt 16`: 11 λ × 256).

About half of the KL a trained policy spends off the reward's direction is its own run's
("Is the KL off the tilt each run's own?"); an average of runs' updates cancels that part.

    python experiments/ceiling/average_runs.py --dims 2 \\
        runs/s18_m2_rloo1200_kl04/m2_panacea_rloo/version_0/checkpoints/last.ckpt \\
        runs/s18_m2_rloo1200_kl04_s1/m2_panacea_rloo/version_0/checkpoints/last.ckpt
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from panacea_pl.benchmarks.stories import StoriesBenchmark
from panacea_pl.benchmarks.stories.lightning import StoriesPolicy
from panacea_pl.layers.average import save_average
from panacea_pl.preference import simplex_grid

COMPARE_DIVISIONS = {2: 4, 3: 2}  # compare.py's GRID_DIVISIONS


def evaluate(adapter_path: Path, bench: StoriesBenchmark, grid, samples_per_prompt: int):
    """The stories evaluation of a saved adapter (compare.py's and the demo's: seed 0)."""
    policy = StoriesPolicy(adapter_path=str(adapter_path))
    return bench.evaluate(
        policy.model,
        preferences=grid,
        adapter=policy.adapter,
        samples_per_prompt=samples_per_prompt,
        seed=0,
        progress=False,
    )


def line(name: str, ev) -> str:
    gains = " ".join(f"{g:.2f}" for g in ev.gain)
    return (
        f"{name:>12}  G {ev.mean_gain:.3f} ± {ev.mean_gain_se:.3f}  HV ratio "
        f"{ev.hypervolume_ratio:.3f}  mean regret {ev.mean_regret:.4f}  mean KL {ev.kl.mean():.3f}  "
        f"G per λ: {gains}"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="+", type=Path, help="runs' last.ckpt (2 or more)")
    parser.add_argument("--dims", type=int, default=2, help="m, the number of objectives")
    parser.add_argument("--divisions", type=int, help="grid H (default: compare.py's)")
    parser.add_argument("--samples-per-prompt", type=int, default=32, help="stories per prompt, λ")
    parser.add_argument("--no-members", action="store_true", help="sweep the average only")
    args = parser.parse_args(argv)
    if len(args.checkpoints) < 2:
        parser.error("give at least two checkpoints to average")
    bench = StoriesBenchmark(num_dimensions=args.dims, progress=False)
    grid = simplex_grid(args.dims, args.divisions or COMPARE_DIVISIONS[args.dims])
    with tempfile.TemporaryDirectory() as tmp:
        if not args.no_members:
            for i, checkpoint in enumerate(args.checkpoints):
                member = save_average([checkpoint], Path(tmp) / f"run{i}")
                print(line(f"run {i}", evaluate(member, bench, grid, args.samples_per_prompt)))
        average = save_average(args.checkpoints, Path(tmp) / "average")
        print(line("average", evaluate(average, bench, grid, args.samples_per_prompt)))


if __name__ == "__main__":
    main()
