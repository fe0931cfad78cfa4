"""One DPO training step, side by side in one run: Panacea multi-objective DPO vs TRL + PEFT LoRA.

    .venv/bin/python bench/dpo_step.py                  # CPU, fp32 (~2-3 min, 2 cores)
    .venv/bin/python bench/dpo_step.py --device cuda    # GPU, bf16 weights (--dtype to change)
    .venv/bin/python bench/dpo_step.py --pairs 8 --prompt-len 64 --response-len 64 --rounds 8
    .venv/bin/python bench/dpo_step.py --device cuda --size 1b --json out.json   # a 1.1B Llama

Needs the `[bench]` extra (trl, peft). Both contenders load the SAME folder with `from_pretrained`:
a ~20M-parameter Llama-style model (`adapter_overhead.build`, random weights; speed does not depend
on them) saved beside a byte-level BPE tokenizer trained locally (`tests/tiny.py`).

Contenders (one training step = policy forward with the adapter on, reference forward with the
adapter off, backward, AdamW step on the adapter; no gradient checkpointing, no dropout):

  ours  `PanaceaDPO(PanaceaPolicy(path, PanaceaConfig(num_general=k, num_preferences=2)))`, TWO
        dimensions labelled on every pair; the step calls the module's hooks
        `sample_preference` → `dimension_losses` → `aggregate` (what `_shared_step` runs, minus
        Lightning's `self.log`), then backward and `torch.optim.AdamW`.
  TRL   `trl.DPOTrainer` with `peft_config=LoraConfig(r=k + 2)` on the same modules (same total
        rank), reference = the PEFT model with its adapter disabled (TRL's default with PEFT,
        `precompute_ref_log_probs=False`); the step is `trainer.training_step(model, inputs)` (its
        `compute_loss`, fused LM head, metrics and backward) + `trainer.optimizer.step()`, on a batch
        drawn from the trainer's own dataloader and collator.

Same batch: the pairs are text built from single-token words so that every prompt is exactly
`--prompt-len` tokens and every response `--response-len` tokens (EOS included). TRL tokenises
them itself; our rows are TRL's tokenised `prompt_ids`/`chosen_ids`/`rejected_ids`, collated by
`PreferenceCollator`. The script asserts that both batches hold the same token rows and prints the
tokens per step of each.

Method:
  time    both contenders live in this process; after `--warmup` steps each they run in turn,
          `--rounds` times (ours, TRL, ours, TRL, …), so background load hits both alike; medians.
          On CPU torch runs 1 intra-op thread by default: on a shared 2-core machine 2 threads
          wait on each other and a step takes 3-5x longer and far noisier (`--threads` to change).
  memory  each contender in its own fresh process (multiprocessing 'spawn'; the two processes
          run at the same time, after the timing): after at least one warm-up step, the peak
          memory of one step minus the memory held just before it (median over `--memory-steps`). CPU: the peak resident set (`VmHWM`, reset through
          `/proc/self/clear_refs` before each step) minus the resident set before the step, with
          glibc told to return large blocks to the OS (`MALLOC_MMAP_THRESHOLD_`) so that freed
          activations do not hide in the heap; CUDA: `torch.cuda.max_memory_allocated()` minus
          `memory_allocated()` before the step. Memory held between steps (weights, optimiser
          state) is printed beside it; the absolute peak (held + the step's growth) is the
          memory target.
  speed   tokens per second (the batch's real tokens over the median step time) and model
          FLOPs utilisation: `step_flops` (3 forward passes; see its docstring) per second over
          `--peak-tflops`, the device's dense bf16 peak (989.4 TFLOP/s, the H200/H100 SXM
          spec sheet's figure, on CUDA; none on CPU).
  code    the contenders are in `dpo_contenders.py`, the memory workers in `dpo_memory.py`.

Ratios are ours / TRL; the target is <= 1.0 on both, although ours trains two objectives.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

for _key, _value in {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "WANDB_MODE": "offline",
    "TOKENIZERS_PARALLELISM": "false",
    "TQDM_DISABLE": "1",
}.items():
    os.environ.setdefault(_key, _value)

import warnings  # noqa: E402

import torch  # noqa: E402
from adapter_overhead import SIZES, build, llama_config  # noqa: E402  (bench/ on sys.path)
from dpo_contenders import (  # noqa: E402
    CONTENDERS,
    NUM_DIMENSIONS,
    _sync,
    build_model_dir,
    check_same_batch,
    make_contender,
    make_pairs,
    token_counts,
)
from dpo_memory import measure_memory  # noqa: E402

# transformers 5 renames `gradient_checkpointing`; TRL and PEFT still read the old names.
warnings.filterwarnings(
    "ignore", message=".*is deprecated and will be removed in v6", category=FutureWarning
)


# ---- time: interleaved in this process ----------------------------------------------------------


def measure_time(contenders: dict, args) -> dict[str, float]:
    steps = {name: c[0] for name, c in contenders.items()}
    for _ in range(args.warmup):
        for fn in steps.values():
            fn()
    times = {name: [] for name in steps}
    for _ in range(args.rounds):
        for name, fn in steps.items():
            _sync(args.device)
            start = time.perf_counter()
            fn()
            _sync(args.device)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


# ---- main ---------------------------------------------------------------------------------------


def step_flops(size: str, batch: dict) -> float:
    """Model FLOPs of one step: 3 forward passes over the batch (policy forward, its backward
    to the activations only, as the base is frozen, and the reference forward). One forward is
    2·N per position (N: the weights of every matrix product, LM head included, embeddings
    not) plus 4·L·s·d per position for QKᵀ and PV over the full s × s square. The adapter's
    rank-r products (< 1 %) are not counted; both contenders get the same count."""
    config = llama_config(size)
    model = build(size=size, device="meta")
    n = sum(p.numel() for p in model.parameters()) - model.get_input_embeddings().weight.numel()
    rows, s = batch["input_ids"].shape
    attention = 4 * config.num_hidden_layers * s * config.hidden_size
    return 3.0 * rows * s * (2 * n + attention)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--device", choices=["cpu", "cuda"], default="cpu")
    add(
        "--dtype",
        choices=["float32", "bfloat16"],
        default=None,
        help="base weights (default: float32 on CPU, bfloat16 on CUDA); adapters stay float32",
    )
    add("--size", choices=sorted(SIZES), default="small", help="model shape (adapter_overhead)")
    add("--num-general", type=int, default=8, help="k; total rank k + 2 (default 10)")
    add("--pairs", type=int, default=8, help="preference pairs per batch")
    add("--prompt-len", type=int, default=64)
    add("--response-len", type=int, default=64, help="tokens incl. EOS")
    add("--beta", type=float, default=0.1)
    add("--lr", type=float, default=1e-4)
    add("--warmup", type=int, default=1, help="untimed steps per contender")
    add("--rounds", type=int, default=6, help="timed steps per contender")
    add("--memory-steps", type=int, default=1, help="measured steps per process")
    add(
        "--threads",
        type=int,
        default=None,
        help="torch intra-op threads (default: 1 on CPU, see the docstring; torch's on CUDA)",
    )
    add(
        "--peak-tflops",
        type=float,
        default=None,
        help="the device's dense bf16 peak for MFU (default: 989.4 on CUDA = H200/H100 SXM)",
    )
    add("--json", type=Path, default=None, help="also write every number to this file")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device")
    if args.dtype is None:
        args.dtype = "float32" if args.device == "cpu" else "bfloat16"
    if args.threads is None:
        args.threads = 1 if args.device == "cpu" else torch.get_num_threads()
    if args.peak_tflops is None and args.device == "cuda":
        args.peak_tflops = 989.4
    return args


def run(args) -> dict:
    """Build both contenders on one model folder and batch; time them and their memory."""
    import peft
    import transformers
    import trl
    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory(prefix="dpo_step_") as tmp:
        model_dir = build_model_dir(Path(tmp) / "model", args.size, args.dtype)
        pairs = make_pairs(AutoTokenizer.from_pretrained(model_dir), args)
        trl_side = make_contender("trl", model_dir, pairs, None, args, Path(tmp))
        tokenised = trl_side[3]
        contenders = {
            "ours": make_contender("ours", model_dir, pairs, tokenised, args, Path(tmp)),
            "trl": trl_side,
        }
        ours_batch, trl_batch = contenders["ours"][1], contenders["trl"][1]
        check_same_batch(ours_batch, trl_batch)
        counts = {
            "ours": token_counts(ours_batch, "response_mask"),
            "trl": token_counts(trl_batch, "completion_mask"),
        }
        n_trained = {name: sum(p.numel() for p in c[2]) for name, c in contenders.items()}
        seconds = measure_time(contenders, args)
        flops = step_flops(args.size, ours_batch)
        del contenders, trl_side
        if args.device == "cuda":
            torch.cuda.empty_cache()
        # Memory: one fresh process per contender (this one waits meanwhile).
        memory = measure_memory(CONTENDERS, model_dir, pairs, tokenised, args)
    versions = {m.__name__: m.__version__ for m in (torch, transformers, trl, peft)}
    result = {"config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}}
    result.update(versions=versions, tokens=counts, trained_parameters=n_trained)
    result["model_flops_per_step"] = flops
    for name in CONTENDERS:
        side = result[name] = {"seconds": seconds[name], **memory[name]}
        side["tokens_per_s"] = counts[name]["tokens"] / seconds[name]
        side["tflops"] = flops / seconds[name] / 1e12
        side["mfu"] = side["tflops"] / args.peak_tflops if args.peak_tflops else None
    result["time_ratio"] = seconds["ours"] / seconds["trl"]
    result["step_memory_ratio"] = memory["ours"]["step_peak"] / memory["trl"]["step_peak"]
    result["peak_memory_ratio"] = memory["ours"]["peak"] / memory["trl"]["peak"]
    result["targets_met"] = {
        "tokens_per_s>=trl": result["ours"]["tokens_per_s"] >= result["trl"]["tokens_per_s"],
        "peak_memory<=trl": memory["ours"]["peak"] <= memory["trl"]["peak"],
    }
    return result


def report(r: dict, args) -> None:
    print(
        f"model: Llama-style ({args.size}), {args.pairs} pairs x ({args.prompt_len} prompt + "
        f"{args.response_len} response) tokens, rank {args.num_general}+{NUM_DIMENSIONS} vs LoRA "
        f"r={args.num_general + NUM_DIMENSIONS}, {args.device} {args.dtype}, {args.threads} threads"
    )
    print(", ".join(f"{k} {v}" for k, v in r["versions"].items()))
    print("\ntokens per step (each side runs a policy and a reference forward over them)")
    print(f"  {'':28s}{'ours':>10s}{'TRL':>10s}")
    for key in r["tokens"]["ours"]:
        print(f"  {key:28s}{r['tokens']['ours'][key]:>10d}{r['tokens']['trl'][key]:>10d}")
    trained = r["trained_parameters"]
    print(f"  {'trained parameters':28s}{trained['ours']:>10d}{trained['trl']:>10d}")
    print("  same token rows on both sides: yes")
    mib = 1024**2
    ours, trl = r["ours"], r["trl"]
    print(
        f"\none DPO training step: ours = Panacea, {NUM_DIMENSIONS} objectives; "
        "TRL = DPOTrainer + PEFT LoRA, 1 objective"
    )
    print(f"  {'':34s}{'ours':>10s}{'TRL':>10s}{'ours/TRL':>10s}")
    rows = [
        ("time, median (s)", ours["seconds"], trl["seconds"], ".3f", "target <= 1.00"),
        ("tokens per second", ours["tokens_per_s"], trl["tokens_per_s"], ".0f", "target >= 1.00"),
        (
            "peak memory of a step (MiB)",
            ours["step_peak"] / mib,
            trl["step_peak"] / mib,
            ".1f",
            "target <= 1.00",
        ),
        (
            "peak memory, absolute (MiB)",
            ours["peak"] / mib,
            trl["peak"] / mib,
            ".1f",
            "target <= 1.00",
        ),
        ("memory held between steps (MiB)", ours["held"] / mib, trl["held"] / mib, ".1f", "(info)"),
        ("model TFLOP/s", ours["tflops"], trl["tflops"], ".2f", "(info)"),
    ]
    for label, a, b, fmt, note in rows:
        print(f"  {label:34s}{a:>10{fmt}}{b:>10{fmt}}{a / b:>10.3f}   {note}")
    if args.peak_tflops:
        print(
            f"  MFU against {args.peak_tflops:g} TFLOP/s: ours {100 * ours['mfu']:.1f} %, "
            f"TRL {100 * trl['mfu']:.1f} %"
        )
    print(
        f"  time: {args.rounds} interleaved rounds after {args.warmup} warm-up steps; memory: "
        f"{ours['method']}, median of {args.memory_steps} steps, one process each"
    )


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    result = run(args)
    report(result, args)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
