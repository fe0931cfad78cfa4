"""Preference pairs labelled per dimension by Bradley–Terry, written in the `generic` schema.

    index = choose_pairs(prompt_index, pairs_per_prompt=1024, seed=0, rewards=rewards)  # [K, 2]
    labels = bradley_terry_labels(rewards[index[:, 0]], rewards[index[:, 1]], temperature=0.04,
                                  soft=True)
    write_pairs(path, prompts, texts_a, texts_b, labels, ["happy", "sad"])

Each row of the file is `{"prompt", "response_a", "response_b", "<dimension>": label}`: for
dimension i, response_a is preferred with probability p_i = σ((r_i(a) − r_i(b)) / τ). Hard labels
are drawn from it (1 with probability p_i, else -1), not thresholded, so the DPO population
optimum is exactly the tilt derived in `benchmark.py` (β_eff = β·τ); every dimension has its own
random stream, so the labels of dimension i do not depend on how many dimensions are written.
Soft labels write p_i itself as 2·p_i − 1: the same population optimum (the soft DPO loss is the
expectation of the hard one over the draw) without the sampling noise of the draw, which is most
of what a finite set of pairs teaches wrong. A tie (p_i = 1/2) is label 0, which the data layer
reads as unlabelled.

Which pairs are labelled does not move that optimum: the tilted policy sets every pair's margin
to its Bradley–Terry log-odds, so it minimises the expected DPO loss of each pair, whatever pairs
are drawn (inside the simplex, the λ-weighted sum of DPO losses keeps its first-order mismatch
either way: about 5e-4 of regret at τ = 0.04, m = 2, for uniform and for this choice alike). It
does change how much a pair teaches. A pair whose responses score the same in dimension i (most
often: neither has a word of the family) gets a coin-flip label there, pure noise for the
gradient; for the sparse families (sad words: 77 % of the base model's stories have none) that
is most pairs. So, given the rewards, `choose_pairs` takes the pairs that differ in the most
dimensions first (for m = 2: in both, while there are enough). Read the file with the data
layer's `generic` schema, one `DimensionSpec(name, source=…, field=name)` per dimension.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from panacea_pl.atomic import atomic_write


def choose_pairs(
    prompt_index: np.ndarray,
    pairs_per_prompt: int,
    seed: int,
    rewards: np.ndarray | None = None,
) -> np.ndarray:
    """Pick up to `pairs_per_prompt` distinct unordered pairs of responses to the same prompt.

    Args:
        prompt_index: [N] the prompt of each candidate response.
        pairs_per_prompt: pairs per prompt (fewer when a prompt has fewer distinct pairs).
        seed: seed of the choice and of the a/b order.
        rewards: [N, m] rewards of the candidates. If given, pairs that differ in more of the m
            dimensions are taken first (at random among pairs that differ in equally many);
            if None, pairs are drawn uniformly.

    Returns:
        [K, 2] indices into the N responses: (a, b) per pair, grouped by prompt.
    """
    rng = np.random.default_rng(seed)
    chosen = []
    for p in np.unique(prompt_index):
        members = np.flatnonzero(prompt_index == p)
        i, j = np.triu_indices(len(members), k=1)
        size = min(pairs_per_prompt, len(i))
        if rewards is None:
            pick = rng.choice(len(i), size=size, replace=False)
        else:
            r = np.asarray(rewards)[members].reshape(len(members), -1)
            differing = (r[i] != r[j]).sum(1)
            pick = np.lexsort((rng.random(len(i)), -differing))[:size]
        pairs = np.stack([members[i[pick]], members[j[pick]]], axis=1)
        swap = rng.random(len(pairs)) < 0.5
        pairs[swap] = pairs[swap, ::-1]
        chosen.append(pairs)
    return np.concatenate(chosen) if chosen else np.zeros((0, 2), dtype=np.int64)


def bradley_terry_labels(
    rewards_a: np.ndarray,
    rewards_b: np.ndarray,
    temperature: float,
    seed: int = 0,
    soft: bool = False,
) -> np.ndarray:
    """Labels [K, m] of the Bradley–Terry model p = σ((r_a − r_b) / temperature) per dimension.

    Args:
        rewards_a: [K, m] rewards of response a.
        rewards_b: [K, m] rewards of response b.
        temperature: τ > 0 of the Bradley–Terry model.
        seed: dimension i draws from `np.random.default_rng([seed, i])` (hard labels only).
        soft: return 2p − 1 ∈ (−1, 1) (float) instead of a draw: 1 with probability p, else −1.
    """
    if not temperature > 0:
        raise ValueError(f"the Bradley-Terry temperature must be positive, got {temperature}")
    margin = (np.asarray(rewards_a, np.float64) - np.asarray(rewards_b, np.float64)) / temperature
    prob_a = 1.0 / (1.0 + np.exp(-margin))
    if soft:
        return 2.0 * prob_a - 1.0
    draws = np.stack(
        [np.random.default_rng([seed, i]).random(len(margin)) for i in range(margin.shape[1])], 1
    ).reshape(margin.shape)
    return np.where(draws < prob_a, 1, -1)


def write_pairs(
    path: str | Path,
    prompts: Sequence[str],
    responses_a: Sequence[str],
    responses_b: Sequence[str],
    labels: np.ndarray,
    dimension_names: Sequence[str],
) -> Path:
    """Write the pairs as JSON lines (atomically: a partial file never has the final name)."""

    def write(tmp: Path) -> None:
        with tmp.open("w", encoding="utf-8") as f:
            for prompt, a, b, row in zip(prompts, responses_a, responses_b, labels, strict=True):
                record = {"prompt": prompt, "response_a": a, "response_b": b}
                record |= {name: _label(v) for name, v in zip(dimension_names, row, strict=True)}
                f.write(json.dumps(record, ensure_ascii=False) + "\n")

    return atomic_write(Path(path), write, keep_suffix=True)


def _label(value: float) -> int | float:
    """A hard label as an int, a soft one as a float rounded to 6 decimals (JSON-friendly)."""
    return int(value) if float(value).is_integer() else round(float(value), 6)
