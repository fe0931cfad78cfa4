"""Can the adapter represent the optimum at all? Fit π*_λ directly, then measure G.

    python experiments/ceiling/distill.py --lam 1 0 --num-general 0 --steps 100 200 400
    python experiments/ceiling/distill.py --fresh 4096 --steps 200 400 800 1600 \
        --shared rloo_r0_corner@240 rloo_r0_corner_seed1@240
    python experiments/ceiling/distill.py --benchmark num_prompts=8 max_new_tokens=24 \
        --steps 2 --results /tmp/check.jsonl     # a quick check on a small benchmark

π*_λ ∝ π_ref·exp(λ·r/β_eff) is known in closed form up to its normaliser, so on π_ref samples
the forward KL(π* ‖ π_θ) is, up to a constant, −Σ_j w_j log π_θ(y_j | x) with self-normalised
weights w_j ∝ exp(λ·r_j/β_eff) within each prompt (reward-weighted likelihood). Minimising it
on the benchmark's pair pool (the 256 responses per prompt that offline DPO's pairs are made of,
never the reference draw the evaluation uses) needs no labels, no pairs and no sampling: if this
falls short of G = 1 too, the limit is what the adapter can represent or what 4,096 responses
can teach, not DPO or PPO. G is measured on the reference draw (`ReferenceDraw`, ±0.02–0.04).
One JSON line per evaluation is appended to `distill.jsonl`.

`--fresh N` fits on N responses per prompt of a separate π_ref draw (seed `--fresh-seed`, sampled
once and cached like the benchmark's own) instead of the pool: with many more distinct stories
than the pool's 256, the weighted likelihood is close to maximum likelihood on exact samples of
π*, so what is left of the gap is what the adapter and its optimiser can learn from the
optimum's own samples, not what a small pool covers. `--shared VARIANT@STEP …` then compares
the fitted policy's log-ratio at its last step with saved policies of `ceiling.py` at the same λ,
as `ceiling.py --shared` does: a fit of the optimum's own samples has no credit assignment to
get wrong, so a KL off the tilt it shares with RL-trained policies is the model's, not RL's.
"""

from __future__ import annotations

import argparse
import ast
import inspect
import json
import time
from pathlib import Path

import numpy as np
import torch
from analysis import load_logratios, shared_off_tilt
from ceiling import print_shared

from panacea_pl.benchmarks.stories import StoriesPolicy
from panacea_pl.benchmarks.stories.benchmark import StoriesBenchmark
from panacea_pl.benchmarks.stories.reference_draw import ReferenceDraw
from panacea_pl.layers import PanaceaConfig
from panacea_pl.models.logprobs import sequence_logprobs

HERE = Path(__file__).resolve().parent


