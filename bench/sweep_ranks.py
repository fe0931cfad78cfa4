"""A front sweep on 2 processes against 1, side by side in one run: wall time and equality.

    python bench/sweep_ranks.py [--samples-per-prompt 16] [--repeats 3]

The stories benchmark's sweep as the demo runs it (16 prompts × 16 samples × 11 λ = 2,816 rows
plus 256 base-model rows, 48 tokens, chunks of 512 rows), on stories260K with a random adapter
(speed does not depend on the weights). Each repeat times one process, then two forked processes
on a gloo group (each rank samples and scores its share of the rows; the result is gathered on
every rank), from the call to its return. Prints every repeat, the median ratio 2-proc / 1-proc
of the wall time and of the busiest process's CPU time (what the wall time would be on idle
cores: on a shared machine the wall time also measures the other jobs), and the largest
difference between the two fronts (common random numbers: it should be 0).
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from panacea_pl.benchmarks.stories import StoriesBenchmark
from panacea_pl.layers import PanaceaConfig, inject_adapter


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _sweep(rank: int, world: int, port: int, out: str, samples: int) -> None:
    torch.set_num_threads(1)
    if world > 1:
        dist.init_process_group("gloo", f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    bench = StoriesBenchmark(num_dimensions=2, progress=False)
    model = bench.load_model()
    adapter = inject_adapter(model, PanaceaConfig(num_general=8, num_preferences=2))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for layer in adapter.layers.values():
            layer.panacea_U.copy_(torch.randn(layer.panacea_U.shape, generator=gen) * 0.05)
            layer.panacea_V.copy_(torch.randn(layer.panacea_V.shape, generator=gen) * 0.05)
    if world > 1:
        dist.barrier()
    start, cpu = time.perf_counter(), time.process_time()
    ev = bench.evaluate(model, adapter=adapter, samples_per_prompt=samples)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    front = torch.as_tensor(np.concatenate([ev.objectives.ravel(), ev.kl, ev.gain]))
    record = {"seconds": seconds, "cpu": cpu, "front": front}
    torch.save(record, Path(out) / f"{world}-{rank}.pt")
    if world > 1:
        dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples-per-prompt", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    StoriesBenchmark(num_dimensions=2).build()  # build or reuse the cache before timing
    ratios, cpu_ratios = [], []
    with tempfile.TemporaryDirectory() as out:
        for repeat in range(args.repeats):
            _sweep(0, 1, 0, out, args.samples_per_prompt)
            mp.start_processes(
                _sweep,
                args=(2, _port(), out, args.samples_per_prompt),
                nprocs=2,
                start_method="fork",
            )
            one = torch.load(Path(out) / "1-0.pt")
            two = [torch.load(Path(out) / f"2-{r}.pt") for r in range(2)]
            slowest = max(r["seconds"] for r in two)
            diff = max((one["front"] - r["front"]).abs().max().item() for r in two)
            ratios.append(slowest / one["seconds"])
            busiest = max(r["cpu"] for r in two)
            cpu_ratios.append(busiest / one["cpu"])
            print(
                f"repeat {repeat}: wall 1 process {one['seconds']:.1f} s, 2 processes "
                f"{slowest:.1f} s, ratio {ratios[-1]:.2f}; CPU time of the busiest process "
                f"{one['cpu']:.1f} s vs {busiest:.1f} s, ratio {cpu_ratios[-1]:.2f}; "
                f"max |Δ front| {diff:.1e}",
                flush=True,
            )
    print(
        f"median ratios 2 / 1 processes: wall {statistics.median(ratios):.2f}, CPU time of the "
        f"busiest process {statistics.median(cpu_ratios):.2f} (cores: {os.cpu_count()}; "
        f"load average {os.getloadavg()[0]:.1f})"
    )


if __name__ == "__main__":
    main()
