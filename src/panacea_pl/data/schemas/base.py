"""What a schema adapter is, the canonical records it produces, and the checks every source gets.

    class MySchema(Schema):
        kind = "pairs"
        def pairs(self, rows, where, dims, num_dimensions, issues): ...
    register_schema("my_schema", MySchema())

Canonical pair record (one `datasets` row; every pair schema produces exactly these fields):
`prompt: str, response_a: str, response_b: str, labels: list[float]` (one per configured
dimension, in configured order: +1 = a preferred, -1 = b preferred, 0 = unlabelled or tied;
a value in between is a soft label 2·P(a ≻ b) − 1, which the losses use as the target
probability),
`is_safe_a: int, is_safe_b: int` (1 safe, 0 unsafe, -1 unknown), `source: str`.

SFT record: `prompt: str, target: str, dimension: int` (index of the dimension the target
serves), `source: str`. Prompt record: `prompt: str, source: str`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

import datasets

from panacea_pl.data.config import BoundDimension
from panacea_pl.data.errors import ConfigError, DataError, RowIssues, Where

PAIR_FEATURES = datasets.Features(
    {
        "prompt": datasets.Value("string"),
        "response_a": datasets.Value("string"),
        "response_b": datasets.Value("string"),
        "labels": datasets.List(datasets.Value("float32")),
        "is_safe_a": datasets.Value("int64"),
        "is_safe_b": datasets.Value("int64"),
        "source": datasets.Value("string"),
    }
)
SFT_FEATURES = datasets.Features(
    {
        "prompt": datasets.Value("string"),
        "target": datasets.Value("string"),
        "dimension": datasets.Value("int64"),
        "source": datasets.Value("string"),
    }
)
PROMPT_FEATURES = datasets.Features(
    {"prompt": datasets.Value("string"), "source": datasets.Value("string")}
)


@dataclass
class SourceReport:
    """What happened to one source's rows (logged, and stored with the cache).

    Attributes:
        source: `SourceSpec.name`.
        schema: schema name.
        rows: rows read.
        records: records produced (pairs, SFT targets or prompts) after every drop.
        skipped: bad rows skipped under `on_bad_row: skip`, by reason.
        dropped: records dropped by rule, by reason (identical responses, tied in every
            dimension, duplicate responses merged, duplicate targets, ...).
        labelled: per dimension name, `{"a": n, "b": n}` — pairs whose label prefers a / b
            (for SFT: `{"targets": n}`).
        unrated: per dimension name, rated responses read without a rating there (null or
            "N/A"): they count as unrated, so their pairs are unlabelled in that dimension.
    """

    source: str
    schema: str
    rows: int = 0
    records: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    dropped: dict[str, int] = field(default_factory=dict)
    labelled: dict[str, dict[str, int]] = field(default_factory=dict)
    unrated: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def lines(self) -> list[str]:
        """Human-readable log lines."""
        out = [f"source '{self.source}' ({self.schema}): {self.rows} rows → {self.records} records"]
        for reason, n in sorted(self.dropped.items()):
            out.append(f"source '{self.source}': {n} × {reason}")
        if self.skipped:
            detail = ", ".join(f"{n} × {r}" for r, n in sorted(self.skipped.items()))
            out.append(
                f"source '{self.source}': skipped {sum(self.skipped.values())} bad rows "
                f"(on_bad_row=skip): {detail}"
            )
        for dim, counts in self.labelled.items():
            out.append(f"source '{self.source}', dimension '{dim}': {counts}")
        for dim, n in sorted(self.unrated.items()):
            out.append(
                f"source '{self.source}', dimension '{dim}': {n} responses have no rating "
                "(null or N/A) and count as unrated there"
            )
        return out


class Schema:
    """A row layout. Subclasses implement the record kinds they support.

    Attributes:
        kind: the records the schema yields natively: `pairs`, `sft` or `prompts`.
        prompt_column: column holding the prompt text (used by `prompts`), if there is one.
    """

    kind: ClassVar[str] = "pairs"
    prompt_column: ClassVar[str | None] = "prompt"
    #: fields a dimension may name (None = any column); used for config checks
    dimension_fields: ClassVar[Sequence[str] | None] = None

    def check_dimensions(self, source: str, dims: Sequence[BoundDimension]) -> None:
        """Reject dimensions whose `field` cannot exist in this schema."""
        if self.dimension_fields is None:
            return
        for dim in dims:
            if dim.field not in self.dimension_fields:
                raise ConfigError(
                    f"dimension '{dim.name}' (source '{source}'): field '{dim.field}' is not a "
                    f"label field of this schema; expected one of {list(self.dimension_fields)}"
                )

    def pairs(
        self,
        rows: datasets.Dataset,
        where: Where,
        dims: Sequence[BoundDimension],
        num_dimensions: int,
        issues: RowIssues,
        dropped: Counter[str],
    ) -> list[dict[str, Any]]:
        """Canonical pair records (before the shared drops of `finalize_pairs`)."""
        raise ConfigError(f"schema {type(self).__name__} does not hold preference pairs")

    def prompts(self, rows: datasets.Dataset, where: Where, issues: RowIssues) -> list[str]:
        """The prompt of every row (duplicates included)."""
        from panacea_pl.data.errors import BadValue, require_text

        column = self.prompt_column
        if column is None:
            raise ConfigError(f"schema {type(self).__name__} has no prompt column")
        require_columns(rows, where, {column: "the prompt text"})
        out: list[str] = []
        for i, value in enumerate(rows[column]):
            try:
                out.append(require_text(value, column))
            except BadValue as bad:
                issues.bad(i, bad)
        return out


def require_columns(rows: datasets.Dataset, where: Where, expected: dict[str, str]) -> None:
    """Raise a `DataError` naming every expected column that the table lacks.

    Args:
        rows: the table.
        where: names the file.
        expected: `{column: what it should hold}`.
    """
    missing = [c for c in expected if c not in rows.column_names]
    if missing:
        wanted = "; ".join(f"'{where.field_name(c)}' ({expected[c]})" for c in missing)
        raise DataError(
            f"{where.prefix()}{where.description}: field(s) missing from every row: {wanted}. "
            f"Fields present: {rows.column_names}. Rename columns with the source's `columns` "
            "option if they exist under another name."
        )


def finalize_pairs(
    records: list[dict[str, Any]],
    dims: Sequence[BoundDimension],
    dropped: Counter[str],
) -> list[dict[str, Any]]:
    """The drops every pair source gets: identical responses, and pairs no dimension labels."""
    out = []
    for rec in records:
        if rec["response_a"] == rec["response_b"]:
            dropped["pairs with identical responses"] += 1
        elif not any(rec["labels"][d.index] for d in dims):
            dropped["pairs unlabelled or tied in every dimension"] += 1
        else:
            out.append(rec)
    return out


def count_labels(
    records: Sequence[dict[str, Any]], dims: Sequence[BoundDimension]
) -> dict[str, dict[str, int]]:
    """`{dimension: {"a": pairs preferring a, "b": pairs preferring b}}`."""
    counts = {d.name: {"a": 0, "b": 0} for d in dims}
    for rec in records:
        for d in dims:
            label = rec["labels"][d.index]
            if label > 0:
                counts[d.name]["a"] += 1
            elif label < 0:
                counts[d.name]["b"] += 1
    return counts


def new_pair(
    prompt: str,
    response_a: str,
    response_b: str,
    labels: list[float],
    source: str,
    is_safe_a: int = -1,
    is_safe_b: int = -1,
) -> dict[str, Any]:
    """A canonical pair record."""
    return {
        "prompt": prompt,
        "response_a": response_a,
        "response_b": response_b,
        "labels": labels,
        "is_safe_a": is_safe_a,
        "is_safe_b": is_safe_b,
        "source": source,
    }


def check_labelled(
    report: SourceReport, dims: Sequence[BoundDimension], where: Where, what: str = "pair"
) -> None:
    """Raise when a dimension ends up with no labelled record at all."""
    for d in dims:
        if sum(report.labelled.get(d.name, {}).values()) == 0:
            raise DataError(
                f"dimension '{d.name}' (source '{report.source}', field "
                f"'{where.field_name(d.field)}') has no labelled {what} in {where.description}: "
                f"expected at least one {what} where the field "
                + ("prefers one response (all are null, 0 or tied)" if what == "pair" else "is set")
                + (f"; {report.dropped}" if report.dropped else "")
                + (f"; skipped rows: {report.skipped}" if report.skipped else "")
            )
