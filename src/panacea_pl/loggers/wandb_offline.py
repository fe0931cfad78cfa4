"""Read a W&B offline run back from disk — summary, config, history, logged tables — no server.

    run = read_offline_run("runs/x/wandb/offline-run-20260101_120000-abcd1234")
    run.summary["pareto/hypervolume"]     # the run summary, as the W&B UI would show it
    run.config, run.history[-1]           # config and the last logged row
    columns, rows = run.table("pareto/front_final")   # a logged wandb.Table

The run's `run-<id>.wandb` file is the record log that `wandb sync` uploads: LevelDB log framing
(32 KiB blocks of records with a 7-byte header: CRC, length, type; records may span blocks) after a
7-byte W&B header, each record one `wandb.proto.wandb_internal_pb2.Record`. The wandb package
ships the protobuf schema but no reader since its Go core took over (0.18+), so the framing is
read here and the records with wandb's own protobuf classes. Without a `.wandb` file (a run synced
and cleaned, or an older layout) the files `files/wandb-summary.json` and `files/config.yaml` are
read instead.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

BLOCK_SIZE = 32 * 1024
FILE_HEADER = 7  # b":W&B" + magic (2 bytes) + version (1 byte)
RECORD_HEADER = struct.Struct("<IHB")  # masked CRC-32C, payload length, record type
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


@dataclass
class OfflineRun:
    """What a W&B offline run folder holds.

    Attributes:
        directory: the `offline-run-*` folder.
        run_id, name, project: as given to `wandb.init` (name: the display name).
        config: the run config (`wandb.config`).
        summary: the run summary (last value of each logged key, plus `summary.update`s).
        history: one dict per logged step.
    """

    directory: Path
    run_id: str = ""
    name: str = ""
    project: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)

    def table(self, key: str) -> tuple[list[str], list[list[Any]]]:
        """Columns and rows of the `wandb.Table` last logged under `key`."""
        entry = self.summary.get(key)
        if not isinstance(entry, dict) or "path" not in entry:
            tables = sorted(k for k, v in self.summary.items() if _is_table(v))
            raise KeyError(
                f"no table {key!r} in the summary of {self.directory} (tables: {tables})"
            )
        data = json.loads((self.directory / "files" / entry["path"]).read_text())
        return list(data["columns"]), [list(row) for row in data["data"]]

    def tables(self) -> list[str]:
        """Keys of the tables in the summary."""
        return sorted(k for k, v in self.summary.items() if _is_table(v))


def find_offline_runs(root: str | Path) -> list[Path]:
    """Every `offline-run-*` folder under `root` (itself included), oldest first."""
    root = Path(root)
    found = [root] if root.name.startswith("offline-run-") else []
    found += [p for p in root.rglob("offline-run-*") if p.is_dir()]
    return sorted(set(found), key=lambda p: p.name)


def read_offline_run(directory: str | Path) -> OfflineRun:
    """Read an `offline-run-*` folder (see the module docstring for the sources)."""
    directory = Path(directory)
    run = OfflineRun(directory)
    logs = sorted(directory.glob("run-*.wandb"))
    if logs:
        for record in read_records(logs[0]):
            _apply(run, record)
        return run
    summary = directory / "files" / "wandb-summary.json"
    config = directory / "files" / "config.yaml"
    if not summary.is_file() and not config.is_file():
        raise FileNotFoundError(
            f"{directory} has no run-*.wandb, wandb-summary.json or config.yaml"
        )
    if summary.is_file():
        run.summary = json.loads(summary.read_text())
    if config.is_file():
        raw = yaml.safe_load(config.read_text()) or {}
        run.config = {k: v.get("value", v) if isinstance(v, dict) else v for k, v in raw.items()}
    run.run_id = directory.name.rsplit("-", 1)[-1]
    return run


def read_records(path: str | Path) -> Iterator[Any]:
    """The `Record` protobufs of a `.wandb` file, in order (a torn last record is dropped)."""
    from wandb.proto import wandb_internal_pb2

    data = Path(path).read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path} is not a W&B run file (header {data[:4]!r})")
    for payload in _payloads(data):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(payload)
        yield record


def _payloads(data: bytes) -> Iterator[bytes]:
    pos, pending = FILE_HEADER, b""
    while pos + RECORD_HEADER.size <= len(data):
        left = BLOCK_SIZE - pos % BLOCK_SIZE
        if left < RECORD_HEADER.size:  # block trailer: zero padding
            pos += left
            continue
        _, length, kind = RECORD_HEADER.unpack_from(data, pos)
        start = pos + RECORD_HEADER.size
        if kind == 0 or start + length > len(data):  # padding, or a torn write at the end
            if kind == 0 and length == 0:
                pos += left
                continue
            return
        chunk, pos = data[start : start + length], start + length
        if kind == FULL:
            yield chunk
        elif kind == FIRST:
            pending = chunk
        elif kind == MIDDLE:
            pending += chunk
        elif kind == LAST:
            yield pending + chunk
            pending = b""


def _apply(run: OfflineRun, record: Any) -> None:
    kind = record.WhichOneof("record_type")
    if kind == "run":
        run.run_id = record.run.run_id
        run.name = record.run.display_name
        run.project = record.run.project
        for item in record.run.config.update:
            _set(run.config, item)
    elif kind == "config":
        for item in record.config.update:
            _set(run.config, item)
        for item in record.config.remove:
            _remove(run.config, item)
    elif kind == "summary":
        for item in record.summary.update:
            _set(run.summary, item)
        for item in record.summary.remove:
            _remove(run.summary, item)
    elif kind == "history":
        row: dict[str, Any] = {}
        for item in record.history.item:
            _set(row, item)
        run.history.append(row)


def _path(item: Any) -> list[str]:
    return [item.key] if item.key else list(item.nested_key)


def _set(target: dict, item: Any) -> None:
    *parents, last = _path(item)
    for key in parents:
        target = target.setdefault(key, {})
    target[last] = json.loads(item.value_json)


def _remove(target: dict, item: Any) -> None:
    *parents, last = _path(item)
    for key in parents:
        target = target.get(key, {})
    target.pop(last, None)


def _is_table(value: Any) -> bool:
    return isinstance(value, dict) and str(value.get("_type", "")).startswith("table")
