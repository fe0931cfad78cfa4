"""Why the adapter costs what it costs on a GPU: the layer's paths side by side, and a profile.

    python bench/gpu/adapter_paths.py --device cuda --json out.json     # on the GPU (~1 min)
    python bench/gpu/adapter_paths.py --device cpu --size tiny          # a smoke test

`bench/adapter_overhead.py` measures the training step of (a) the frozen base, (b) PEFT LoRA and
(c) Panacea. This script adds, in the same interleaved rounds on the same batch:
  c_composed   Panacea through autograd on the separate ops (`_forward_composed`), the way
               PEFT runs LoRA;
  c_fused      Panacea through `functional.panacea_linear`, the layer's own path;
(each also with one λ per sequence), and, for a, b and both of ours, a `torch.profiler` trace
of two steps: CUDA kernels per step, the time the GPU spent in kernels per step, and the wall
time per step (the profiler slows the CPU side, so compare the kernel time with the unprofiled
medians). A median step far above its kernel time waits on the CPU that launches the kernels,
not on the GPU.

`--compile cudagraphs` runs a, b and c_fused through `torch.compile` instead (one λ only, no
c_composed): the `cudagraphs` backend replays each step's forward and backward as CUDA graphs
with no code generation, so it removes the launch cost and nothing else. `aot_eager` is the CPU
smoke test of the same tracing.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from adapter_overhead import (  # noqa: E402
    SIZES,
    TARGETS,
    build,
    build_panacea,
    median_interleaved,
    step_timer,
)


def _panacea(args, path: str):
    """`build_panacea`'s model with its layers on `path` ('fused' or 'composed');
    (model, parameters, adapter)."""
    model, adapter = build_panacea(args)
    if path == "composed":
        for layer in adapter.layers.values():
            layer._fused = _never
    return model.train(), list(adapter.parameters()), adapter


def _never(x) -> bool:
    return False


def _peft(args):
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(
        build(size=args.size, device=args.device, dtype=args.dtype),
        LoraConfig(
            r=args.num_general + 2,
            lora_alpha=args.num_general + 2,
            target_modules=TARGETS,
            lora_dropout=0.0,
        ),
    )
    return model.train(), [p for p in model.parameters() if p.requires_grad]


def build_models(args) -> dict:
    """One model per contender, built once: the frozen base, PEFT LoRA, Panacea's paths."""
    base = build(size=args.size, device=args.device, dtype=args.dtype).train()
    for p in base.parameters():
        p.requires_grad_(False)
    models = {"a_frozen_base": (base, [], None), "b_peft_lora": (*_peft(args), None)}
    for path in ("composed", "fused"):
        models[f"c_{path}"] = _panacea(args, path)
    return models


def build_steps(args, models: dict, batch: torch.Tensor) -> dict:
    """Every contender's timed training step on `batch`; Panacea with one λ per batch and with
    one λ per sequence (set before each step, outside the timed part). Compiled: one λ only,
    and c_composed left out."""
    steps = {}
    rows = torch.distributions.Dirichlet(torch.ones(2)).sample((batch.shape[0],)).to(args.device)
    for name, (model, params, adapter) in models.items():
        if args.compile != "none":
            if name == "c_composed":
                continue
            model = compiled(model, args)
        timer = step_timer(model, batch, params, args, embed_grad=adapter is None and not params)
        if adapter is None:
            steps[name] = timer
            continue
        steps[name] = _with_preference(adapter, [0.3, 0.7], timer)
        if args.compile == "none":
            steps[f"{name}_per_sequence"] = _with_preference(adapter, rows, timer)
    return steps


def compiled(model, args):
    """`torch.compile(model)` with `--compile`'s backend."""
    return torch.compile(model, backend=args.compile)


def _with_preference(adapter, preference, timer):
    def step() -> float:
        adapter.set_preference(preference)
        return timer()

    return step


