"""Content keys and crash-safe writes for the benchmark's on-disk cache.

key = settings_key({"seed": 0, "prompts": [...]})      # 16 hex digits
atomic_write(cache / f"samples-{key}.npz", lambda tmp: np.savez(tmp, **arrays))
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path


def settings_key(settings: dict) -> str:
    """A short, stable hash of JSON-serialisable settings (key order does not matter)."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def file_digest(path: Path) -> str:
    """sha256 of a file's bytes."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def atomic_write(path: Path, write: Callable[[Path], object]) -> Path:
    """Call `write(tmp)` on a temporary name beside `path`, then rename it to `path`.

    A crash never leaves a partial cache entry under the final name. The temporary name keeps
    `path`'s suffix (`np.savez` would otherwise append `.npz`).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    write(tmp)
    tmp.replace(path)
    return path
