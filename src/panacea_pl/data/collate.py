"""Collators: token-id rows → padded tensor batches (preference pairs, SFT targets, prompts).

    from torch.utils.data import DataLoader
    loader = DataLoader(pairs, batch_size=8, collate_fn=PreferenceCollator(pad_token_id=0))
    batch = next(iter(loader))
    batch["input_ids"].shape        # [2B, T]: rows 0..B-1 prompt+a, rows B..2B-1 prompt+b

Batch layouts (the contract other modules code against):

- preference pairs (B pairs): `input_ids` Long [2B, T] right-padded, `attention_mask` Long
  [2B, T], `response_mask` Bool [2B, T] (True at the response tokens incl. EOS — the targets whose
  log-probs count; position t is predicted by the logits at t-1, and t = 0 is never True),
  `labels` Float [B, m] in [-1, 1] (+1 a preferred, -1 b, 0 unlabelled, soft in between), `is_safe` Long [2B] in {1, 0, -1}. Each pair is one row
  pair however many dimensions label it.
- SFT (N sequences): `input_ids`, `attention_mask`, `response_mask` as above, `dimension` Long [N].
- prompts (B prompts): `input_ids` Long [B, T] LEFT-padded, `attention_mask` Long [B, T],
  `prompt_text` list[str].
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from panacea_pl.rows import join_pairs, pair_rows


def _round_up(length: int, multiple: int | None) -> int:
    if not multiple:
        return length
    return -(-length // multiple) * multiple


def pad_sequences(
    prompts: Sequence[Sequence[int]],
    responses: Sequence[Sequence[int]],
    pad_token_id: int,
    pad_to_multiple_of: int | None = None,
) -> dict[str, torch.Tensor]:
    """Right-pad `prompt + response` sequences; mark the response positions.

    Returns:
        `input_ids` Long [N, T], `attention_mask` Long [N, T], `response_mask` Bool [N, T].
    """
    lengths = [len(p) + len(r) for p, r in zip(prompts, responses, strict=True)]
    width = _round_up(max(lengths), pad_to_multiple_of)
    n = len(lengths)
    input_ids = torch.full((n, width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((n, width), dtype=torch.long)
    response_mask = torch.zeros((n, width), dtype=torch.bool)
    for i, (p, r) in enumerate(zip(prompts, responses, strict=True)):
        length = len(p) + len(r)
        input_ids[i, :length] = torch.as_tensor([*p, *r], dtype=torch.long)
        attention_mask[i, :length] = 1
        response_mask[i, len(p) : length] = True
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "response_mask": response_mask,
    }


@dataclass
class PreferenceCollator:
    """Batch tokenised pairs (`prompt_ids`, `response_a_ids`, `response_b_ids`, `labels`,
    `is_safe_a`, `is_safe_b`) into the preference-pair batch.

    Args:
        pad_token_id: id written at padded positions (masked out by `attention_mask`).
        pad_to_multiple_of: round T up to a multiple of this (None: the longest sequence).
    """

    pad_token_id: int
    pad_to_multiple_of: int | None = None

    def __call__(self, rows: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        prompts = [r["prompt_ids"] for r in rows]
        responses = join_pairs(
            [r["response_a_ids"] for r in rows], [r["response_b_ids"] for r in rows]
        )
        batch = pad_sequences(
            pair_rows(prompts), responses, self.pad_token_id, self.pad_to_multiple_of
        )
        batch["labels"] = torch.as_tensor([r["labels"] for r in rows], dtype=torch.float32)
        batch["is_safe"] = torch.as_tensor(
            join_pairs([r["is_safe_a"] for r in rows], [r["is_safe_b"] for r in rows]),
            dtype=torch.long,
        )
        return batch


@dataclass
class SFTCollator:
    """Batch tokenised SFT records (`prompt_ids`, `target_ids`, `dimension`).

    Args:
        pad_token_id: id written at padded positions.
        pad_to_multiple_of: round T up to a multiple of this.
    """

    pad_token_id: int
    pad_to_multiple_of: int | None = None

    def __call__(self, rows: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = pad_sequences(
            [r["prompt_ids"] for r in rows],
            [r["target_ids"] for r in rows],
            self.pad_token_id,
            self.pad_to_multiple_of,
        )
        batch["dimension"] = torch.as_tensor([r["dimension"] for r in rows], dtype=torch.long)
        return batch


@dataclass
class PromptCollator:
    """Batch tokenised prompts (`prompt_ids`, `prompt`) LEFT-padded, for generation.

    Args:
        pad_token_id: id written at padded positions.
        pad_to_multiple_of: round T up to a multiple of this.
    """

    pad_token_id: int
    pad_to_multiple_of: int | None = None

    def __call__(self, rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
        prompts = [r["prompt_ids"] for r in rows]
        width = _round_up(max(len(p) for p in prompts), self.pad_to_multiple_of)
        input_ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, p in enumerate(prompts):
            input_ids[i, width - len(p) :] = torch.as_tensor(p, dtype=torch.long)
            attention_mask[i, width - len(p) :] = 1
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "prompt_text": [r["prompt"] for r in rows],
        }
