"""One GRPO iteration, side by side in one run: Panacea-GRPO (m = 2, one λ per group) vs TRL's
`GRPOTrainer` + PEFT LoRA with two reward functions and fixed `reward_weights`.

    .venv/bin/python bench/grpo_step.py                    # CPU, fp32, a few minutes on 2 cores
    .venv/bin/python bench/grpo_step.py --prompts 4 --group 4 --new-tokens 32 --rounds 3

Needs the `[bench]` extra (trl, peft). Both load the SAME folder with `from_pretrained`: the
~20M-parameter Llama-style model of `adapter_overhead.build` (random weights) and the tiny
tokenizer of `tests/tiny.py` (what `bench/dpo_step.py` uses).

One iteration = generation of G responses for each prompt, scoring by two reward functions,
token log-probs under the policy and the reference (adapter off), one backward and an AdamW step
on the adapter (one pass, one minibatch, KL β·k3 in the loss on both sides, no gradient
checkpointing, no dropout, ancestral sampling at temperature 1, at most `--new-tokens` tokens):

  ours  `PanaceaGRPO(PanaceaPolicy(path, PanaceaConfig(num_general=k, num_preferences=2)))`: λ drawn
        per prompt and set per row in one `generate`; the iteration is `score_rollout` →
        `advantages` → `grpo_loss` → backward → AdamW (what `training_step` runs, minus
        Lightning's logging and `manual_backward`); one on-policy step with the KL in the loss
        needs no separate log π_old pass (`needs_old_logps`), as TRL with `num_iterations=1`.
        Each prompt runs once per group where its G rows share it (`sample_and_score`'s
        `share_prompts`: the generation's prefill and the reference pass start from one KV
        cache of the prompt; `PanaceaGRPO.token_logps`: so does the loss's forward and
        backward), and the LM head runs on the response positions only.
  TRL   `GRPOTrainer(peft_config=LoraConfig(r=k + 2))`, `reward_weights=[0.5, 0.5]`,
        `bf16=False` (`GRPOConfig` defaults to bf16 autocast, which would run TRL's log-prob
        passes and backward in bf16 against our fp32; `--trl-bf16` keeps that default, for
        reference only); the iteration is `trainer.training_step(model, inputs)` (its
        generation, scoring, reference pass, loss and backward) + `trainer.optimizer.step()`.
        It runs every row's prompt (G prefills and reference passes of each prompt) and, on
        CPU, its fused LM head on every position; it also computes the token entropies.

Time: interleaved rounds in this process (ours, TRL, ours, …), medians. Memory: each side in a
fresh 'spawn' process, the peak resident set of one iteration minus the resident set before it
(`bench/dpo_step.py`'s method). Prints response tokens per iteration of each side (generation
stops at EOS, so the two may differ) and the ratios ours / TRL.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import dpo_step  # noqa: F401  (sets the offline environment first; bench/ is the script dir)
import torch
from adapter_overhead import TARGETS
from dpo_contenders import _single_token_words, build_model_dir
from dpo_memory import _reset_peak_rss, _rss_kib

M = 2


def reward_vowels(completions, **kwargs) -> list[float]:
    """Share of vowels among the letters of each completion (dimension 1)."""
    return [sum(c in "aeiou" for c in t) / max(sum(c.isalpha() for c in t), 1) for t in completions]


def reward_short_words(completions, **kwargs) -> list[float]:
    """Share of words of at most 4 letters (dimension 2)."""
    return [sum(len(w) <= 4 for w in t.split()) / max(len(t.split()), 1) for t in completions]


def make_prompts(tokenizer, args) -> list[str]:
    words = _single_token_words(tokenizer)
    return [
        "".join(" " + words[(7 * i + 3 * j) % len(words)] for j in range(args.prompt_len))
        for i in range(args.prompts)
    ]


def make_trl(model_dir: Path, prompts: list[str], args, workdir: Path):
    from datasets import Dataset, disable_progress_bars
    from peft import LoraConfig
    from transformers import AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    disable_progress_bars()
    n = args.prompts * args.group
    config = GRPOConfig(
        output_dir=str(workdir / "trl"),
        per_device_train_batch_size=n,
        num_generations=args.group,
        max_completion_length=args.new_tokens,
        temperature=1.0,
        top_k=0,
        top_p=1.0,
        beta=args.beta,
        num_iterations=1,
        bf16=args.trl_bf16,  # TRL's default is bf16 autocast; both sides run fp32 unless asked
        reward_weights=[0.5, 0.5],
        learning_rate=args.lr,
        weight_decay=0.0,
        optim="adamw_torch",
        lr_scheduler_type="constant",
        gradient_checkpointing=False,
        disable_dropout=True,
        use_cpu=True,
        report_to="none",
        logging_strategy="no",
        save_strategy="no",
        dataloader_num_workers=0,
        seed=0,
    )
    trainer = GRPOTrainer(
        model=str(model_dir),
        reward_funcs=[reward_vowels, reward_short_words],
        args=config,
        train_dataset=Dataset.from_list([{"prompt": p} for p in prompts]),
        processing_class=AutoTokenizer.from_pretrained(model_dir, padding_side="left"),
        peft_config=LoraConfig(
            r=args.num_general + M,
            lora_alpha=args.num_general + M,
            lora_dropout=0.0,
            target_modules=TARGETS,
            task_type="CAUSAL_LM",
        ),
    )
    trainer.create_optimizer()
    trainer.current_gradient_accumulation_steps = 1
    model = trainer.model
    model.train()
    batches = iter(trainer.get_train_dataloader())
    batch = next(batches)
    stats = {}

    def step() -> None:
        trainer.training_step(model, batch, None)
        trainer.optimizer.step()
        trainer.optimizer.zero_grad(set_to_none=True)
        buffered = getattr(trainer, "_buffered_inputs", None)
        if buffered:
            stats["response tokens"] = int(buffered[0]["completion_mask"].sum())

    return step, stats


def make_ours(model_dir: Path, prompts: list[str], args):
    from transformers import AutoTokenizer

    from panacea_pl.data.collate import PromptCollator
    from panacea_pl.layers import PanaceaConfig
    from panacea_pl.models import PanaceaPolicy
    from panacea_pl.modules import PanaceaGRPO, RewardFunction

    tokenizer = AutoTokenizer.from_pretrained(model_dir)

    class TwoRewards(RewardFunction):
        dimension_names = ["vowels", "short_words"]

        def forward(self, rollout):
            texts = tokenizer.batch_decode(rollout.response_ids(), skip_special_tokens=True)
            scores = [reward_vowels(texts), reward_short_words(texts)]
            return torch.tensor(scores).T

    torch.manual_seed(0)
    policy = PanaceaPolicy(
        str(model_dir),
        adapter=PanaceaConfig(
            num_general=args.num_general, num_preferences=M, target_modules=TARGETS
        ),
        gradient_checkpointing=False,
        disable_dropout=True,
    )
    module = PanaceaGRPO(
        policy,
        TwoRewards(),
        group_size=args.group,
        kl_coef=args.beta,
        kl_in="loss",
        max_new_tokens=args.new_tokens,
    ).train()
    ids = [tokenizer(p)["input_ids"] for p in prompts]
    rows = [{"prompt": p, "prompt_ids": i} for p, i in zip(prompts, ids, strict=True)]
    batch = PromptCollator(tokenizer.pad_token_id)(rows)
    opt = torch.optim.AdamW(module.policy.adapter.parameters(), lr=args.lr, weight_decay=0.0)
    n = args.prompts * args.group
    stats = {}

    def step() -> None:
        scored = module.score_rollout(batch, policy_logps=module.needs_old_logps(n))
        advantages = module.advantages(scored).advantages
        module.grpo_loss(scored, advantages, torch.arange(len(scored))).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        stats["response tokens"] = int(scored.mask.sum())

    return step, stats


def make(name: str, model_dir: Path, prompts, args, workdir: Path):
    return (
        make_trl(model_dir, prompts, args, workdir)
        if name == "trl"
        else make_ours(model_dir, prompts, args)
    )


def _memory_worker(name: str, model_dir: str, prompts, args) -> dict:
    import gc

    torch.set_num_threads(1)
    step, stats = make(name, Path(model_dir), prompts, args, Path(tempfile.mkdtemp()))
    step()  # warm-up: optimiser state, lazy initialisation
    gc.collect()
    exact = _reset_peak_rss()
    before = _rss_kib("VmRSS")
    step()
    return {"peak": (_rss_kib("VmHWM") - before) * 1024, "exact": exact, **stats}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-general", type=int, default=8)
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--group", type=int, default=4, help="G responses per prompt")
    parser.add_argument("--prompt-len", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--beta", type=float, default=0.04)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--trl-bf16",
        action="store_true",
        help="TRL with its default bf16 autocast (ours stays fp32: not like for like)",
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory(prefix="grpo_step_") as tmp:
        model_dir = build_model_dir(Path(tmp) / "model")
        prompts = make_prompts(AutoTokenizer.from_pretrained(model_dir), args)
        sides = {name: make(name, model_dir, prompts, args, Path(tmp)) for name in ("ours", "trl")}
        for step, _ in sides.values():
            step()  # warm-up
        times = {name: [] for name in sides}
        for _ in range(args.rounds):
            for name, (step, _) in sides.items():
                start = time.perf_counter()
                step()
                times[name].append(time.perf_counter() - start)
        seconds = {name: statistics.median(t) for name, t in times.items()}
        os.environ["MALLOC_MMAP_THRESHOLD_"] = str(128 * 1024)
        with ProcessPoolExecutor(
            2, mp_context=__import__("multiprocessing").get_context("spawn")
        ) as pool:
            futures = {
                n: pool.submit(_memory_worker, n, str(model_dir), prompts, args) for n in sides
            }
            memory = {n: f.result() for n, f in futures.items()}
    print(
        f"{args.prompts} prompts × G = {args.group}, ≤ {args.new_tokens} new tokens, rank "
        f"{args.num_general}+{M} vs LoRA r={args.num_general + M}, CPU fp32"
        f"{' (TRL bf16 autocast)' if args.trl_bf16 else ''}, 1 thread, {args.rounds} rounds"
    )
    for name in sides:
        print(
            f"  {name:4s}  {seconds[name]:7.2f} s/iteration   peak +{memory[name]['peak'] / 2**20:7.1f} MiB"
            f"   response tokens {sides[name][1].get('response tokens')}"
        )
    print(
        f"  ours / TRL: time {seconds['ours'] / seconds['trl']:.2f}, "
        f"peak memory {memory['ours']['peak'] / max(memory['trl']['peak'], 1):.2f}"
    )


if __name__ == "__main__":
    sys.exit(main())
