"""Check tokenised lengths against the model's context before any batch reaches the model.

    limit = model_max_positions("path/to/model")       # (512, "max_position_embeddings = 512 in …")
    check_context(tables, ["pku"], limit, tokenization)  # DataError naming the row and the fix

A prompt plus response longer than the model's positions fails inside the model as an
`IndexError` from the position embedding (GPT-2) or silently degrades (RoPE past its range).
The model folder's config (read with `AutoConfig`, no weights) gives the limit.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import datasets
import numpy as np
import pyarrow.compute as pc

from panacea_pl.data.config import TokenizationSpec
from panacea_pl.data.errors import DataError

#: config fields that hold a model's number of positions, in order of preference
POSITION_FIELDS = ("max_position_embeddings", "n_positions", "max_sequence_length", "n_ctx")
#: (prompt column, response columns) per kind of table
_COLUMNS = (
    ("prompt_ids", ("response_a_ids", "response_b_ids")),
    ("prompt_ids", ("target_ids",)),
    ("prompt_ids", ()),
)


def model_max_positions(path: str) -> tuple[int, str] | None:
    """The number of positions of the model whose config is in folder `path`, and where it was
    read; None for a folder without `config.json` (e.g. a tokenizer-only folder) or a hub id."""
    config_file = os.path.join(os.path.expanduser(path), "config.json")
    if not os.path.isfile(config_file):
        return None
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(os.path.dirname(config_file))
    except Exception:  # noqa: BLE001 - not a model config: nothing to check against
        return None
    for field in POSITION_FIELDS:
        value = getattr(config, field, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value, f"{field} = {value} in {config_file}"
    return None


def check_context(
    tables: dict[str, datasets.Dataset],
    sources: Sequence[str],
    limit: tuple[int, str],
    tokenization: TokenizationSpec,
) -> None:
    """Refuse any row whose prompt + longest response exceeds the model's positions.

    Args:
        tables: `train_{i}` / `validation_{i}` per source i, as `prepare_data` saved them.
        sources: source names, by index i.
        limit: (positions, where it was read) from `model_max_positions`.
        tokenization: the settings to name in the message.

    Raises:
        DataError: names the source, split, row, its lengths, the limit and the setting to change.
    """
    positions, origin = limit
    for name, table in tables.items():
        if not len(table):
            continue
        total, prompt, response = _lengths(table)
        row = int(np.argmax(total))
        if total[row] <= positions:
            continue
        split, _, index = name.rpartition("_")
        source = sources[int(index)]
        text = _prompt_text(table, row)
        count = int((total > positions).sum())
        raise DataError(
            f"source '{source}', {split} row {row}{text}: prompt {prompt[row]} + response "
            f"{response[row]} = {total[row]} tokens, beyond the model's {positions} positions "
            f"({origin}); {count} of {len(table)} {split} rows are too long. Set "
            f"`tokenization.max_prompt_length` + `max_response_length` to at most {positions} "
            f"(now {tokenization.max_prompt_length} + {tokenization.max_response_length})"
        )


def _lengths(table: datasets.Dataset) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row: total, prompt and longest-response token counts."""
    data = table.with_format("arrow")[:]  # respects an indices mapping
    for prompt_col, response_cols in _COLUMNS:
        if prompt_col in data.column_names and all(c in data.column_names for c in response_cols):
            break
    prompt = _list_lengths(data.column(prompt_col))
    response = np.zeros_like(prompt)
    for col in response_cols:
        response = np.maximum(response, _list_lengths(data.column(col)))
    return prompt + response, prompt, response


def _list_lengths(column: Any) -> np.ndarray:
    return pc.list_value_length(column).to_numpy(zero_copy_only=False).astype(np.int64)


def _prompt_text(table: datasets.Dataset, row: int) -> str:
    if "prompt" not in table.column_names:
        return ""
    text = str(table[row]["prompt"])
    return f" (prompt {text[:40]!r}{'...' if len(text) > 40 else ''})"
