"""One DPO training step, side by side in one run: Panacea multi-objective DPO vs TRL + PEFT LoRA.

    .venv/bin/python bench/dpo_step.py                  # CPU, fp32 (~2-3 min, 2 cores)
    .venv/bin/python bench/dpo_step.py --device cuda    # GPU, bf16 weights (--dtype to change)
    .venv/bin/python bench/dpo_step.py --pairs 8 --prompt-len 64 --response-len 64 --rounds 8

Needs the `[bench]` extra (trl, peft). Both contenders load the SAME folder with `from_pretrained`:
a ~20M-parameter Llama-style model (`adapter_overhead.build`, random weights; speed does not depend
on them) saved beside a byte-level BPE tokenizer trained locally (`tests/tiny.py`).

Contenders (one training step = policy forward with the adapter on, reference forward with the
adapter off, backward, AdamW step on the adapter; no gradient checkpointing, no dropout):

  ours  `PanaceaDPO(PanaceaPolicy(path, PanaceaConfig(rank=k, num_preferences=2)))`, TWO
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
          state) is printed beside it but is not the target.

Ratios are ours / TRL; the target is <= 1.0 on both, although ours trains two objectives.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
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

import multiprocessing as mp  # noqa: E402
import warnings  # noqa: E402

import torch  # noqa: E402
from adapter_overhead import TARGETS, build  # noqa: E402  (bench/ is on sys.path as the script dir)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import tiny  # noqa: E402

# transformers 5 renames `gradient_checkpointing`; TRL and PEFT still read the old names.
warnings.filterwarnings(
    "ignore", message=".*is deprecated and will be removed in v6", category=FutureWarning
)

NUM_DIMENSIONS = 2
CONTENDERS = ("ours", "trl")


# ---- model folder and pairs ---------------------------------------------------------------------


def build_model_dir(path: Path) -> Path:
    """Save `adapter_overhead.build()` and the locally trained tiny tokenizer into `path`."""
    tiny.build_tokenizer(path)
    build().save_pretrained(path)
    return path


def _single_token_words(tokenizer) -> list[str]:
    vocab = [t[1:] for t in tokenizer.get_vocab() if t.startswith("Ġ") and t[1:].isalpha()]
    return sorted(w for w in vocab if len(tokenizer(" " + w)["input_ids"]) == 1)


def make_pairs(tokenizer, args) -> list[dict]:
    """Text pairs whose prompts tokenise to exactly `prompt_len` tokens and whose responses, with
    the EOS that TRL appends, to exactly `response_len` tokens; plus our 2-dimension labels."""
    words = _single_token_words(tokenizer)
    rng = random.Random(0)

    def text(n: int) -> str:
        return "".join(" " + rng.choice(words) for _ in range(n))

    return [
        {
            "prompt": text(args.prompt_len),
            "chosen": text(args.response_len - 1),
            "rejected": text(args.response_len - 1),
            "labels": [rng.choice([1, -1]) for _ in range(NUM_DIMENSIONS)],
        }
        for _ in range(args.pairs)
    ]


# ---- contenders ---------------------------------------------------------------------------------


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def make_trl(model_dir: Path, pairs: list[dict], args, workdir: Path):
    """TRL's DPOTrainer with a PEFT LoRA of rank k + 2.

    Returns (step, batch, trained parameters, the pairs as TRL tokenised them)."""
    from datasets import Dataset, disable_progress_bars
    from peft import LoraConfig
    from transformers import AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    disable_progress_bars()
    cuda = args.device == "cuda"
    bf16 = args.dtype == "bfloat16"
    config = DPOConfig(
        output_dir=str(workdir / "trl"),
        per_device_train_batch_size=args.pairs,
        learning_rate=args.lr,
        weight_decay=0.0,
        optim="adamw_torch",
        lr_scheduler_type="constant",
        beta=args.beta,
        loss_type="sigmoid",
        max_length=args.prompt_len + args.response_len,  # no truncation: the pairs are this long
        activation_checkpointing=False,  # `gradient_checkpointing`, default True in TRL
        disable_dropout=True,
        precompute_ref_log_probs=False,
        bf16=bf16,  # TRL's mixed precision (autocast) on top of bf16 weights, as a user runs it
        use_cpu=not cuda,
        model_init_kwargs={"dtype": args.dtype},
        report_to="none",
        logging_strategy="no",
        save_strategy="no",
        dataloader_num_workers=0,
        seed=0,
    )
    dataset = Dataset.from_list(
        [{k: p[k] for k in ("prompt", "chosen", "rejected")} for p in pairs]
    )
    trainer = DPOTrainer(
        model=str(model_dir),
        args=config,
        train_dataset=dataset,
        processing_class=AutoTokenizer.from_pretrained(model_dir),
        peft_config=LoraConfig(
            r=args.rank + NUM_DIMENSIONS,
            lora_alpha=args.rank + NUM_DIMENSIONS,
            lora_dropout=0.0,
            target_modules=TARGETS,
            task_type="CAUSAL_LM",
        ),
    )
    if trainer.args.gradient_checkpointing or trainer.ref_model is not None:
        raise RuntimeError("TRL side: expected no checkpointing and the reference = adapter off")
    trainer.create_optimizer()
    # Set by Trainer's own loop, which this bypasses: one step, no gradient accumulation.
    trainer.current_gradient_accumulation_steps = 1
    model = trainer.model
    batch = next(iter(trainer.get_train_dataloader()))

    def step() -> None:
        trainer.training_step(model, batch)
        trainer.optimizer.step()
        trainer.optimizer.zero_grad(set_to_none=True)

    params = [p for p in model.parameters() if p.requires_grad]
    tokenised = [
        {k: list(row[k]) for k in ("prompt_ids", "chosen_ids", "rejected_ids")}
        for row in trainer.train_dataset
    ]
    lengths = {
        (len(t["prompt_ids"]), len(t["chosen_ids"]), len(t["rejected_ids"])) for t in tokenised
    }
    if lengths != {(args.prompt_len, args.response_len, args.response_len)}:
        raise AssertionError(f"TRL tokenised the pairs to (prompt, chosen, rejected) = {lengths}")
    return step, batch, params, tokenised


def make_ours(model_dir: Path, tokenised, pairs: list[dict], args):
    """PanaceaDPO with 2 dimensions on TRL's tokenised pairs; returns (step, batch, params)."""
    from panacea_pl.data.collate import PreferenceCollator
    from panacea_pl.layers import PanaceaConfig
    from panacea_pl.models import PanaceaPolicy
    from panacea_pl.modules import PanaceaDPO
    from panacea_pl.objectives import MultiObjectiveDPOLoss

    torch.manual_seed(0)
    policy = PanaceaPolicy(
        str(model_dir),
        adapter=PanaceaConfig(
            rank=args.rank, num_preferences=NUM_DIMENSIONS, target_modules=TARGETS
        ),
        dtype=args.dtype,
        gradient_checkpointing=False,
        disable_dropout=True,
    )
    module = PanaceaDPO(policy, loss=MultiObjectiveDPOLoss(beta=args.beta)).to(args.device)
    module.train()
    pad_id = policy.tokenizer().pad_token_id
    rows = [
        {
            "prompt_ids": t["prompt_ids"],
            "response_a_ids": t["chosen_ids"],
            "response_b_ids": t["rejected_ids"],
            "labels": p["labels"],
            "is_safe_a": -1,
            "is_safe_b": -1,
        }
        for t, p in zip(tokenised, pairs, strict=True)
    ]
    batch = {k: v.to(args.device) for k, v in PreferenceCollator(pad_token_id=pad_id)(rows).items()}
    params = module.policy.adapter.parameters()
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    size = module.batch_size_of(batch)

    def step() -> None:
        preference = module.sample_preference(size)
        losses = module.dimension_losses(batch, preference)
        loss = module.aggregate(losses, preference)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step, batch, params


