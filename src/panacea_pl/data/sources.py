"""Read the rows of a `SourceSpec` through `datasets`: local files or a hub dataset.

    from panacea_pl.data.sources import load_source
    rows, where = load_source(SourceSpec(name="pku", schema="pku_saferlhf", path="pku.jsonl"))
    len(rows), where.row(3)          # 500, "file '/…/pku.jsonl', row 3"

Local files are checked before `datasets` reads them (a `.parquet` that is not Parquet, a
`.jsonl.gz` that is not gzip, a `.json` that is not JSON, a `.csv` that is not UTF-8 text), and a
read that still fails is re-raised as a `DataError` naming the file and, for JSON, the first line
that does not parse. Several files are read one by one so that messages can name the file and the
row within it, then concatenated.
"""

from __future__ import annotations

import glob
import gzip
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import datasets

from panacea_pl.atomic import is_disk_full
from panacea_pl.data.cache import disk_full_error
from panacea_pl.data.config import SourceSpec
from panacea_pl.data.encoding import find_invalid_utf8, rows_to_drop, utf8_prefix
from panacea_pl.data.errors import DataError, Where

#: file ending → `datasets` packaged builder
FORMATS: dict[str, str] = {
    ".jsonl.gz": "json",
    ".json.gz": "json",
    ".jsonl": "json",
    ".json": "json",
    ".parquet": "parquet",
    ".csv": "csv",
}
_SNIFF_BYTES = 1 << 16


def load_source(
    spec: SourceSpec, cache_dir: str | None = None, on_bad_row: str = "error"
) -> tuple[datasets.Dataset, Where]:
    """Read a source's rows (renamed by `spec.columns`, cut to `spec.max_rows`).

    Args:
        spec: the source.
        cache_dir: `datasets` cache folder (default: the `datasets` default).
        on_bad_row: "skip" drops JSON Lines rows that are not UTF-8 (counted in
            `Where.skipped`); "error" raises on the first.

    Returns:
        The rows as a `datasets.Dataset` and a `Where` that names files and rows in messages.

    Raises:
        DataError: no such file, a file that is not what its extension says or does not parse,
            files with different columns, an empty table, or a hub dataset that cannot be loaded.
    """
    files = resolve_local_files(spec)
    if files is None:
        rows, where = _load_hub(spec, cache_dir)
    else:
        rows, where = _load_files(files, cache_dir, on_bad_row)
    where.source = spec.name
    if len(rows) == 0:
        raise DataError(f"source '{spec.name}': {where.description} has no rows")
    if spec.columns:
        missing = [c for c in spec.columns if c not in rows.column_names]
        if missing:
            raise DataError(
                f"source '{spec.name}': columns {missing} named in `columns` are not in "
                f"{where.description}; its columns are {rows.column_names}"
            )
        clash = [
            new for old, new in spec.columns.items() if new in rows.column_names and new != old
        ]
        if clash:
            rows = rows.remove_columns(clash)
        rows = rows.rename_columns(dict(spec.columns))
        where.renamed = {new: old for old, new in spec.columns.items()}
    if spec.max_rows is not None:
        rows = rows.select(range(min(spec.max_rows, len(rows))))
    return rows, where


def source_fingerprint(spec: SourceSpec) -> dict[str, Any]:
    """What identifies a source's content for the cache key: files with size and mtime, or the
    hub coordinates (pin `revision` to make a hub source's cache key exact)."""
    files = resolve_local_files(spec)
    if files is None:
        return {
            "hub": spec.path,
            "subset": spec.subset,
            "data_dir": spec.data_dir,
            "data_files": spec.data_files,
            "split": spec.split,
            "revision": spec.revision,
        }
    stats = []
    for f in files:
        st = os.stat(f)
        stats.append([str(Path(f).resolve()), st.st_size, st.st_mtime_ns])
    return {"files": stats}


def resolve_local_files(spec: SourceSpec) -> list[str] | None:
    """The local files of a source in read order, or None when `spec.path` is a hub name.

    Raises:
        DataError: a local-looking path that does not exist, a glob that matches nothing, a
            folder without one data file for the split, or an unsupported file ending.
    """
    paths = [spec.path] if isinstance(spec.path, str) else list(spec.path)
    if not paths:
        raise DataError(f"source '{spec.name}': `path` is empty")
    if len(paths) == 1 and _looks_like_hub_name(paths[0]):
        return None
    files: list[str] = []
    for p in paths:
        p = os.path.expanduser(p)
        if glob.has_magic(p):
            matched = sorted(glob.glob(p))
            if not matched:
                raise DataError(f"source '{spec.name}': no file matches {p!r}")
            files.extend(matched)
        elif os.path.isdir(p):
            files.append(_file_in_folder(p, spec))
        elif os.path.isfile(p):
            files.append(p)
        else:
            raise DataError(
                f"source '{spec.name}': no such file or folder {p!r} (a hub dataset name looks "
                "like 'owner/name', without a file ending)"
            )
    for f in files:
        data_format(f)  # raises on an unsupported ending
    return files


