"""Peak memory of one DPO step, each contender of `dpo_step.py` in its own fresh process.

Used by `bench/dpo_step.py` (see its docstring for the method); not run on its own.
"""

from __future__ import annotations

import gc
import multiprocessing as mp
import os
import statistics
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
        return True
    except OSError:
        return False


def _measure_cuda(step) -> tuple[int, int, int]:
    """(peak growth during the step, held before it, absolute peak) in bytes."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    step()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated()
    return peak - before, before, peak


def _measure_cpu(step) -> tuple[int, int, int, str]:
    exact = _reset_peak_rss()
    before = _rss_kib("VmRSS")
    if not exact:  # fall back to the lifetime peak: a lower bound on the step's growth
        import resource

        before = max(before, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    step()
    peak = _rss_kib("VmHWM")
    method = "VmHWM - VmRSS" if exact else "ru_maxrss (lower bound)"
    return (peak - before) * 1024, before * 1024, peak * 1024, method


def memory_worker(name: str, model_dir: str, pairs, tokenised, args) -> dict:
    """Build contender `name`, warm it up, and measure `args.memory_steps` steps."""
    from dpo_contenders import make_contender

    torch.set_num_threads(args.threads)
    workdir = Path(tempfile.mkdtemp(prefix=f"dpo_step_{name}_"))
    step = make_contender(name, Path(model_dir), pairs, tokenised, args, workdir)[0]
    gc.collect()
    for _ in range(max(args.warmup, 1)):  # optimiser state and lazy initialisation happen here
        step()
    growths, held, peaks = [], [], []
    method = "torch.cuda.max_memory_allocated"
    for _ in range(args.memory_steps):
        gc.collect()
        if args.device == "cuda":
            growth, before, peak = _measure_cuda(step)
        else:
            growth, before, peak, method = _measure_cpu(step)
        growths.append(growth)
        held.append(before)
        peaks.append(peak)
    return {
        "step_peak": statistics.median(growths),
        "held": statistics.median(held),
        "peak": statistics.median(peaks),
        "method": method,
    }


def measure_memory(contenders, model_dir: Path, pairs, tokenised, args) -> dict[str, dict]:
    """Each contender in its own fresh 'spawn' process; the processes run at the same time
    (each process's peak is its own, so they do not disturb each other's numbers)."""
    saved = os.environ.get("MALLOC_MMAP_THRESHOLD_")
    os.environ["MALLOC_MMAP_THRESHOLD_"] = str(128 * 1024)  # the child's glibc reads it at start
    try:
        with ProcessPoolExecutor(
            len(contenders), mp_context=mp.get_context("spawn"), max_tasks_per_child=1
        ) as pool:
            futures = {
                name: pool.submit(memory_worker, name, str(model_dir), pairs, tokenised, args)
                for name in contenders
            }
            return {name: f.result() for name, f in futures.items()}
    finally:
        if saved is None:
            os.environ.pop("MALLOC_MMAP_THRESHOLD_", None)
        else:
            os.environ["MALLOC_MMAP_THRESHOLD_"] = saved
