"""Checkpoints that a crash during the save cannot corrupt.

    trainer:
      plugins: [{class_path: panacea_pl.plugins.AtomicCheckpointIO}]   # the CLI's default

Lightning's `TorchCheckpointIO` writes through fsspec into a temporary file in the system temp
folder and then `shutil.move`s it: when that folder is on another filesystem than the run (a
`/tmp` tmpfs, a cluster's local scratch), the move is a copy, and a process killed during the
copy leaves a truncated `last.ckpt`; nothing is fsynced, so a power cut can leave an empty one;
and the temporary file of a killed save stays in the temp folder. This plugin writes beside
the target and renames (`panacea_pl.atomic.atomic_write`), so `last.ckpt` is always a whole
checkpoint: the previous one or the new one. Loading goes through `read_checkpoint`, which names
the file and says what is wrong with it (missing, truncated, not a checkpoint, holding objects
that a safe load refuses) instead of torch's unpickling errors.
"""

from __future__ import annotations

import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch
from fsspec.implementations.local import LocalFileSystem
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.plugins.io import TorchCheckpointIO

from panacea_pl.atomic import atomic_write


class AtomicCheckpointIO(TorchCheckpointIO):
    """`TorchCheckpointIO` whose local saves are atomic and durable (temp file + fsync +
    `os.replace` + folder fsync). Remote paths (`s3://…`) are left to Lightning: an object
    store's put is atomic already. Loading and removal are Lightning's.

    Local loads go through `read_checkpoint` (clear errors, `weights_only=True` unless asked).

    Under DDP only global rank 0 saves (the strategy's rule); FSDP with
    `state_dict_type: full` saves through this plugin too; DeepSpeed writes its own sharded
    folders and does not use a CheckpointIO.
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None:
            raise TypeError(
                f"{type(self).__name__} takes no storage_options (got {storage_options!r}); "
                "they apply to remote filesystems, which Lightning's TorchCheckpointIO handles"
            )
        if not isinstance(get_filesystem(path), LocalFileSystem):
            super().save_checkpoint(checkpoint, path)
            return
        atomic_write(path, lambda tmp: torch.save(checkpoint, tmp))

    def load_checkpoint(
        self, path: Any, map_location: Any | None = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        if not isinstance(get_filesystem(path), LocalFileSystem):
            return super().load_checkpoint(path, map_location, weights_only)
        return read_checkpoint(path, map_location, weights_only=weights_only is not False)


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read; the message names the file and the reason."""


def read_checkpoint(
    path: str | Path, map_location: Any | None = "cpu", weights_only: bool = True
) -> dict[str, Any]:
    """`torch.load` a Lightning checkpoint, with errors that name the file and the problem.

    A missing file, a truncated or overwritten one, a file that is not a torch checkpoint, and
    one holding Python objects that a safe (`weights_only=True`) load refuses each get their own
    message; none suggests disabling the safe load, since a checkpoint written by `panacea-pl`
    never needs it.
    """
    path = Path(path)
    if not path.is_file():
        what = "is a folder, not a checkpoint file" if path.is_dir() else "does not exist"
        raise FileNotFoundError(f"checkpoint {path} {what}")
    size = path.stat().st_size
    if not zipfile.is_zipfile(path):  # torch has written zip archives since 1.6
        raise CheckpointError(
            f"checkpoint {path} ({size} bytes) is truncated or corrupt: it is not a whole torch "
            "checkpoint archive. Resume from another checkpoint of the run (e.g. last.ckpt or "
            "another file in its checkpoints/ folder). It was not loaded."
        )
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=weights_only)
    except pickle.UnpicklingError as err:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
        what = f"the object {found.group(1)}" if found else "Python objects"
        raise CheckpointError(
            f"checkpoint {path} holds {what}, which a safe load refuses. panacea-pl "
            "checkpoints hold only tensors and plain values: this file was written by other "
            "code, or was altered. It was not loaded."
        ) from None
    except (RuntimeError, EOFError, KeyError, ValueError, zipfile.BadZipFile) as err:
        raise CheckpointError(
            f"checkpoint {path} ({size} bytes) is corrupt and cannot be read "
            f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}). Resume "
            "from another checkpoint of the run. It was not loaded."
        ) from None
    return checkpoint
