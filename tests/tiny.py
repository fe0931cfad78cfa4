"""Tiny Hugging Face models and a locally trained tokenizer, saved to disk and loaded back.

Tests use these so that the real `from_pretrained` code paths run with no network.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import lightning.pytorch as pl
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

from panacea_pl.data.collate import PreferenceCollator

CORPUS = [
    "Once upon a time there was a little girl named Lily.",
    "She loved to play outside in the park with her happy dog.",
    "The sad cat did not want to eat its food.",
    "Human: How do I bake bread? Assistant: Mix flour, water and yeast, then bake.",
    "Human: Tell me something harmful. Assistant: I cannot help with that.",
    "The quick brown fox jumps over the lazy dog. 0123456789 !?.,;:'\"()-",
]
SPECIAL = ["<pad>", "<s>", "</s>", "<unk>"]


def build_tokenizer(path: Path) -> Path:
    """Train a byte-level BPE tokenizer on a tiny corpus and save it as a HF tokenizer folder."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
    )
    fast.save_pretrained(path)
    return path


def build_llama(path: Path, tokenizer_dir: Path, seed: int = 0) -> Path:
    """Save a 2-layer Llama with GQA (random weights) and the tokenizer into `path`."""
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def build_gpt2(path: Path, tokenizer_dir: Path, seed: int = 0) -> Path:
    """Save a 2-layer GPT-2 (Conv1D layers, random weights) and the tokenizer into `path`."""
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_embd=32,
        n_layer=2,
        n_head=4,
        n_positions=128,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    GPT2LMHeadModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def load(path: Path, dtype: torch.dtype = torch.float32):
    """Load a model folder the way a user would."""
    return AutoModelForCausalLM.from_pretrained(path, dtype=dtype).eval()


PROMPTS = ["Once upon a time", "The sad cat", "Human: How do I bake bread?", "She loved"]
RESPONSES = [
    (" there was a happy dog.", " the cat did not eat."),
    (" did not want to eat its food.", " jumps over the lazy dog."),
    (" Mix flour, water and yeast.", " I cannot help with that."),
    (" to play outside in the park.", " the quick brown fox."),
]
LABELS = [[1, -1], [1, 1], [-1, 1], [1, 0]]


def pair_rows(model_dir):
    """Four tokenised preference pairs (2 dimensions) and the matching collator."""
    tok = AutoTokenizer.from_pretrained(model_dir)
    rows = []
    for prompt, (a, b), labels in zip(PROMPTS, RESPONSES, LABELS, strict=True):
        rows.append(
            {
                "prompt_ids": [tok.bos_token_id, *tok(prompt)["input_ids"]],
                "response_a_ids": [*tok(a)["input_ids"], tok.eos_token_id],
                "response_b_ids": [*tok(b)["input_ids"], tok.eos_token_id],
                "labels": labels,
                "is_safe_a": -1,
                "is_safe_b": -1,
            }
        )
    return rows, PreferenceCollator(pad_token_id=tok.pad_token_id)


def quiet_trainer(**kwargs) -> pl.Trainer:
    """A CPU Trainer with no logger, progress bar or model summary (each can be overridden)."""
    defaults = {
        "accelerator": "cpu",
        "logger": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
    }
    return pl.Trainer(**(defaults | kwargs))


def free_port() -> int:
    """A free TCP port on the loopback address, for a test's process group."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def as_launched_rank(rank: int, world: int, port: int) -> None:
    """In a forked child: one thread, and (world > 1) the environment torchrun or srun would
    set, so that Lightning's strategies find the other ranks as on a cluster."""
    torch.set_num_threads(1)  # a forked child must not reuse the parent's OpenMP pool
    if world > 1:
        os.environ.update(
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(port),
            WORLD_SIZE=str(world),
            NODE_RANK="0",
            LOCAL_RANK=str(rank),
        )