def data_format(path: str) -> str:
    """The `datasets` builder for a file name: `json`, `parquet` or `csv`."""
    lower = path.lower()
    for ending, builder in FORMATS.items():
        if lower.endswith(ending):
            return builder
    raise DataError(f"file '{path}': unsupported file type; expected one of {', '.join(FORMATS)}")


def check_file(path: str) -> None:
    """Check that a file's bytes are what its name says, before `datasets` reads it.

    Raises:
        DataError: e.g. `file 'x.parquet': not a Parquet file (it does not start with PAR1)`.
    """
    builder = data_format(path)
    with open(path, "rb") as fh:
        head = fh.read(_SNIFF_BYTES)
    if path.lower().endswith(".gz"):
        if not head.startswith(b"\x1f\x8b"):
            raise DataError(
                f"file '{path}': not gzip-compressed, though its name ends in .gz "
                f"(first bytes {head[:8]!r}); expected gzip data"
            )
        try:
            with gzip.open(path, "rb") as fh:
                head = fh.read(_SNIFF_BYTES)
        except (OSError, EOFError) as err:
            raise DataError(f"file '{path}': corrupt gzip data ({err})") from None
    if builder == "parquet":
        if not head.startswith(b"PAR1"):
            raise DataError(
                f"file '{path}': not a Parquet file (it does not start with the magic bytes "
                f"PAR1; first bytes {head[:8]!r})"
            )
        return
    text = utf8_prefix(head)
    if text is None:  # a bad byte in the first line: not a text file at all
        raise DataError(
            f"file '{path}': not UTF-8 text ({find_invalid_utf8(path, limit=1)[0].describe(rows=False)}); "
            f"expected {'JSON' if builder == 'json' else 'CSV'} in UTF-8"
        )
    if builder == "json":
        stripped = text.lstrip("\ufeff \t\r\n")
        if not stripped:
            raise DataError(f"file '{path}': empty; expected JSON rows")
        if stripped[0] not in "[{":
            raise DataError(
                f"file '{path}': not JSON (it starts with {stripped[:20]!r}); expected a JSON "
                "array of objects or JSON Lines (one object per line)"
            )
    elif builder == "csv" and "\x00" in text:
        raise DataError(f"file '{path}': not a text CSV file (it contains NUL bytes)")


