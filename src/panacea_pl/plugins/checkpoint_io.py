"""Checkpoints that a crash during the save cannot corrupt.

    trainer:
      plugins: [{class_path: panacea_pl.plugins.AtomicCheckpointIO}]   # the CLI's default

Lightning's `TorchCheckpointIO` writes through fsspec into a temporary file in the system temp
folder and then `shutil.move`s it: when that folder is on another filesystem than the run (a
`/tmp` tmpfs, a cluster's local scratch), the move is a copy, and a process killed during the
copy leaves a truncated `last.ckpt`; nothing is fsynced, so a power cut can leave an empty one;
and the temporary file of a killed save stays in the temp folder. This plugin writes beside
the target and renames (`panacea_pl.atomic.atomic_write`), so `last.ckpt` is always a whole
checkpoint: the previous one or the new one.
"""

from __future__ import annotations

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