def make_contender(name: str, model_dir: Path, pairs: list[dict], tokenised, args, workdir: Path):
    """Build one contender: (step, batch, trained parameters, TRL's tokenised pairs)."""
    if name == "trl":
        return make_trl(model_dir, pairs, args, workdir)
    return (*make_ours(model_dir, tokenised, pairs, args), tokenised)


# ---- batch check --------------------------------------------------------------------------------


def token_counts(batch: dict, response_key: str) -> dict[str, int]:
    return {
        "sequences": batch["input_ids"].shape[0],
        "width": batch["input_ids"].shape[1],
        "positions": batch["input_ids"].numel(),
        "tokens": int(batch["attention_mask"].sum()),
        "response tokens": int(batch[response_key].sum()),
    }


def check_same_batch(ours: dict, trl: dict) -> None:
    """Both batches hold the same token rows (TRL's sampler may order the pairs differently)."""

    def rows(batch):
        ids, mask = batch["input_ids"].cpu(), batch["attention_mask"].cpu().bool()
        return sorted(tuple(r[m].tolist()) for r, m in zip(ids, mask, strict=True))

    if rows(ours) != rows(trl):
        raise AssertionError("ours and TRL's batches hold different token sequences")
    ours_resp = int(ours["response_mask"].sum())
    trl_resp = int(trl["completion_mask"].sum())
    if ours_resp != trl_resp:
        raise AssertionError(f"response tokens differ: ours {ours_resp}, TRL {trl_resp}")


