"""The two contenders of `bench/dpo_step.py` (see its docstring): a model folder, pairs of
exact token lengths, TRL's DPOTrainer + PEFT LoRA, and PanaceaDPO; not run on its own."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import torch
from adapter_overhead import TARGETS, build

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import tiny  # noqa: E402

NUM_DIMENSIONS = 2
CONTENDERS = ("ours", "trl")


# ---- model folder and pairs ---------------------------------------------------------------------


def build_model_dir(path: Path, size: str = "small", dtype: str = "float32") -> Path:
    """Save `adapter_overhead.build(size=size)` and the locally trained tiny tokenizer."""
    tiny.build_tokenizer(path)
    device = "cuda" if torch.cuda.is_available() else "cpu"  # fast random init of a 1B model
    build(size=size, device=device, dtype=dtype).save_pretrained(path)
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
        # TRL's default is True; the old name, because transformers < 5.24 (the GPU image has
        # 5.17) lacks `activation_checkpointing`, and 5.24 maps the old name onto it
        gradient_checkpointing=False,
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
            r=args.num_general + NUM_DIMENSIONS,
            lora_alpha=args.num_general + NUM_DIMENSIONS,
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
            num_general=args.num_general, num_preferences=NUM_DIMENSIONS, target_modules=TARGETS
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
    bf16 = args.dtype == "bfloat16"  # fp32 adapter over a bf16 base: Lightning's bf16-mixed

    def step() -> None:
        preference = module.sample_preference(size)
        with torch.autocast(args.device, dtype=torch.bfloat16, enabled=bf16):
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
