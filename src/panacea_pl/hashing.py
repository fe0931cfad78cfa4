"""Stable content keys: one hash of settings, one of a file, for every cache in the package.

key = settings_key({"seed": 0, "prompts": [...]})      # 16 hex digits, key order ignored
digest = file_digest("stories260K.bin")                 # sha256 of the bytes
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any


def settings_key(settings: Any, length: int | None = 16) -> str:
    """sha256 of `settings` as sorted-key JSON (non-JSON values by `str`), cut to `length` hex
    digits (None: all 64)."""
    text = json.dumps(settings, sort_keys=True, default=str)
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    return digest if length is None else digest[:length]


def file_digest(path: str | Path) -> str:
    """sha256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
