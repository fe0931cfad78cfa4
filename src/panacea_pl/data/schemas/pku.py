"""PKU-SafeRLHF: two responses per prompt with a more-helpful and a safer response id.

    SourceSpec(name="pku", schema="pku_saferlhf", path="PKU-Alignment/PKU-SafeRLHF")
    DimensionSpec(name="helpful", source="pku", field="better_response_id")
    DimensionSpec(name="harmless", source="pku", field="safer_response_id")

Both the classic 7-field layout (`prompt, response_0, response_1, is_response_0_safe,
is_response_1_safe, better_response_id, safer_response_id`; PKU-SafeRLHF-30K and the first
release) and the current one (the same plus sources, harm categories, severity levels and
hashes, which are ignored) are read. `response_a` = `response_0`, `response_b` = `response_1`; a
dimension's label is +1 when its id field is 0 and -1 when it is 1 (flipped by
`direction: lower`). `is_response_k_safe` becomes `is_safe_a/b` (missing column or null → -1).
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
    optional_safety,
    require_choice,
    require_text,
)
from panacea_pl.data.schemas.base import Schema, new_pair, require_columns

_ID = "0 or 1 (the index of the preferred response)"


class PKUSafeRLHF(Schema):
    """Adapter for PKU-SafeRLHF (classic and current schema)."""

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
            "response_0": "the first response",
            "response_1": "the second response",
        }
        expected.update({d.field: _ID for d in dims})
        require_columns(rows, where, expected)
        safety = [c for c in ("is_response_0_safe", "is_response_1_safe") if c in rows.column_names]
        table = rows.select_columns([*expected, *safety])
        records = []
        for i, row in enumerate(table):
            try:
                prompt = require_text(row["prompt"], "prompt")
                a = require_text(row["response_0"], "response_0", "a non-empty response string")
                b = require_text(row["response_1"], "response_1", "a non-empty response string")
                labels = [0] * num_dimensions
                for d in dims:
                    preferred = require_choice(row[d.field], d.field, (0, 1), _ID)
                    labels[d.index] = d.sign * (1 if preferred == 0 else -1)
                safe = [
                    optional_safety(row.get(f"is_response_{k}_safe"), f"is_response_{k}_safe")
                    for k in (0, 1)
                ]
            except BadValue as bad:
                issues.bad(i, bad)
                continue
            records.append(new_pair(prompt, a, b, labels, where.source, safe[0], safe[1]))
        return records
