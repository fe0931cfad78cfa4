"""The tokenised-data cache: a `datasets` `DatasetDict` saved to disk under a content key.

    key = cache_key({"sources": ..., "tokenizer": tokenizer_fingerprint(tok), ...})
    path = cache_path(cache_root(None), "pairs", key)
    if is_cached(path):
        tables, report = load_cached(path)       # no reading, no adapting, no tokenising
    else:
        save_cached(path, tables, report)        # written to a temporary folder, then renamed

The key hashes everything that changes the tokenised rows: source files (path, size, mtime) or
hub coordinates, schema, dimensions, tokenizer (vocabulary, special tokens, chat template),
tokenisation settings, split fraction and seed, bad-row policy, and `CACHE_VERSION`.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import datasets

from panacea_pl.atomic import is_disk_full, publish_folder
from panacea_pl.hashing import settings_key

#: bump when the processing changes in a way the key cannot see
CACHE_VERSION = 2  # 2: float (soft) labels
_REPORT = "panacea_report.json"


class DiskFullError(OSError):
    """A write that failed for want of space (ENOSPC) or quota (EDQUOT); names the folder."""


def disk_full_error(folder: str | Path, what: str, err: BaseException) -> DiskFullError:
    """The error to raise for a full disk: which folder, what was written, how to go on."""
    full = DiskFullError(
        f"no space left on the device (or quota exceeded) while writing {what} to the cache "
        f"folder '{folder}' ({type(err).__name__}: {str(err).strip().splitlines()[0][:200]}); "
        "free space there, or set `cache_dir` to a folder on a disk with room"
    )
    full.errno = errno.ENOSPC
    return full


def cache_root(cache_dir: str | None) -> Path:
    """`cache_dir`, or the `datasets` cache folder (`HF_DATASETS_CACHE`), + `/panacea_pl`."""
    base = Path(cache_dir) if cache_dir else Path(datasets.config.HF_DATASETS_CACHE)
    return base / "panacea_pl"


def cache_key(payload: dict[str, Any]) -> str:
    """sha256 of the JSON of `payload` (sorted keys) and `CACHE_VERSION`."""
    return settings_key({"version": CACHE_VERSION, **payload}, length=None)


def cache_path(root: Path, kind: str, key: str) -> Path:
    return root / f"{kind}-{key[:24]}"


def is_cached(path: Path) -> bool:
    return (path / _REPORT).is_file()


def save_cached(path: Path, tables: dict[str, datasets.Dataset], report: dict[str, Any]) -> None:
    """Write `tables` and `report` to `path` atomically (a concurrent writer's copy wins)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    # empty tables are not saved (`load_from_disk` fails on them); `load_cached` recreates them
    kept = {name: t for name, t in tables.items() if len(t)}
    if not kept:
        raise ValueError("nothing to cache: every table is empty")
    report = {**report, "_empty_tables": sorted(set(tables) - set(kept))}
    try:
        with quiet_progress():
            datasets.DatasetDict(kept).save_to_disk(str(tmp))
        (tmp / _REPORT).write_text(json.dumps(report, indent=2))
    except Exception as err:
        shutil.rmtree(tmp, ignore_errors=True)  # never leave a half-written copy behind
        if is_disk_full(err):
            raise disk_full_error(path.parent, "the tokenised data", err) from err
        raise
    publish_folder(tmp, path, complete=is_cached)


@contextmanager
def quiet_progress() -> Iterator[None]:
    """Silence `datasets` progress bars inside the block (the previous state is restored)."""
    was_enabled = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if was_enabled:
            datasets.enable_progress_bars()


def load_cached(path: Path) -> tuple[dict[str, datasets.Dataset], dict[str, Any]]:
    """The tables and report written by `save_cached`."""
    tables = dict(datasets.load_from_disk(str(path)))
    report = json.loads((path / _REPORT).read_text())
    features = next(iter(tables.values())).features
    for name in report.pop("_empty_tables", []):
        tables[name] = datasets.Dataset.from_dict({k: [] for k in features}, features=features)
    return tables, report
