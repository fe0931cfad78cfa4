"""Lightning trainer plugins: crash-safe checkpoint writes."""

from panacea_pl.plugins.checkpoint_io import AtomicCheckpointIO, CheckpointError, read_checkpoint

__all__ = ["AtomicCheckpointIO", "CheckpointError", "read_checkpoint"]
