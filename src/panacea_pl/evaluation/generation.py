"""Prompts in, responses out: one batched `generate` call per chunk, one λ row per sequence.

    prompt_ids = encode_prompts(tokenizer, ["How do I bake bread?"], TokenizationSpec())
    rows = tile_rows(prompt_ids, len(grid))                     # prompts × λ, λ-major
    out = generate_rows(policy, tokenizer, rows, repeat_rows(grid, len(prompt_ids)),
                        max_rows=64, max_new_tokens=32)
    out.texts[0]        # decoded prompt + response of the first row (what a scorer reads)
    out.responses[0]    # the response alone

Prompts come from a list of strings, a JSON-lines file (`load_prompts`), or a datamodule's
held-out set (`datamodule_prompt_ids`). Generation uses the policy's `generate` with the λ rows
of each chunk, or its `reference()` (for Panacea: the adapter disabled, i.e. the base model). A
policy that takes one λ per batch (`accepts_row_preferences` False: the baselines' collections)
gets chunks that never mix two λ (give `group_size`, the rows per λ). With `noise_keys` sampling
uses common random numbers (`panacea_pl.evaluation.crn`); with `plan` only one rank's share of
the rows is generated (`panacea_pl.evaluation.sharding`). A response is the generated
tokens up to the first stop token (the generation config's and the tokenizer's EOS), stop
excluded. Texts
are decoded with special tokens kept (a chat template's markers stay) except the prompt's leading
BOS, and the response text is cut from the decoded prompt + response so that it keeps the space
that joins it to the prompt.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import LogitsProcessorList

from panacea_pl.data.config import TokenizationSpec
from panacea_pl.data.tokenize import TextEncoder, pad_token_id
from panacea_pl.evaluation.crn import GumbelSampler
from panacea_pl.evaluation.sharding import ShardPlan, shard_plan
from panacea_pl.models.generation import Generations, decode_rows, stop_ids
from panacea_pl.models.policy import PreferencePolicy


def load_prompts(source: Sequence[str] | str | Path, field: str = "prompt") -> list[str]:
    """A list of prompt strings as given, or the `field` of every line of a JSON-lines file."""
    if isinstance(source, str | Path):
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"prompt file {path} not found (give a .jsonl path or a list)")
        prompts = []
        with path.open() as handle:
            for number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                row = json.loads(line)
                if field not in row:
                    raise KeyError(f"{path}:{number} has no {field!r} field (keys: {sorted(row)})")
                prompts.append(str(row[field]))
        return prompts
    return [str(p) for p in source]


def encode_prompts(tokenizer, prompts: Sequence[str], spec: TokenizationSpec) -> list[list[int]]:
    """Prompt token ids (template, BOS and left truncation as in training; see `TextEncoder`)."""
    return TextEncoder(tokenizer, spec).prompts(prompts)[0]


def datamodule_prompt_ids(datamodule, limit: int | None) -> list[list[int]]:
    """The first `limit` distinct prompts of a datamodule's held-out set, as token ids.

    The datamodule is set up first if needed. Its rows carry `prompt_ids` (every
    `panacea_pl.data` DataModule does), already templated as in training.
    """
    if getattr(datamodule, "val_dataset", None) is None:
        datamodule.setup("validate")
    table = datamodule.val_dataset
    if table is None or len(table) == 0 or "prompt_ids" not in table.column_names:
        raise ValueError(
            f"{type(datamodule).__name__} has no held-out prompts (`val_dataset` with "
            "`prompt_ids`); give the evaluator `prompts` instead"
        )
    seen: dict[tuple[int, ...], None] = {}
    for ids in table["prompt_ids"]:
        seen.setdefault(tuple(ids), None)
        if limit is not None and len(seen) >= limit:
            break
    return [list(ids) for ids in seen]


@torch.no_grad()
def generate_rows(
    policy: PreferencePolicy,
    tokenizer,
    prompt_ids: Sequence[Sequence[int]],
    preferences: torch.Tensor | None,
    max_rows: int,
    group_size: int | None = None,
    progress: bool = True,
    desc: str = "generating",
    noise_keys: torch.Tensor | None = None,
    plan: ShardPlan | None = None,
    **generate_kwargs,
) -> Generations:
    """Generate one response per row, at most `max_rows` rows per `generate` call.

    Args:
        policy: the policy (`PanaceaPolicy`, or any `PreferencePolicy` with `generate`).
        tokenizer: the policy's tokenizer.
        prompt_ids: [N] token ids of each row's prompt.
        preferences: [N, m] the λ of each row, or None to generate with `policy.reference()`.
        max_rows: most rows in one `generate` call.
        group_size: rows per λ (consecutive rows share it); with a policy whose
            `accepts_row_preferences` is False, chunks end at every group boundary.
        progress: show a tqdm bar over the chunks.
        desc: the bar's label.
        noise_keys: [N] int64 sampling-noise keys (`panacea_pl.evaluation.crn.row_keys`): with
            `do_sample`, row i is sampled by keyed Gumbel-max from its key alone (common random
            numbers: the same key gives the same draw at any λ, in any batch).
        plan: this rank's rows and chunks (`panacea_pl.evaluation.sharding.shard_plan` over the
            N rows); only its rows are generated and returned. Default: every row, one process.
        **generate_kwargs: passed to `generate` (`max_new_tokens`, `do_sample`, …).
    """
    if preferences is not None and len(preferences) != len(prompt_ids):
        raise ValueError(f"{len(prompt_ids)} prompt rows but {len(preferences)} preference rows")
    if noise_keys is not None and len(noise_keys) != len(prompt_ids):
        raise ValueError(f"{len(prompt_ids)} prompt rows but {len(noise_keys)} noise keys")
    device = next(policy.model.parameters()).device
    pad = pad_token_id(tokenizer)
    stops = stop_ids(policy, tokenizer)
    generate_kwargs = {"pad_token_id": pad, "eos_token_id": stops or None, **generate_kwargs}
    per_sample = preferences is None or getattr(policy, "accepts_row_preferences", True)
    if not per_sample and group_size is None:
        raise ValueError("a policy without per-sample λ needs group_size (rows per λ)")
    if plan is None:
        plan = shard_plan(len(prompt_ids), max_rows, None if per_sample else group_size, 0, 1)
    keyed = noise_keys is not None and generate_kwargs.get("do_sample", False)
    responses: list[list[int]] = []
    for chunk in tqdm(plan.chunks, desc=desc, disable=not progress, leave=False):
        input_ids, attention_mask = _left_pad(prompt_ids[chunk.start : chunk.stop], pad)
        input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
        kwargs = generate_kwargs
        if keyed:
            kwargs = _keyed(generate_kwargs, noise_keys[chunk.start : chunk.stop], input_ids)
        if preferences is None:
            with policy.reference():
                out = policy.model.generate(
                    input_ids=input_ids, attention_mask=attention_mask, **kwargs
                )
        else:
            rows = preferences[chunk.start : chunk.stop].to(device)
            out = policy.generate(input_ids, attention_mask, preference=rows, **kwargs)
        if chunk.keep:
            responses += [_cut(row, stops) for row in out[:, input_ids.shape[1] :].cpu().tolist()]
    return decode_rows(tokenizer, prompt_ids[plan.start : plan.stop], responses)


def _keyed(kwargs: dict, keys: torch.Tensor, input_ids: torch.Tensor) -> dict:
    """`generate` arguments that sample by keyed Gumbel-max instead of the global generator."""
    rest = {k: v for k, v in kwargs.items() if k not in ("do_sample", "temperature", "top_p")}
    if rest.pop("top_k", 0) not in (0, None):
        raise ValueError("keyed sampling supports temperature and top_p, not top_k")
    sampler = GumbelSampler(
        keys, input_ids.shape[1], kwargs.get("temperature", 1.0), kwargs.get("top_p", 1.0)
    )
    processors = LogitsProcessorList([*rest.pop("logits_processor", []), sampler])
    return rest | {"do_sample": False, "logits_processor": processors}


def row_chunks(total: int, size: int, boundary: int | None = None) -> list[tuple[int, int]]:
    """[start, stop) ranges of at most `size` rows that never cross a multiple of `boundary`."""
    size = max(1, size)
    edges = range(0, total, boundary) if boundary else [0]
    out = []
    for begin in edges:
        end = min(begin + boundary, total) if boundary else total
        out += [(s, min(s + size, end)) for s in range(begin, end, size)]
    return out


def _left_pad(rows: Sequence[Sequence[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, ids in enumerate(rows):
        input_ids[i, width - len(ids) :] = torch.as_tensor(list(ids), dtype=torch.long)
        attention_mask[i, width - len(ids) :] = 1
    return input_ids, attention_mask


def _cut(tokens: list[int], stops: Sequence[int]) -> list[int]:
    for i, token in enumerate(tokens):
        if token in stops:
            return tokens[:i]
    return tokens
