"""Callbacks: Pareto sweeps over the simplex."""

from panacea_pl.callbacks.pareto_sweep import ParetoSweep

__all__ = ["ParetoSweep"]