# ---- memory: one fresh process per contender ----------------------------------------------------


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


def _memory_worker(name: str, model_dir: str, pairs, tokenised, args) -> dict:
    import gc

    torch.set_num_threads(args.threads)
    workdir = Path(tempfile.mkdtemp(prefix=f"dpo_step_{name}_"))
    step = make_contender(name, Path(model_dir), pairs, tokenised, args, workdir)[0]
    gc.collect()
    for _ in range(max(args.warmup, 1)):  # optimiser state and lazy initialisation happen here
        step()
    _sync(args.device)
    growths, held = [], []
    for _ in range(args.memory_steps):
        gc.collect()
        if args.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
            step()
            torch.cuda.synchronize()
            growths.append(torch.cuda.max_memory_allocated() - before)
            held.append(before)
            method = "torch.cuda.max_memory_allocated"
        else:
            exact = _reset_peak_rss()
            before = _rss_kib("VmRSS")
            if not exact:  # fall back to the lifetime peak: a lower bound on the step's growth
                import resource

                before = max(before, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
            step()
            peak = _rss_kib("VmHWM")
            growths.append((peak - before) * 1024)
            held.append(before * 1024)
            method = "VmHWM - VmRSS" if exact else "ru_maxrss (lower bound)"
    return {
        "step_peak": statistics.median(growths),
        "held": statistics.median(held),
        "method": method,
    }


def measure_memory(model_dir: Path, pairs, tokenised, args) -> dict[str, dict]:
    """Each contender in its own fresh 'spawn' process; the two run at the same time (each
    process's peak is its own, so they do not disturb each other's numbers)."""
    saved = os.environ.get("MALLOC_MMAP_THRESHOLD_")
    os.environ["MALLOC_MMAP_THRESHOLD_"] = str(128 * 1024)  # the child's glibc reads it at start
    try:
        with ProcessPoolExecutor(
            len(CONTENDERS), mp_context=mp.get_context("spawn"), max_tasks_per_child=1
        ) as pool:
            futures = {
                name: pool.submit(_memory_worker, name, str(model_dir), pairs, tokenised, args)
                for name in CONTENDERS
            }
            return {name: f.result() for name, f in futures.items()}
    finally:
        if saved is None:
            os.environ.pop("MALLOC_MMAP_THRESHOLD_", None)
        else:
            os.environ["MALLOC_MMAP_THRESHOLD_"] = saved


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument(
        "--dtype",
        choices=["float32", "bfloat16"],
        default=None,
        help="base weights (default: float32 on CPU, bfloat16 on CUDA); adapters stay float32",
    )
    parser.add_argument("--rank", type=int, default=8, help="k; total rank k + 2 (default 10)")
    parser.add_argument("--pairs", type=int, default=8, help="preference pairs per batch")
    parser.add_argument("--prompt-len", type=int, default=64)
    parser.add_argument("--response-len", type=int, default=64, help="tokens incl. EOS")
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per contender")
    parser.add_argument("--rounds", type=int, default=6, help="timed steps per contender")
    parser.add_argument("--memory-steps", type=int, default=1, help="measured steps per process")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch intra-op threads (default: 1 on CPU, see the docstring; torch's on CUDA)",
    )
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device")
    if args.dtype is None:
        args.dtype = "float32" if args.device == "cpu" else "bfloat16"
    if args.threads is None:
        args.threads = 1 if args.device == "cpu" else torch.get_num_threads()
    torch.set_num_threads(args.threads)

    import peft
    import transformers
    import trl
    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory(prefix="dpo_step_") as tmp:
        model_dir = build_model_dir(Path(tmp) / "model")
        n_params = sum(p.numel() for p in build().parameters())
        print(
            f"model: Llama-style, {n_params / 1e6:.1f}M parameters, {args.pairs} pairs x "
            f"({args.prompt_len} prompt + {args.response_len} response) tokens, rank "
            f"{args.rank}+{NUM_DIMENSIONS} vs LoRA r={args.rank + NUM_DIMENSIONS}, "
            f"{args.device} {args.dtype}, "
            f"{args.threads} threads"
        )
        print(
            f"torch {torch.__version__}, transformers {transformers.__version__}, "
            f"trl {trl.__version__}, peft {peft.__version__}"
        )

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
        # Memory: one fresh process per contender (this one waits meanwhile).
        memory = measure_memory(model_dir, pairs, tokenised, args)

    print("\ntokens per step (each side runs a policy and a reference forward over them)")
    print(f"  {'':28s}{'ours':>10s}{'TRL':>10s}")
    for key in counts["ours"]:
        print(f"  {key:28s}{counts['ours'][key]:>10d}{counts['trl'][key]:>10d}")
    print(f"  {'trained parameters':28s}{n_trained['ours']:>10d}{n_trained['trl']:>10d}")
    print("  same token rows on both sides: yes")

    mib = 1024**2
    t_ratio = seconds["ours"] / seconds["trl"]
    m_ratio = memory["ours"]["step_peak"] / memory["trl"]["step_peak"]
    print(
        f"\none DPO training step: ours = Panacea, {NUM_DIMENSIONS} objectives; "
        "TRL = DPOTrainer + PEFT LoRA, 1 objective"
    )
    print(f"  {'':34s}{'ours':>10s}{'TRL':>10s}{'ours/TRL':>10s}")
    print(
        f"  {'time, median (s)':34s}{seconds['ours']:>10.3f}{seconds['trl']:>10.3f}"
        f"{t_ratio:>10.3f}   target <= 1.00"
    )
    print(
        f"  {'peak memory of a step (MiB)':34s}{memory['ours']['step_peak'] / mib:>10.1f}"
        f"{memory['trl']['step_peak'] / mib:>10.1f}{m_ratio:>10.3f}   target <= 1.00"
    )
    print(
        f"  {'memory held between steps (MiB)':34s}{memory['ours']['held'] / mib:>10.1f}"
        f"{memory['trl']['held'] / mib:>10.1f}"
        f"{memory['ours']['held'] / memory['trl']['held']:>10.3f}   (info)"
    )
    print(
        f"  time: {args.rounds} interleaved rounds after {args.warmup} warm-up steps; memory: "
        f"{memory['ours']['method']}, median of {args.memory_steps} steps, one process each"
    )


if __name__ == "__main__":
    main()
