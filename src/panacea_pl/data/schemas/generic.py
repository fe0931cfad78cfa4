"""Schemas written for this project: explicit per-dimension labels, SFT targets, bare prompts.

`generic` — one pair per row with one column per dimension:

    {"prompt": "...", "response_a": "...", "response_b": "...", "helpful": 1, "concise": null}

A dimension's column holds 1 (response_a preferred), -1 (response_b preferred), 0 or null
(unlabelled); optional `is_safe_a`, `is_safe_b` (true/false/null). Used by the stories benchmark:
`DimensionSpec(name="positive", source="stories", field="positive")`.

`sft` — a prompt and one target response per dimension (null when a dimension has none):

    {"prompt": "...", "helpful": "a helpful answer", "harmless": "a harmless answer"}

`prompts` — `{"prompt": "..."}` per row, for PPO rollouts.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import datasets

from panacea_pl.data.config import BoundDimension
from panacea_pl.data.errors import (
    BadValue,
    RowIssues,
    Where,
    optional_label,
    optional_safety,
    require_text,
)
from panacea_pl.data.schemas.base import Schema, new_pair, require_columns


class Generic(Schema):
    """Adapter for explicit per-dimension labels (`prompt, response_a, response_b, <dims>`)."""

    kind = "pairs"

    def pairs(
        self,
        rows: datasets.Dataset,
        where: Where,
        dims: Sequence[BoundDimension],
        num_dimensions: int,
        issues: RowIssues,
        dropped: Counter[str],
    ) -> list[dict[str, Any]]:
        expected = {
            "prompt": "the prompt text",
            "response_a": "the first response",
            "response_b": "the second response",
        }
        expected.update(
            {d.field: "a label in [-1, 1] (1 a preferred, -1 b, 0/null none) or null" for d in dims}
        )
        require_columns(rows, where, expected)
        safety = [c for c in ("is_safe_a", "is_safe_b") if c in rows.column_names]
        records = []
        for i, row in enumerate(rows.select_columns([*expected, *safety])):
            try:
                prompt = require_text(row["prompt"], "prompt")
                a = require_text(row["response_a"], "response_a", "a non-empty response string")
                b = require_text(row["response_b"], "response_b", "a non-empty response string")
                labels = [0] * num_dimensions
                for d in dims:
                    labels[d.index] = d.sign * optional_label(row[d.field], d.field)
                safe_a = optional_safety(row.get("is_safe_a"), "is_safe_a")
                safe_b = optional_safety(row.get("is_safe_b"), "is_safe_b")
            except BadValue as bad:
                issues.bad(i, bad)
                continue
            records.append(new_pair(prompt, a, b, labels, where.source, safe_a, safe_b))
        return records


class SFTTargets(Schema):
    """Adapter for SFT rows: `prompt` + one target column per dimension (null = no target)."""

    kind = "sft"

    def sft(
        self,
        rows: datasets.Dataset,
        where: Where,
        dims: Sequence[BoundDimension],
        issues: RowIssues,
    ) -> list[dict[str, Any]]:
        """SFT records `{prompt, target, dimension, source}`, one per non-null target."""
        expected = {"prompt": "the prompt text"}
        expected.update({d.field: f"the target response for dimension '{d.name}'" for d in dims})
        require_columns(rows, where, expected)
        records = []
        for i, row in enumerate(rows.select_columns(list(expected))):
            try:
                prompt = require_text(row["prompt"], "prompt")
                targets = [
                    (d.index, require_text(row[d.field], d.field, "a non-empty target or null"))
                    for d in dims
                    if row[d.field] is not None
                ]
            except BadValue as bad:
                issues.bad(i, bad)
                continue
            for index, target in targets:
                records.append(
                    {"prompt": prompt, "target": target, "dimension": index, "source": where.source}
                )
        return records


class Prompts(Schema):
    """Adapter for prompt-only rows (`prompt`), e.g. for PPO rollouts."""

    kind = "prompts"