def profile(step, device: str, steps: int = 2) -> dict:
    """Kernels per step, GPU kernel time per step and wall time per step, from torch.profiler."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    step()  # warm
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    start = time.perf_counter()
    with torch_profile(activities=activities) as prof:
        for _ in range(steps):
            step()
    wall = (time.perf_counter() - start) / steps
    kernels = [
        e
        for e in prof.events()
        if e.device_type == torch.autograd.DeviceType.CUDA and not e.name.startswith("Memcpy")
    ]
    busy = sum(e.device_time for e in kernels) / 1e6 / steps  # µs → s
    top: dict[str, float] = {}
    for e in kernels:
        top[e.name[:90]] = top.get(e.name[:90], 0.0) + e.device_time / 1e3 / steps  # ms
    return {
        "wall_s": wall,
        "kernel_s": busy,
        "kernels_per_step": len(kernels) / steps,
        "top_kernels_ms": dict(sorted(top.items(), key=lambda kv: -kv[1])[:12]),
    }


def measure(args, models, batch_size: int, seq: int, with_profile: bool) -> dict:
    """Every contender at one batch shape: median seconds, ratios, and (optionally) profiles."""
    torch.manual_seed(0)
    batch = torch.randint(0, SIZES[args.size][0], (batch_size, seq)).to(args.device)
    steps = build_steps(args, models, batch)
    if args.compile != "none":  # compiling, then CUDA graphs' warm-up and capture: untimed
        start = time.perf_counter()
        for _ in range(3):
            for step in steps.values():
                step()
        print(f"  compile ({args.compile}) and warm-up: {time.perf_counter() - start:.1f} s")
    seconds = median_interleaved(steps, args.steps)
    a, b = seconds["a_frozen_base"], seconds["b_peft_lora"]
    how = "" if args.compile == "none" else f", torch.compile ({args.compile})"
    print(f"\n{args.size} Llama, batch {batch_size}x{seq}, {args.device}, bf16 autocast{how}")
    print("  contender                     median s   / base   / PEFT")
    for name, s in seconds.items():
        print(f"  {name:28s} {s:9.4f} {s / a:8.3f} {s / b:8.3f}")
    result = {"seconds": seconds, "profile": {}}
    if with_profile:
        for name in ("a_frozen_base", "b_peft_lora", "c_composed", "c_fused"):
            if name not in steps:
                continue
            try:
                result["profile"][name] = p = profile(steps[name], args.device)
            except Exception as error:  # noqa: BLE001  (the timings above are kept)
                result["profile"][name] = {"error": f"{type(error).__name__}: {error}"}
                print(f"  profile {name}: {type(error).__name__}: {error}")
                continue
            print(
                f"  profile {name:18s} wall {p['wall_s']:.4f} s, kernels {p['kernel_s']:.4f} s,"
                f" {p['kernels_per_step']:.0f} kernels per step"
            )
        for name in ("b_peft_lora", "c_fused"):
            print(f"  top kernels of {name} (ms per step):")
            for kernel, ms in result["profile"][name].get("top_kernels_ms", {}).items():
                print(f"    {ms:8.3f}  {kernel}")
    del steps
    if args.device == "cuda":
        torch.cuda.empty_cache()
    return result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda")
    parser.add_argument("--size", choices=sorted(SIZES), default="1b")
    parser.add_argument(
        "--shapes",
        nargs="+",
        default=["8x512", "16x1024"],
        help="batch x sequence length; the first is also profiled",
    )
    parser.add_argument("--steps", type=int, default=8, help="interleaved timed rounds")
    parser.add_argument("--num-general", type=int, default=8, help="k; rank k + 2, as PEFT's r")
    parser.add_argument(
        "--compile",
        choices=["none", "cudagraphs", "aot_eager"],
        default="none",
        help="run a, b and c_fused through torch.compile with this backend",
    )
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    args.dtype = "bfloat16"  # bf16 base, fp32 adapters, bf16 autocast: Lightning's bf16-mixed
    result = {"config": {k: v for k, v in vars(args).items() if k != "json"}, "shapes": {}}
    models = build_models(args)
    for i, shape in enumerate(args.shapes):
        batch_size, seq = (int(v) for v in shape.split("x"))
        result["shapes"][shape] = measure(args, models, batch_size, seq, with_profile=i == 0)
        if args.json is not None:  # after each shape: a run cut short keeps what it measured
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
