"""Errors of the data layer and the bad-row policy that decides between raising and skipping.

    issues = RowIssues(policy="skip", where=where)
    for i, row in enumerate(rows):
        try:
            text = require_text(row["prompt"], "prompt")
        except BadValue as bad:
            issues.bad(i, bad)          # raises DataError under policy "error"; counts under "skip"
            continue
    issues.summary()                    # "skipped 2 of 500 rows: 2 × field 'prompt' ..."

Every message names the file (or hub dataset), the row (0-based, in that file), the field and
what was expected, so that a user can open the file and fix the row.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any


class DataError(ValueError):
    """Input data that the data layer cannot use; the message says where and what was expected."""


class ConfigError(ValueError):
    """A data configuration (sources, dimensions, tokenisation) that cannot work."""


class BadValue(Exception):
    """Internal: one field of one row does not have the expected form (caught per row)."""

    def __init__(self, field: str, expected: str, got: Any, reason: str | None = None) -> None:
        super().__init__(field, expected, got)
        self.field = field
        self.expected = expected
        self.got = got
        #: short key for the skip counter, e.g. "empty response"
        self.reason = reason or "unexpected value"


@dataclass
class Where:
    """Where rows come from, to name them in messages.

    Args:
        description: e.g. `file '/data/x.jsonl'` or `hub dataset 'A/B' (split 'train')`.
        parts: for several files read as one table: `(first row index, description)` of each.
        renamed: `{schema column: column in the file}` (inverse of `SourceSpec.columns`).
        source: the `SourceSpec.name`.
        removed: per part description, file rows dropped while reading (e.g. not UTF-8), so
            that later rows keep their file row numbers in messages.
        skipped: rows dropped while reading, by reason (counted by `RowIssues`).
    """

    description: str
    parts: Sequence[tuple[int, str]] = ()
    renamed: dict[str, str] = field(default_factory=dict)
    source: str = ""
    removed: dict[str, list[int]] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)

    def row(self, index: int) -> str:
        """`file 'x', row 12` for the row at `index` of the (concatenated) table."""
        desc, local = self.description, index
        for start, part_desc in self.parts:
            if index >= start:
                desc, local = part_desc, index - start
        for dropped in self.removed.get(desc, ()):
            if dropped <= local:
                local += 1
        return f"{desc}, row {local}"

    def field_name(self, column: str) -> str:
        """The name a column has in the user's file (before `SourceSpec.columns` renaming)."""
        return self.renamed.get(column, column)

    def prefix(self) -> str:
        return f"source '{self.source}': " if self.source else ""


class RowIssues:
    """Collects bad rows of one source: raise on the first (`error`) or skip and count (`skip`)."""

    def __init__(self, policy: str, where: Where) -> None:
        if policy not in ("error", "skip"):
            raise ConfigError(f"on_bad_row must be 'error' or 'skip', got {policy!r}")
        self.policy = policy
        self.where = where
        self.skipped: Counter[str] = Counter(where.skipped)
        #: per dimension name, values read as "unrated" (null / N/A): kept, but reported
        self.unrated: Counter[str] = Counter()

    def bad(self, index: int, bad: BadValue) -> None:
        """Handle one bad row: raise `DataError` or count it as skipped."""
        name = self.where.field_name(bad.field)
        if self.policy == "error":
            raise DataError(
                f"{self.where.prefix()}{self.where.row(index)}, field '{name}': expected "
                f"{bad.expected}, got {_show(bad.got)}. Fix the row, or set `on_bad_row: skip` "
                "to drop such rows (they are counted in the log)."
            ) from None
        self.skipped[f"field '{name}': {bad.reason}"] += 1

    @property
    def num_skipped(self) -> int:
        return sum(self.skipped.values())

    def summary(self, total: int) -> str | None:
        """One log line about skipped rows, or None when none was skipped."""
        if not self.skipped:
            return None
        parts = ", ".join(f"{n} × {reason}" for reason, n in sorted(self.skipped.items()))
        return (
            f"{self.where.prefix()}skipped {self.num_skipped} of {total} rows of "
            f"{self.where.description} (on_bad_row=skip): {parts}"
        )


def _show(value: Any) -> str:
    text = repr(value)
    if len(text) > 80:
        text = text[:77] + "..."
    return f"{text} ({type(value).__name__})"


# ---- validators: return the clean value or raise BadValue ---------------------------------


def require_text(value: Any, field: str, what: str = "a non-empty string") -> str:
    """A non-empty string (whitespace-only counts as empty)."""
    if value is None:
        raise BadValue(field, what, value, "missing (null)")
    if not isinstance(value, str):
        raise BadValue(field, what, value, "not a string")
    if not value.strip():
        raise BadValue(field, what, value, "empty")
    return value


def require_choice(value: Any, field: str, choices: Sequence[int], what: str) -> int:
    """An integer from `choices` (bools and non-integral numbers are rejected)."""
    if value is None:
        raise BadValue(field, what, value, "missing (null)")
    number = _as_int(value)
    if number is None or number not in choices:
        raise BadValue(field, what, value, "label outside its domain")
    return number


def optional_label(value: Any, field: str) -> float:
    """A generic preference label in [-1, 1]: 1 (a preferred), -1 (b preferred), 0 or null
    (unlabelled), or a soft label 2·P(a ≻ b) − 1 in between (e.g. 0.5: a preferred 75 % of the
    time)."""
    if value is None:
        return 0.0
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        number = None
    else:
        try:
            number = float(value)
        except ValueError:
            number = None
    if number is None or not math.isfinite(number) or not -1.0 <= number <= 1.0:
        raise BadValue(
            field,
            "a preference label in [-1, 1]: 1 (response_a preferred), -1 (response_b "
            "preferred), a soft label 2·P(a preferred) − 1 in between, 0 or null (unlabelled)",
            value,
            "label outside its domain",
        )
    return number


def optional_safety(value: Any, field: str) -> int:
    """A safety flag: true/1 → 1 (safe), false/0 → 0 (unsafe), null → -1 (unknown)."""
    if value is None:
        return -1
    if isinstance(value, bool):
        return int(value)
    number = _as_int(value)
    if number is None or number not in (0, 1):
        raise BadValue(
            field, "a safety flag true/false (or 1/0, or null if unknown)", value, "not a bool"
        )
    return number


def optional_rating(value: Any, field: str, low: float, high: float) -> float | None:
    """A numeric rating in [low, high]; null (or "N/A") means unrated."""
    if value is None or (isinstance(value, str) and value.strip().upper() in ("N/A", "NA", "")):
        return None
    number: float | None = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            number = None
    if number is None or math.isnan(number) or not low <= number <= high:
        raise BadValue(
            field,
            f"a rating between {low:g} and {high:g} (or null if unrated)",
            value,
            "label outside its domain",
        )
    return number


def _as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None
