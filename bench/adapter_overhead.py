"""Adapter overhead, side by side in one run: frozen base vs PEFT LoRA vs Panacea.

    make bench            # or: python bench/adapter_overhead.py [--steps 20 --repeats 3] [--seq 128]
    python bench/adapter_overhead.py --device cuda --size 1b --seq 512 --json out.json

Prints, for a ~20M-parameter Llama-style model on CPU (`--size small`, the default; `1b` is
TinyLlama-1.1B's shape, `tiny` a smoke-test size; random weights: speed does not depend on
them), the median training-step time of
  (a) the frozen base with activation gradients only (the floor any adapter pays),
  (b) PEFT LoRA of rank k + m on the same modules,
  (c) Panacea (k general + m preference singular values), one λ per batch (the paper's and the
      default), and again with one λ per sequence,
in several independent runs (the ratios' spread shows the machine's noise), then b/a, c/a, c/b
and their medians over the runs; the cost of switching λ as a fraction of one forward pass; and
the speed-up of generating for an 11-point λ grid as one per-sample batch over 11 sequential
calls, beside the speed-up that plain batching gives the base model.

On CUDA the base weights are bf16 (`--dtype`), both adapters keep fp32 weights, and every
contender runs under bf16 autocast: Lightning's `bf16-mixed`, as a user trains. `--json` also
writes every number to a file.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from panacea_pl.layers import PanaceaAdapter, PanaceaConfig, inject_adapter
from panacea_pl.preference import simplex_grid

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


SIZES = {  # Llama shapes: (vocab, hidden, intermediate, layers, heads, kv heads)
    "tiny": (512, 64, 172, 2, 4, 4),
    "small": (2048, 512, 1376, 6, 8, 8),  # 21.1M parameters, the README's CPU numbers
    "1b": (32000, 2048, 5632, 22, 32, 4),  # TinyLlama-1.1B's shape
}


def llama_config(size: str = "small") -> LlamaConfig:
    vocab, hidden, inter, layers, heads, kv = SIZES[size]
    return LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=inter,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv,
        max_position_embeddings=2048,
    )


def build(
    seed: int = 0, size: str = "small", device: str = "cpu", dtype: str = "float32"
) -> LlamaForCausalLM:
    """A Llama of `size` with random weights, built on `device` in `dtype`."""
    torch.manual_seed(seed)
    with torch.device(device):
        model = LlamaForCausalLM(llama_config(size))
    return model.to(getattr(torch, dtype))


def build_args(args) -> LlamaForCausalLM:
    return build(size=args.size, device=args.device, dtype=args.dtype)


def precision(args):
    """bf16 autocast for a bf16 base (fp32 adapters), else nothing."""
    if args.dtype == "bfloat16":
        return torch.autocast(args.device, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def sync(args) -> None:
    if args.device == "cuda":
        torch.cuda.synchronize()


def build_panacea(args) -> tuple[LlamaForCausalLM, PanaceaAdapter]:
    """The same model with the Panacea adapter (k = args.num_general, m = 2) on TARGETS."""
    model = build_args(args)
    config = PanaceaConfig(num_general=args.num_general, num_preferences=2, target_modules=TARGETS)
    return model, inject_adapter(model, config)


def step_timer(model, batch, params, args, *, embed_grad: bool):
    opt = torch.optim.AdamW(params, lr=1e-4, fused=True) if params else None

    def step() -> float:
        sync(args)
        start = time.perf_counter()
        with precision(args):
            if embed_grad:  # frozen base: activations require grad so backward runs the graph
                embeds = model.get_input_embeddings()(batch).detach().requires_grad_(True)
                loss = model(inputs_embeds=embeds, labels=batch).loss
            else:
                loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        if opt is not None:
            opt.step()
            opt.zero_grad(set_to_none=True)
        sync(args)
        return time.perf_counter() - start

    return step


def median_interleaved(steps: dict, rounds: int) -> dict[str, float]:
    """Run the contenders in turn, `rounds` times each, after one warm-up; medians in seconds."""
    for fn in steps.values():
        fn()
    times = {name: [] for name in steps}
    for _ in range(rounds):
        for name, fn in steps.items():
            times[name].append(fn())
    return {name: statistics.median(t) for name, t in times.items()}


def training_overhead(args) -> dict[str, float]:
    from peft import LoraConfig, get_peft_model

    vocab = SIZES[args.size][0]
    batch = torch.randint(
        0, vocab, (args.batch, args.seq), generator=torch.Generator().manual_seed(0)
    ).to(args.device)
    base = build_args(args)
    for p in base.parameters():
        p.requires_grad_(False)
    lora = get_peft_model(
        build_args(args),
        LoraConfig(
            r=args.num_general + 2,
            lora_alpha=args.num_general + 2,
            target_modules=TARGETS,
            lora_dropout=0.0,
        ),
    )
    ours, adapter = build_panacea(args)
    adapter.set_preference([0.3, 0.7])
    per_sample, per_sample_adapter = build_panacea(args)
    per_sample_adapter.set_preference(
        torch.distributions.Dirichlet(torch.ones(2)).sample((args.batch,)).to(args.device)
    )
    for m in (base, lora, ours, per_sample):
        m.train()
    return median_interleaved(
        {
            "a_frozen_base": step_timer(base, batch, [], args, embed_grad=True),
            "b_peft_lora": step_timer(
                lora,
                batch,
                [p for p in lora.parameters() if p.requires_grad],
                args,
                embed_grad=False,
            ),
            "c_panacea": step_timer(ours, batch, adapter.parameters(), args, embed_grad=False),
            "c_per_sample": step_timer(
                per_sample, batch, per_sample_adapter.parameters(), args, embed_grad=False
            ),
        },
        args.steps,
    )


def switch_cost(args) -> float:
    model, adapter = build_panacea(args)
    model.eval()
    adapter.set_preference([0.5, 0.5])
    batch = torch.randint(0, SIZES[args.size][0], (args.batch, args.seq)).to(args.device)

    def forward_pass() -> None:
        with precision(args):
            model(input_ids=batch)
        sync(args)

    with torch.no_grad():
        forward_pass()
        forward = statistics.median(_timed(forward_pass) for _ in range(5))
    lams = simplex_grid(2, 100)
    start = time.perf_counter()
    for lam in lams:
        adapter.set_preference(lam)
    sync(args)
    switch = (time.perf_counter() - start) / len(lams)
    return switch / forward


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def generation_speedups(args) -> tuple[float, float]:
    """(speed-up of batching for the base model, speed-up of one per-sample-λ batch for ours)."""
    grid = simplex_grid(2, 10)  # 11 points
    prompt = torch.randint(
        3, SIZES[args.size][0], (1, 16), generator=torch.Generator().manual_seed(1)
    ).to(args.device)
    kwargs = {
        "max_new_tokens": args.new_tokens,
        "min_new_tokens": args.new_tokens,
        "do_sample": False,
        "pad_token_id": 0,
    }
    base = build_args(args).eval()
    ours, adapter = build_panacea(args)
    ours.eval()
    batch = prompt.repeat(len(grid), 1)

    def base_sequential():
        for _ in grid:
            base.generate(prompt, **kwargs)
        sync(args)

    def base_batched():
        base.generate(batch, **kwargs)
        sync(args)

    def ours_sequential():
        for lam in grid:
            adapter.set_preference(lam)
            ours.generate(prompt, **kwargs)
        sync(args)

    def ours_batched():
        adapter.set_preference(grid)
        ours.generate(batch, **kwargs)
        sync(args)

    with torch.no_grad(), precision(args):
        t = median_interleaved(
            {
                "base_seq": lambda: _timed(base_sequential),
                "base_batch": lambda: _timed(base_batched),
                "ours_seq": lambda: _timed(ours_sequential),
                "ours_batch": lambda: _timed(ours_batched),
            },
            args.gen_rounds,
        )
    return t["base_seq"] / t["base_batch"], t["ours_seq"] / t["ours_batch"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--num-general", type=int, default=8, help="k; total rank k + 2 (default 10)"
    )
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per contender")
    parser.add_argument("--repeats", type=int, default=3, help="independent training runs")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--gen-rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--skip-generation", action="store_true", help="training and switch only")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument(
        "--dtype",
        choices=["float32", "bfloat16"],
        default=None,
        help="base weights (default: float32 on CPU, bfloat16 on CUDA)",
    )
    parser.add_argument("--size", choices=sorted(SIZES), default="small")
    parser.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device")
    if args.dtype is None:
        args.dtype = "float32" if args.device == "cpu" else "bfloat16"
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    n_params = sum(p.numel() for p in build(size=args.size, device="meta").parameters())
    print(
        f"model: Llama-style ({args.size}), {n_params / 1e6:.1f}M parameters, batch "
        f"{args.batch}x{args.seq}, rank {args.num_general}+2, {args.device} {args.dtype}, "
        f"{args.threads} threads, torch {torch.__version__}"
    )
    result: dict = {
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "parameters": n_params,
        "torch": torch.__version__,
        "device_name": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
    }

    runs = [training_overhead(args) for _ in range(args.repeats)]
    print(
        f"\ntraining step: median seconds of {args.steps} interleaved rounds, in "
        f"{args.repeats} independent runs; c' = (c) with one λ per sequence"
    )
    print("  run   (a) base  (b) PEFT  (c) ours       c'     b/a     c/a     c/b    c'/a")
    ratios = []
    for i, t in enumerate(runs, 1):
        a, b, c, c1 = (t[k] for k in ("a_frozen_base", "b_peft_lora", "c_panacea", "c_per_sample"))
        ratios.append((b / a, c / a, c / b, c1 / a))
        print(
            f"  {i:>3}  {a:9.4f} {b:9.4f} {c:9.4f} {c1:8.4f}"
            + "".join(f" {r:7.3f}" for r in ratios[-1])
        )
    b_a, c_a, c_b, c1_a = (statistics.median(col) for col in zip(*ratios, strict=True))
    print(
        f"  median of runs: b/a = {b_a:.3f}   c/a = {c_a:.3f} (target <= 1.10)   "
        f"c/b = {c_b:.3f} (target <= 1.00)   c'/a = {c1_a:.3f}"
    )
    result.update(runs=runs, b_a=b_a, c_a=c_a, c_b=c_b, c1_a=c1_a)
    result["targets_met"] = {"c_a<=1.10": c_a <= 1.10, "c_b<=1.00": c_b <= 1.00}

    frac = switch_cost(args)
    print(f"\nswitching λ: {100 * frac:.4f}% of one forward pass (target < 1%)")
    result["switch_fraction_of_forward"] = frac

    if not args.skip_generation:
        base_speedup, ours_speedup = generation_speedups(args)
        print(f"\ngeneration for an 11-point λ grid, {args.new_tokens} new tokens")
        print(f"  base model: one batch of 11 vs 11 calls  speed-up {base_speedup:.2f}x")
        print(
            f"  Panacea: one per-sample-λ batch vs 11 calls  speed-up {ours_speedup:.2f}x "
            f"({100 * ours_speedup / base_speedup:.0f}% of the base's; target >= 90%)"
        )
        result["generation_speedup"] = {"base": base_speedup, "panacea": ours_speedup}
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
