"""From one configured source to canonical records: read, adapt, drop, count, check.

    from panacea_pl.data.records import pair_records
    table, report = pair_records(spec, dims, num_dimensions=2, on_bad_row="error")
    table[0]   # {"prompt": ..., "response_a": ..., "response_b": ..., "labels": [1, -1], ...}
    report.labelled   # {"helpful": {"a": 159, "b": 341}, "harmless": {...}}

`pair_records` works for every pair schema; `sft_records` reads the `sft` schema or derives SFT
targets from a pair schema (the preferred response of each labelled dimension);
`prompt_records` reads the prompt of any schema.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from typing import Any

import datasets

from panacea_pl.data.config import BadRowPolicy, BoundDimension, SourceSpec
from panacea_pl.data.errors import ConfigError, RowIssues, Where
from panacea_pl.data.schemas import (
    PAIR_FEATURES,
    PROMPT_FEATURES,
    SFT_FEATURES,
    SourceReport,
    get_schema,
)
from panacea_pl.data.schemas.base import check_labelled, count_labels, finalize_pairs
from panacea_pl.data.sources import load_source

log = logging.getLogger("panacea_pl.data")


def pair_records(
    spec: SourceSpec,
    dims: Sequence[BoundDimension],
    num_dimensions: int,
    on_bad_row: BadRowPolicy = "error",
    cache_dir: str | None = None,
    rows: datasets.Dataset | None = None,
    where: Where | None = None,
) -> tuple[datasets.Dataset, SourceReport]:
    """Canonical preference pairs of one source.

    Args:
        spec: the source.
        dims: the dimensions this source labels (with their global positions).
        num_dimensions: m, the length of every `labels` list.
        on_bad_row: `error` (raise on the first bad row) or `skip` (drop and count).
        cache_dir: `datasets` cache folder for reading.
        rows, where: already-read rows (skips reading; for tests and custom loaders).

    Raises:
        DataError: unreadable input, a bad row under `error`, a dimension with no labelled pair.
        ConfigError: a schema that does not hold pairs, a source no dimension uses.
    """
    schema = get_schema(spec.schema)
    if schema.kind != "pairs":
        raise ConfigError(
            f"source '{spec.name}': schema '{spec.schema}' holds {schema.kind}, not preference "
            "pairs"
        )
    if not dims:
        raise ConfigError(f"source '{spec.name}' is not used by any dimension")
    schema.check_dimensions(spec.name, dims)
    rows, where = _read(spec, cache_dir, rows, where, on_bad_row)
    issues = RowIssues(on_bad_row, where)
    dropped: Counter[str] = Counter()
    records = schema.pairs(rows, where, dims, num_dimensions, issues, dropped)
    records = finalize_pairs(records, dims, dropped)
    report = SourceReport(
        source=spec.name,
        schema=spec.schema,
        rows=len(rows),
        records=len(records),
        skipped=dict(issues.skipped),
        dropped=dict(dropped),
        labelled=count_labels(records, dims),
        unrated=dict(issues.unrated),
    )
    check_labelled(report, dims, where, "pair")
    _log(report)
    return datasets.Dataset.from_list(records, features=PAIR_FEATURES), report


def sft_records(
    spec: SourceSpec,
    dims: Sequence[BoundDimension],
    num_dimensions: int,
    on_bad_row: BadRowPolicy = "error",
    cache_dir: str | None = None,
    rows: datasets.Dataset | None = None,
    where: Where | None = None,
) -> tuple[datasets.Dataset, SourceReport]:
    """SFT records `{prompt, target, dimension, source}` of one source.

    An `sft` source gives its target columns; a pair source gives, for every pair and every
    dimension that labels it, the preferred response (duplicates of the same prompt, target and
    dimension are kept once).
    """
    schema = get_schema(spec.schema)
    if not dims:
        raise ConfigError(f"source '{spec.name}' is not used by any dimension")
    if schema.kind == "sft":
        rows, where = _read(spec, cache_dir, rows, where, on_bad_row)
        issues = RowIssues(on_bad_row, where)
        records = schema.sft(rows, where, dims, issues)  # type: ignore[attr-defined]
        report = SourceReport(spec.name, spec.schema, rows=len(rows), skipped=dict(issues.skipped))
    elif schema.kind == "pairs":
        rows, where = _read(spec, cache_dir, rows, where, on_bad_row)
        pairs, report = pair_records(spec, dims, num_dimensions, on_bad_row, cache_dir, rows, where)
        records = preferred_targets(pairs, dims)
    else:
        raise ConfigError(f"source '{spec.name}': schema '{spec.schema}' has no SFT targets")
    seen: set[tuple[str, str, int]] = set()
    unique: list[dict[str, Any]] = []
    dropped = Counter(report.dropped)
    for rec in records:
        key = (rec["prompt"], rec["target"], rec["dimension"])
        if key in seen:
            dropped["duplicate SFT targets"] += 1
            continue
        seen.add(key)
        unique.append(rec)
    report.records = len(unique)
    report.dropped = dict(dropped)
    report.labelled = {
        d.name: {"targets": sum(r["dimension"] == d.index for r in unique)} for d in dims
    }
    check_labelled(report, dims, where, "SFT target")
    _log(report)
    return datasets.Dataset.from_list(unique, features=SFT_FEATURES), report


def preferred_targets(
    pairs: datasets.Dataset | Sequence[dict[str, Any]], dims: Sequence[BoundDimension]
) -> list[dict[str, Any]]:
    """Derive SFT records from pairs: the preferred response of each dimension that labels a pair."""
    out = []
    for rec in pairs:
        for d in dims:
            label = rec["labels"][d.index]
            if label:
                target = rec["response_a"] if label > 0 else rec["response_b"]
                out.append(
                    {
                        "prompt": rec["prompt"],
                        "target": target,
                        "dimension": d.index,
                        "source": rec["source"],
                    }
                )
    return out


def prompt_records(
    spec: SourceSpec,
    on_bad_row: BadRowPolicy = "error",
    cache_dir: str | None = None,
    rows: datasets.Dataset | None = None,
    where: Where | None = None,
) -> tuple[datasets.Dataset, SourceReport]:
    """Distinct prompts `{prompt, source}` of one source of any schema, in first-seen order."""
    schema = get_schema(spec.schema)
    rows, where = _read(spec, cache_dir, rows, where, on_bad_row)
    issues = RowIssues(on_bad_row, where)
    prompts = schema.prompts(rows, where, issues)
    unique = list(dict.fromkeys(prompts))
    report = SourceReport(
        spec.name,
        spec.schema,
        rows=len(rows),
        records=len(unique),
        skipped=dict(issues.skipped),
        dropped={"repeated prompts": len(prompts) - len(unique)}
        if len(prompts) > len(unique)
        else {},
    )
    _log(report)
    records = [{"prompt": p, "source": spec.name} for p in unique]
    return datasets.Dataset.from_list(records, features=PROMPT_FEATURES), report


def _read(
    spec: SourceSpec,
    cache_dir: str | None,
    rows: datasets.Dataset | None,
    where: Where | None,
    on_bad_row: BadRowPolicy = "error",
) -> tuple[datasets.Dataset, Where]:
    if rows is None:
        return load_source(spec, cache_dir, on_bad_row)
    where = where or Where(description=f"rows of source '{spec.name}'")
    where.source = spec.name
    return rows, where


def _log(report: SourceReport) -> None:
    for line in report.lines():
        log.info(line)
