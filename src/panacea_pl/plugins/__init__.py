"""Lightning trainer plugins: crash-safe checkpoint writes."""

from panacea_pl.plugins.checkpoint_io import AtomicCheckpointIO

__all__ = ["AtomicCheckpointIO"]
