"""Rating datasets → within-prompt preference pairs: HelpSteer / HelpSteer2 and UltraFeedback.

    SourceSpec(name="helpsteer", schema="helpsteer", path="nvidia/HelpSteer2")
    DimensionSpec(name="helpful", source="helpsteer", field="helpfulness")
    DimensionSpec(name="concise", source="helpsteer", field="verbosity", direction="lower")

HelpSteer rows hold one response with five 0–4 ratings (`helpfulness, correctness, coherence,
complexity, verbosity`). Rows with the same prompt (exact text) are grouped; a response that
appears several times under one prompt is one response whose ratings are the mean of its
rows' ratings (reported as merged duplicates). Every two responses i < j of a prompt (in order of
first appearance) form a pair (a = i, b = j) whose label in a dimension is the sign of the rating
difference (times the direction): ties and unrated responses give 0, and a pair tied in every
configured dimension is dropped and reported.

UltraFeedback (`openbmb/UltraFeedback`) rows hold `instruction` and `completions`, a list of
`{response, annotations: {aspect: {Rating: "1".."5" | "N/A", ...}}, overall_score, ...}`. A
dimension's field is an aspect (`helpfulness, honesty, instruction_following, truthfulness`,
rated 1–5, "N/A" = unrated) or a numeric completion field (`overall_score`, 1–10;
`fine-grained_score`, 1–5). Pairs are formed between the completions of a row as above.
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
    optional_rating,
    require_text,
)
from panacea_pl.data.schemas.base import Schema, new_pair, require_columns

Ratings = list[float | None]  # one per configured dimension of the source (None = unrated)


def rating_pairs(
    prompt: str,
    responses: Sequence[tuple[str, Ratings]],
    dims: Sequence[BoundDimension],
    num_dimensions: int,
    source: str,
) -> list[dict[str, Any]]:
    """All pairs i < j of one prompt's responses, labelled by the sign of the rating difference.

    Args:
        prompt: the shared prompt.
        responses: `(text, ratings)` per distinct response; `ratings[k]` belongs to `dims[k]`.
        dims: the source's dimensions.
        num_dimensions: m, the length of every label list.
        source: source name written in each record.
    """
    out = []
    for i in range(len(responses)):
        for j in range(i + 1, len(responses)):
            labels = [0] * num_dimensions
            for k, d in enumerate(dims):
                ri, rj = responses[i][1][k], responses[j][1][k]
                if ri is not None and rj is not None and ri != rj:
                    labels[d.index] = d.sign * (1 if ri > rj else -1)
            out.append(new_pair(prompt, responses[i][0], responses[j][0], labels, source))
    return out


def count_unrated(issues: RowIssues, dims: Sequence[BoundDimension], ratings: Ratings) -> None:
    """Count each dimension a response has no rating in (reported in the data summary)."""
    for d, rating in zip(dims, ratings, strict=True):
        if rating is None:
            issues.unrated[d.name] += 1


def merge_duplicates(
    responses: Sequence[tuple[str, Ratings]], dropped: Counter[str]
) -> list[tuple[str, Ratings]]:
    """One entry per distinct response text; ratings of repeated rows are averaged."""
    merged: dict[str, list[Ratings]] = {}
    for text, ratings in responses:
        merged.setdefault(text, []).append(ratings)
    out = []
    for text, all_ratings in merged.items():
        if len(all_ratings) > 1:
            dropped["duplicate responses merged (ratings averaged)"] += len(all_ratings) - 1
        mean: Ratings = []
        for k in range(len(all_ratings[0])):
            values = [r[k] for r in all_ratings if r[k] is not None]
            mean.append(sum(values) / len(values) if values else None)
        out.append((text, mean))
    return out


class HelpSteer(Schema):
    """Adapter for NVIDIA HelpSteer and HelpSteer2 (one rated response per row)."""

    kind = "pairs"
    dimension_fields = ("helpfulness", "correctness", "coherence", "complexity", "verbosity")
    low, high = 0.0, 4.0

    def pairs(
        self,
        rows: datasets.Dataset,
        where: Where,
        dims: Sequence[BoundDimension],
        num_dimensions: int,
        issues: RowIssues,
        dropped: Counter[str],
    ) -> list[dict[str, Any]]:
        expected = {"prompt": "the prompt text", "response": "the rated response"}
        expected.update({d.field: f"a rating {self.low:g}–{self.high:g}" for d in dims})
        require_columns(rows, where, expected)
        groups: dict[str, list[tuple[str, Ratings]]] = {}
        for i, row in enumerate(rows.select_columns(list(expected))):
            try:
                prompt = require_text(row["prompt"], "prompt")
                response = require_text(row["response"], "response", "a non-empty response string")
                ratings = [
                    optional_rating(row[d.field], d.field, self.low, self.high) for d in dims
                ]
            except BadValue as bad:
                issues.bad(i, bad)
                continue
            count_unrated(issues, dims, ratings)
            groups.setdefault(prompt, []).append((response, ratings))
        records = []
        for prompt, responses in groups.items():
            distinct = merge_duplicates(responses, dropped)
            records.extend(rating_pairs(prompt, distinct, dims, num_dimensions, where.source))
        return records


class UltraFeedback(Schema):
    """Adapter for `openbmb/UltraFeedback` (four rated completions per instruction)."""

    kind = "pairs"
    prompt_column = "instruction"
    aspects = ("helpfulness", "honesty", "instruction_following", "truthfulness")
    numeric = {"overall_score": (1.0, 10.0), "fine-grained_score": (1.0, 5.0)}
    dimension_fields = (*aspects, *numeric)

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
            {"instruction": "the prompt text", "completions": "a list of rated completions"},
        )
        records = []
        for i, row in enumerate(rows.select_columns(["instruction", "completions"])):
            try:
                prompt = require_text(row["instruction"], "instruction")
                responses = self._completions(row["completions"], dims)
            except BadValue as bad:
                issues.bad(i, bad)
                continue
            for _, ratings in responses:
                count_unrated(issues, dims, ratings)
            distinct = merge_duplicates(responses, dropped)
            records.extend(rating_pairs(prompt, distinct, dims, num_dimensions, where.source))
        return records

    def _completions(
        self, completions: Any, dims: Sequence[BoundDimension]
    ) -> list[tuple[str, Ratings]]:
        if not isinstance(completions, list):
            raise BadValue("completions", "a list of completion objects", completions, "not a list")
        out = []
        for k, comp in enumerate(completions):
            where = f"completions[{k}]"
            if not isinstance(comp, dict):
                raise BadValue(where, "a completion object", comp, "not an object")
            text = require_text(comp.get("response"), f"{where}.response", "a non-empty response")
            ratings: Ratings = []
            for d in dims:
                if d.field in self.numeric:
                    low, high = self.numeric[d.field]
                    value = comp.get(d.field)
                    ratings.append(optional_rating(value, f"{where}.{d.field}", low, high))
                    continue
                annotation = (comp.get("annotations") or {}).get(d.field)
                value = annotation.get("Rating") if isinstance(annotation, dict) else annotation
                name = f"{where}.annotations.{d.field}.Rating"
                ratings.append(optional_rating(value, name, 1.0, 5.0))
            out.append((text, ratings))
        return out
