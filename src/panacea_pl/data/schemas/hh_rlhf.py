"""Anthropic HH-RLHF: a chosen and a rejected transcript that share all but the last turn.

    SourceSpec(name="helpful", schema="hh_rlhf", path="Anthropic/hh-rlhf", data_dir="helpful-base")
    DimensionSpec(name="helpful", source="helpful", field="chosen")

Each row is `{"chosen": str, "rejected": str}`, both full dialogues
`"\\n\\nHuman: …\\n\\nAssistant: …"`. The prompt is the longest common prefix of the two,
cut after its last `"\\n\\nAssistant:"`; the responses are what follows in each transcript.
The prompt is stored without its leading `"\\n\\nHuman: "` and each response without its one
leading space, so the default plain template (`"\\n\\nHuman: {prompt}\\n\\nAssistant:"` +
`" {response}"`) rebuilds the original transcript. Earlier turns stay inside the prompt text.

`response_a` is the chosen response, label +1 (`direction: lower` makes it -1). Rows whose two
transcripts are identical (a few in the public splits) give identical responses: they are
dropped and reported, never trained on. An empty final turn is a bad row (`on_bad_row`).
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from typing import Any

import datasets

from panacea_pl.data.config import BoundDimension
from panacea_pl.data.errors import BadValue, RowIssues, Where, require_text
from panacea_pl.data.schemas.base import Schema, new_pair, require_columns

HUMAN = "\n\nHuman: "
ASSISTANT = "\n\nAssistant:"


def split_transcripts(chosen: str, rejected: str) -> tuple[str, str, str]:
    """Split two HH-RLHF transcripts into (prompt, chosen response, rejected response).

    Raises:
        BadValue: a transcript that is not a string or has no `"\\n\\nAssistant:"` turn.
    """
    for name, text in (("chosen", chosen), ("rejected", rejected)):
        require_text(text, name, "a non-empty transcript string")
    common = os.path.commonprefix([chosen, rejected])
    cut = common.rfind(ASSISTANT)
    if cut < 0:
        field = "chosen" if ASSISTANT not in chosen else "rejected"
        raise BadValue(
            field,
            "a transcript whose two versions share a prefix ending in '\\n\\nAssistant:'",
            (chosen if field == "chosen" else rejected),
            "no shared Assistant turn",
        )
    prompt = chosen[:cut]
    if prompt.startswith(HUMAN):
        prompt = prompt[len(HUMAN) :]
    start = cut + len(ASSISTANT)
    return prompt, _one_space_off(chosen[start:]), _one_space_off(rejected[start:])


def _one_space_off(text: str) -> str:
    return text[1:] if text.startswith(" ") else text


class HHRLHF(Schema):
    """Adapter for Anthropic HH-RLHF (all its subsets: helpful-*, harmless-base, red-team-free)."""

    kind = "pairs"
    prompt_column = None
    dimension_fields = ("chosen",)

    def pairs(
        self,
        rows: datasets.Dataset,
        where: Where,
        dims: Sequence[BoundDimension],
        num_dimensions: int,
        issues: RowIssues,
        dropped: Counter[str],
    ) -> list[dict[str, Any]]:
        require_columns(
            rows,
            where,
            {"chosen": "the preferred transcript", "rejected": "the other transcript"},
        )
        records = []
        table = rows.select_columns(["chosen", "rejected"])
        for i, row in enumerate(table):
            try:
                prompt, chosen, rejected = split_transcripts(row["chosen"], row["rejected"])
                if row["chosen"] != row["rejected"]:
                    require_text(prompt, "chosen", "a non-empty first Human turn")
                    require_text(chosen, "chosen", "a non-empty final Assistant turn")
                    require_text(rejected, "rejected", "a non-empty final Assistant turn")
            except BadValue as bad:
                issues.bad(i, bad)
                continue
            labels = [0] * num_dimensions
            for d in dims:
                labels[d.index] = d.sign
            records.append(new_pair(prompt, chosen, rejected, labels, where.source))
        return records

    def prompts(self, rows: datasets.Dataset, where: Where, issues: RowIssues) -> list[str]:
        require_columns(rows, where, {"chosen": "the preferred transcript"})
        has_rejected = "rejected" in rows.column_names
        out = []
        for i, row in enumerate(rows):
            try:
                other = row["rejected"] if has_rejected else row["chosen"]
                prompt, _, _ = split_transcripts(row["chosen"], other)
                out.append(require_text(prompt, "chosen", "a non-empty first Human turn"))
            except BadValue as bad:
                issues.bad(i, bad)
        return out
