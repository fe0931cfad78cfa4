"""Deterministic train/validation split by prompt.

    train, val = split_by_prompt(table, val_fraction=0.05, seed=0)

The distinct prompts (in first-seen order) are permuted with `numpy.random.default_rng(seed)`;
the first `round(val_fraction × #prompts)` go to validation (at least one when the fraction is
positive and there are two or more prompts; at least one prompt always stays in training). Every row of a prompt lands on the same side, so no
prompt is trained on and validated on (HelpSteer and UltraFeedback give several pairs per
prompt). The same files, configuration and seed always give the same split.
"""

from __future__ import annotations

import datasets
import numpy as np

from panacea_pl.data.errors import ConfigError


def split_by_prompt(
    table: datasets.Dataset, val_fraction: float, seed: int
) -> tuple[datasets.Dataset, datasets.Dataset]:
    """Split rows into (train, validation) so that each prompt is on one side only.

    Args:
        table: rows with a `prompt` column.
        val_fraction: share of the distinct prompts that go to validation, in [0, 1).
        seed: seed of the permutation.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ConfigError(f"val_fraction must be in [0, 1), got {val_fraction}")
    prompts = table["prompt"]
    unique = list(dict.fromkeys(prompts))
    n_val = int(round(val_fraction * len(unique)))
    if val_fraction > 0 and n_val == 0 and len(unique) > 1:
        n_val = 1
    n_val = min(n_val, max(len(unique) - 1, 0))  # keep at least one training prompt
    order = np.random.default_rng(seed).permutation(len(unique))
    val_prompts = {unique[i] for i in order[:n_val]}
    val_idx = [i for i, p in enumerate(prompts) if p in val_prompts]
    train_idx = [i for i, p in enumerate(prompts) if p not in val_prompts]
    return (
        table.select(train_idx).flatten_indices(keep_in_memory=True),
        table.select(val_idx).flatten_indices(keep_in_memory=True),
    )
