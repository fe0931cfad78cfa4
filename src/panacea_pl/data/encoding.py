"""Find bytes that are not UTF-8 in a text data file, by row, line and byte offset.

    bad = find_invalid_utf8("data.jsonl")     # [] for a clean file
    bad[0].describe()                         # "row 300 (line 301), byte offset 1234: byte 0xff"

pyarrow reads such bytes into string columns without complaint; the error comes later, from
whichever code first reads the value, with no file or row. So text files are scanned once when a
source is built (a fast whole-block decode; lines are only split when a block fails).
"""

from __future__ import annotations

import codecs
import gzip
from dataclasses import dataclass
from typing import BinaryIO

from panacea_pl.data.errors import DataError

_BLOCK = 1 << 24


@dataclass(frozen=True)
class InvalidUtf8:
    """One line with a byte sequence that is not UTF-8.

    Attributes:
        row: 0-based index among the file's non-blank lines (a JSON Lines row).
        line: 1-based line number.
        offset: 0-based byte offset of the first bad byte in the (decompressed) file.
        byte: that byte.
    """

    row: int
    line: int
    offset: int
    byte: int

    def describe(self, rows: bool = True) -> str:
        """Where and what; `rows` False for files whose rows are not lines (CSV, JSON arrays)."""
        where = f"row {self.row} (line {self.line})" if rows else f"line {self.line}"
        return f"{where}, byte offset {self.offset}: byte 0x{self.byte:02x} is not UTF-8"


def _open(path: str) -> BinaryIO:
    return gzip.open(path, "rb") if path.lower().endswith(".gz") else open(path, "rb")  # noqa: SIM115


def is_utf8(path: str) -> bool:
    """Whether the whole (decompressed) file decodes as UTF-8, read in 16 MiB blocks."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    with _open(path) as fh:
        try:
            while block := fh.read(_BLOCK):
                decoder.decode(block)
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            return False
    return True


def find_invalid_utf8(path: str, limit: int = 1000) -> list[InvalidUtf8]:
    """The lines of `path` holding bytes that are not UTF-8 (at most `limit`), in file order."""
    if is_utf8(path):
        return []
    found: list[InvalidUtf8] = []
    offset = row = 0
    with _open(path) as fh:
        for number, line in enumerate(fh, start=1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as err:
                found.append(InvalidUtf8(row, number, offset + err.start, line[err.start]))
                if len(found) >= limit:
                    break
            if line.strip():
                row += 1
            offset += len(line)
    return found


def rows_to_drop(path: str, builder: str, on_bad_row: str) -> list[int]:
    """Rows of a JSON Lines file to drop under `on_bad_row: skip` for bytes that are not UTF-8.

    Raises:
        DataError: such a byte under `error`, or in a JSON array or CSV file (whose rows cannot be
            told apart by line); names the row, line and byte offset.
    """
    invalid = find_invalid_utf8(path) if builder in ("json", "csv") else []
    if not invalid:
        return []
    json_lines = builder == "json" and not _is_json_array(path)
    if on_bad_row == "skip" and json_lines:
        return sorted({bad.row for bad in invalid})
    how = (
        "Fix the row, or set `on_bad_row: skip` to drop such rows (they are counted in the log)"
        if json_lines
        else "Re-save the file as UTF-8 (rows of a JSON array or CSV file cannot be skipped)"
    )
    raise DataError(
        f"file '{path}', {invalid[0].describe(rows=json_lines)}; expected UTF-8 text ({len(invalid)} such "
        f"line(s) in the file). {how}."
    )


def _is_json_array(path: str) -> bool:
    with _open(path) as fh:
        head = fh.read(1 << 16).lstrip(b"\xef\xbb\xbf \t\r\n")
    return head.startswith(b"[")


def utf8_prefix(data: bytes) -> str | None:
    """The text of `data` up to its first byte that is not UTF-8; None if that is in line 1.

    Later bad bytes are left to `_load_file`'s scan, which names their row and can skip it.
    """
    decoder = codecs.getincrementaldecoder("utf-8")()
    try:
        return decoder.decode(data, final=False)
    except UnicodeDecodeError as err:
        if b"\n" not in data[: err.start]:
            return None
        return data[: err.start].decode("utf-8")