def benchmark_settings(items: list[str], parser: argparse.ArgumentParser) -> dict:
    """`KEY=VALUE` strings as StoriesBenchmark keyword arguments (values as Python literals);
    a key it does not take, or one this script sets itself, is a usage error."""
    allowed = [
        name
        for name, p in inspect.signature(StoriesBenchmark).parameters.items()
        if p.kind is p.KEYWORD_ONLY and name not in ("seed", "progress")
    ]
    settings = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or key not in allowed:
            parser.error(f"--benchmark {item!r}: expected KEY=VALUE with KEY one of {allowed}")
        try:
            settings[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            parser.error(f"--benchmark {item!r}: {value!r} is not a number or a boolean")
    return settings


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lam", type=float, nargs=2, default=[1.0, 0.0])
    parser.add_argument("--num-general", type=int, default=0, help="k of the adapter")
    parser.add_argument("--lr", type=float, default=0.002)
    parser.add_argument("--batch", type=int, default=64, help="responses per step")
    parser.add_argument("--steps", type=int, nargs="+", default=[100, 200, 400])
    parser.add_argument(
        "--fresh", type=int, default=0, help="fit on N fresh π_ref responses per prompt (0: pool)"
    )
    parser.add_argument("--fresh-seed", type=int, default=1, help="seed of the --fresh draw")
    parser.add_argument(
        "--full", action="store_true", help="train every weight of the model, not the adapter"
    )
    parser.add_argument(
        "--shared",
        nargs="+",
        metavar="VARIANT@STEP",
        default=[],
        help="saved ceiling.py policies to compare the last step's off-tilt part with",
    )
    parser.add_argument("--results", type=Path, default=HERE / "distill.jsonl")
    parser.add_argument(
        "--benchmark",
        nargs="+",
        metavar="KEY=VALUE",
        default=[],
        help="StoriesBenchmark settings instead of the study's defaults, e.g. num_prompts=8 "
        "max_new_tokens=24 for a quick check (--fresh still sets its draw's own sizes)",
    )
    args = parser.parse_args(argv)
    settings = benchmark_settings(args.benchmark, parser)
    if args.fresh and args.fresh_seed == 0:
        parser.error("--fresh-seed 0 is the benchmark's own draw, which the evaluation uses")
    if args.shared:  # before anything loads
        shared_lam, shared_ells = load_logratios(HERE / "results.jsonl", args.shared)
        if not np.allclose(shared_lam, args.lam):
            parser.error(f"--shared policies are at λ = {shared_lam.tolist()}, not {args.lam}")
    torch.set_num_threads(1)
    torch.manual_seed(0)
    bench = StoriesBenchmark(progress=False, **settings)
    draw = ReferenceDraw(bench)
    samples = bench.samples
    if args.fresh:  # a separate draw: every response "for pairs", no reference part
        fresh = settings | {"pair_responses_per_prompt": args.fresh}
        fresh |= {"reference_samples_per_prompt": 0, "seed": args.fresh_seed}
        samples = StoriesBenchmark(**fresh, progress=False).samples
    lam = torch.tensor(args.lam)
    pool = np.flatnonzero(samples.for_pairs)
    rewards = samples.rewards[pool, :2] @ np.asarray(args.lam)
    prompt = samples.prompt_index[pool]
    weights = np.zeros(len(pool))
    for p in np.unique(prompt):
        rows = prompt == p
        s = rewards[rows] / bench.beta_eff
        w = np.exp(s - s.max())
        weights[rows] = w / w.sum()
    ess = [1 / (weights[prompt == p] ** 2).sum() for p in np.unique(prompt)]
    print(f"{len(pool)} responses; effective sample size per prompt {min(ess):.0f}–{max(ess):.0f}")
    policy = StoriesPolicy(adapter=PanaceaConfig(num_general=args.num_general, num_preferences=2))
    if args.full:
        policy.model.requires_grad_(True)
    params = policy.model.parameters() if args.full else policy.adapter.parameters()
    optimizer = torch.optim.AdamW(
        [p for p in params if p.requires_grad], lr=args.lr, weight_decay=0
    )
    rng = np.random.default_rng(0)
    num_prompts = len(np.unique(prompt))
    start, todo = time.perf_counter(), set(args.steps)
    for step in range(1, max(args.steps) + 1):
        # a batch from one prompt at a time keeps `batch`'s shared prompt; weights × prompts
        # make the loss an unbiased estimate of the mean over prompts of −Σ_j w_j log π(y_j)
        p = rng.integers(num_prompts)
        rows = np.flatnonzero(prompt == p)
        pick = rng.choice(rows, size=args.batch, replace=True, p=weights[rows])
        policy.train()
        batch = draw.batch(pool[pick], samples)
        mask = batch.attention_mask
        with policy.preference(lam.expand(args.batch, 2)):
            logits = policy.model(
                input_ids=batch.sequences,
                attention_mask=mask,
                position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
                use_cache=False,
            ).logits
        logps, _ = sequence_logprobs(logits, batch.sequences, batch.response_mask)
        loss = -logps.mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step in todo:
            with torch.no_grad(), policy.preference(lam):
                draw_logps = draw.logps(policy.model)
            est = draw.gain(draw_logps, args.lam)
            record = {"lam": args.lam, "num_general": args.num_general, "lr": args.lr, "step": step}
            record |= {"fresh": args.fresh, "full": args.full}
            record |= est | {"train_seconds": time.perf_counter() - start}
            with open(args.results, "a") as f:
                f.write(json.dumps(record) + "\n")
            print(
                f"step {step}: G_is {est['G_is']:.3f} ± {est['G_is_se']:.3f}, KL {est['kl_is']:.3f}"
                f", tilt slope {est['tilt_slope']:.2f}, corr {est['tilt_corr']:.2f}",
                flush=True,
            )
    if args.shared:
        name = (
            f"distill{' full' if args.full else ''}{f' fresh {args.fresh}' if args.fresh else ''}"
        )
        name += f" @{step}"
        ells = [*shared_ells, draw_logps - draw.base_logps]
        rec = {"kind": "shared", "policies": [*args.shared, name]}
        rec |= shared_off_tilt(draw, bench.samples, np.asarray(args.lam, dtype=np.float64), ells)
        with open(args.results, "a") as f:
            f.write(json.dumps(rec) + "\n")
        print_shared(rec)


if __name__ == "__main__":
    main()