def diagnose_json(path: str) -> str | None:
    """Find the first row of a JSON / JSON Lines file that is not a JSON object, or None."""
    opener = gzip.open if path.lower().endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8-sig") as fh:
        first = ""
        lines = []
        for line in fh:
            lines.append(line)
            if line.strip():
                first = line.lstrip()
                break
        if first.startswith("["):
            try:
                data = json.loads("".join(lines) + fh.read())
            except json.JSONDecodeError as err:
                return f"not valid JSON at line {err.lineno}, column {err.colno}: {err.msg}"
            if not isinstance(data, list):
                return "expected a JSON array of objects"
            for i, item in enumerate(data):
                if not isinstance(item, dict):
                    return f"row {i}: expected a JSON object, got {type(item).__name__}"
            return None
        row = 0
        for lineno, line in enumerate(_chain(lines, fh), start=1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except json.JSONDecodeError as err:
                return (
                    f"row {row} (line {lineno}) is not valid JSON: {err.msg} at column "
                    f"{err.colno}; expected one JSON object per line"
                )
            if not isinstance(item, dict):
                return (
                    f"row {row} (line {lineno}): expected a JSON object, got {type(item).__name__}"
                )
            row += 1
    return None


# ---- internals --------------------------------------------------------------------------------


def _looks_like_hub_name(path: str) -> bool:
    if os.path.exists(os.path.expanduser(path)) or glob.has_magic(path):
        return False
    if path.startswith(("/", "./", "../", "~", "\\")) or ":" in path:
        return False
    if any(path.lower().endswith(ending) for ending in FORMATS):
        return False
    parts = path.split("/")
    return 1 <= len(parts) <= 2 and all(parts)


def _file_in_folder(folder: str, spec: SourceSpec) -> str:
    candidates = sorted(
        str(p) for p in Path(folder).iterdir() if p.is_file() and _has_data_ending(p.name)
    )
    for_split = [c for c in candidates if Path(c).name.lower().startswith(spec.split.lower())]
    if len(for_split) == 1:
        return for_split[0]
    if not for_split and len(candidates) == 1:
        return candidates[0]
    raise DataError(
        f"source '{spec.name}': folder '{folder}' must hold exactly one data file for split "
        f"'{spec.split}' (named '{spec.split}.<ending>'), found "
        f"{[Path(c).name for c in (for_split or candidates)] or 'none'}; "
        "name the file(s) in `path` instead"
    )


def _has_data_ending(name: str) -> bool:
    return any(name.lower().endswith(ending) for ending in FORMATS)


def _load_files(
    files: Sequence[str], cache_dir: str | None, on_bad_row: str = "error"
) -> tuple[datasets.Dataset, Where]:
    tables: list[datasets.Dataset] = []
    parts: list[tuple[int, str]] = []
    removed: dict[str, list[int]] = {}
    start = 0
    for f in files:
        table, dropped = _load_file(f, cache_dir, on_bad_row)
        if dropped:
            removed[f"file '{f}'"] = dropped
        parts.append((start, f"file '{f}'"))
        start += len(table)
        tables.append(table)
    skipped = {"not UTF-8 text (whole row)": sum(map(len, removed.values()))} if removed else {}
    if len(tables) == 1:
        where = Where(description=f"file '{files[0]}'", removed=removed, skipped=skipped)
        return tables[0], where
    columns = [set(t.column_names) for t in tables]
    if any(c != columns[0] for c in columns[1:]):
        listing = "; ".join(f"'{f}': {sorted(c)}" for f, c in zip(files, columns, strict=True))
        raise DataError(f"files of one source must have the same columns, got {listing}")
    try:
        rows = datasets.concatenate_datasets(tables)
    except Exception as err:  # noqa: BLE001 - re-raised with the files named
        raise DataError(
            f"files {list(files)} have the same columns but different value types, so they "
            f"cannot be read as one table ({type(err).__name__}: {_first_line(err)}); make each "
            "column hold one type in every file"
        ) from None
    where = Where(
        description=f"{len(files)} files ({files[0]}, ...)",
        parts=parts,
        removed=removed,
        skipped=skipped,
    )
    return rows, where


def _load_file(
    path: str, cache_dir: str | None, on_bad_row: str = "error"
) -> tuple[datasets.Dataset, list[int]]:
    """The file's rows, and the rows dropped for bytes that are not UTF-8 (under skip)."""
    check_file(path)
    builder = data_format(path)
    dropped = rows_to_drop(path, builder, on_bad_row)
    try:
        table = datasets.load_dataset(
            builder, data_files=[os.path.abspath(path)], split="train", cache_dir=cache_dir
        )
    except Exception as err:  # noqa: BLE001 - every failure inside `datasets` gets named
        if is_disk_full(err):
            raise disk_full_error(_datasets_cache(cache_dir), f"the rows of '{path}'", err) from err
        detail = diagnose_json(path) if builder == "json" else None
        cause = err.__cause__ or err
        if detail is None:
            detail = f"{type(cause).__name__}: {_first_line(cause)}"
        raise DataError(
            f"file '{path}' could not be read as {_describe(builder)}: {detail}"
        ) from None
    if dropped:
        table = table.select(sorted(set(range(len(table))) - set(dropped)))
    return table, dropped


def _load_hub(spec: SourceSpec, cache_dir: str | None) -> tuple[datasets.Dataset, Where]:
    desc = f"hub dataset '{spec.path}'"
    extras = [
        f"{k} '{v}'"
        for k, v in (("subset", spec.subset), ("data_dir", spec.data_dir), ("split", spec.split))
        if v
    ]
    if extras:
        desc += f" ({', '.join(extras)})"
    try:
        rows = datasets.load_dataset(
            str(spec.path),
            name=spec.subset,
            data_dir=spec.data_dir,
            data_files=spec.data_files,
            split=spec.split,
            revision=spec.revision,
            cache_dir=cache_dir,
        )
    except Exception as err:  # noqa: BLE001 - every failure inside `datasets` gets named
        if is_disk_full(err):
            raise disk_full_error(_datasets_cache(cache_dir), desc, err) from err
        raise DataError(
            f"source '{spec.name}': could not load {desc}: {type(err).__name__}: "
            f"{_first_line(err)}. (No local file of that name exists either; offline runs need "
            "local files or a filled `datasets` cache.)"
        ) from err
    return rows, Where(description=desc)


def _datasets_cache(cache_dir: str | None) -> str:
    return cache_dir or str(datasets.config.HF_DATASETS_CACHE)


def _describe(builder: str) -> str:
    return {
        "json": "JSON (an array of objects, or JSON Lines)",
        "parquet": "Parquet",
        "csv": "CSV",
    }[builder]


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0][:300] if text else ""


def _chain(first: list[str], rest: Any):
    yield from first
    yield from rest
