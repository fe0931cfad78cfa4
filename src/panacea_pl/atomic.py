"""Crash-safe file writes: a file is either its old self or the whole new one, never half.

    atomic_write("runs/x/adapter/panacea_adapter.safetensors", lambda tmp: save_file(t, tmp))

Used for adapter folders (`panacea_pl.layers.io`) and Lightning checkpoints
(`panacea_pl.plugins.AtomicCheckpointIO`). No Lightning import: the adapter stays usable from
plain PyTorch.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

#: Prefix of the temporary files. It never starts with "last" nor ends with ".ckpt", so a file
#: left by a crash mid-save is not taken for a checkpoint by `ckpt_path="last"`.
TEMP_PREFIX = ".partial-"


def atomic_write(
    path: str | os.PathLike, write: Callable[[Path], object], keep_suffix: bool = False
) -> Path:
    """Call `write(tmp)` on a new temporary file beside `path`, then put it in place.

    `keep_suffix` ends the temporary name with `path`'s suffix, for writers that append one
    otherwise (`np.savez` adds `.npz`); checkpoints keep the default, so that a file left by a
    crash never ends in `.ckpt`.

    The temporary file lives in `path`'s folder (same filesystem, so the rename is atomic); its
    data is fsynced before `os.replace` puts it over `path`, and the folder is fsynced after, so
    that neither a killed process nor a power cut leaves a truncated `path`. If `write` fails, the
    temporary file is removed and `path` keeps its old content. A process killed inside `write`
    leaves a `.partial-*` file behind, which nothing reads.

    Returns:
        `path` as a `Path`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix if keep_suffix else ""
    tmp = path.parent / f"{TEMP_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:12]}.tmp{suffix}"
    # os.open with 0o666 honours the umask, unlike mkstemp's 0o600
    os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
    try:
        write(tmp)
        _fsync(tmp, os.O_RDONLY)
        os.replace(tmp, path)
    except BaseException as err:
        full = _disk_full(err, tmp)
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        if full is not None:
            kept = "keeps its previous content" if path.exists() else "was not written"
            raise OSError(
                errno.ENOSPC,
                f"no space left on the disk holding {path.parent} while writing {path.name} "
                f"({full} bytes written, then the disk was full). {path} {kept}; free some "
                "space or write elsewhere",
            ) from err
        raise
    _fsync_folder(path.parent)
    return path


def publish_folder(tmp: Path, path: Path, complete: Callable[[Path], bool]) -> Path:
    """Move the finished folder `tmp` to `path` in one rename; the first writer wins.

    Processes that build the same cache entry at once (the ranks of a run started on an empty
    cache) each write their own `tmp`. The first rename puts one in place; a later one finds
    `path` `complete` and deletes its own copy instead of replacing a folder another process
    may be reading. An incomplete `path` (left by an older version or by hand) is replaced.
    """
    try:
        os.replace(tmp, path)
    except OSError:
        if complete(path):
            shutil.rmtree(tmp, ignore_errors=True)
            return path
        if not path.exists():
            raise
        shutil.rmtree(path)
        os.replace(tmp, path)
    _fsync_folder(path.parent)
    return path


_FULL = (errno.ENOSPC, errno.EDQUOT)
_FULL_TEXT = ("no space left on device", "disk quota exceeded")


def is_disk_full(err: BaseException) -> bool:
    """Whether `err`, or an error it was raised from, says the disk or quota is full (pyarrow's
    IO errors carry the text without the errno)."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in _FULL:
            return True
        if any(text in str(err).lower() for text in _FULL_TEXT):
            return True
        err = err.__cause__ or err.__context__
    return False


def _disk_full(err: BaseException, tmp: Path) -> int | None:
    """The bytes written before a write failed for want of space, or None if it failed otherwise.

    A writer that reports the OS error says so (`is_disk_full`); torch's zip writer says only
    "unexpected pos", so the disk's free space at the moment of failure decides.
    """
    try:
        written = tmp.stat().st_size
    except OSError:
        return None
    if is_disk_full(err):
        return written
    if not isinstance(err, Exception):
        return None  # KeyboardInterrupt and the like
    try:
        free = shutil.disk_usage(tmp.parent).free
    except OSError:
        return None
    return written if free < 64 * 1024 else None


def _fsync(path: Path, flags: int) -> None:
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_folder(folder: Path) -> None:
    """Persist the rename (POSIX); folders cannot be opened for fsync on Windows."""
    if os.name == "nt":
        return
    with contextlib.suppress(OSError):  # some filesystems (network mounts) refuse it
        _fsync(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
