"""The batch row layouts, stated once (torch only, so every layer of the package may use them).

Two layouts run through the code; each helper takes a tensor (rows on dim 0) or a list.

**Pairs: a rows, then b rows.** A batch of B preference pairs is 2B sequence rows: the B
responses a (rows 0 … B−1), then the B responses b (rows B … 2B−1), pair j's prompt on rows j
and B + j. `PreferenceCollator` builds it; the DPO step, the preference losses and the
reward-model losses read it.

    rows = pair_rows(lam)                 # [B, m] per pair → [2B, m] per sequence
    a, b = split_pairs(policy_logps)      # [2B] → [B], [B]
    both = join_pairs(cost_a, cost_b)     # [B], [B] → [2B]

**Repeats: k consecutive rows per item.** Item j's copies are rows j·k … j·k + k − 1 (what
`generate(num_return_sequences=k)` returns and `torch.repeat_interleave` builds): a prompt's
samples, a GRPO group, a λ's prompts in a sweep. `group_rows` views them back as [N, k, …].
`tile_rows` is the other repetition: the whole block k times (block-major), e.g. one copy of a
batch per λ of a chunk.

    lam_rows = repeat_rows(lam, k)        # [N, m] → [N·k, m]: rows j·k … j·k + k − 1 are lam[j]
    rewards = group_rows(rewards, k)      # [N·k, …] → [N, k, …]
    batches = tile_rows(input_ids, g)     # [B, T] → [g·B, T]: rows i·B … i·B + B − 1 are the batch
"""

from __future__ import annotations

from typing import TypeVar

import torch

Rows = TypeVar("Rows", torch.Tensor, list)


def pair_rows(x: Rows) -> Rows:
    """Per-pair rows [B, …] → per-sequence rows [2B, …]: pair j's row for its a (row j) and its
    b (row B + j)."""
    return join_pairs(x, x)


def join_pairs(a: Rows, b: Rows) -> Rows:
    """The a rows [B, …] and the b rows [B, …] → [2B, …], a first."""
    if len(a) != len(b):
        raise ValueError(f"{len(a)} a rows but {len(b)} b rows; a pair batch needs as many of each")
    if isinstance(a, torch.Tensor):
        return torch.cat([a, b])
    return list(a) + list(b)


def split_pairs(x: Rows) -> tuple[Rows, Rows]:
    """[2B, …] → (the a rows [B, …], the b rows [B, …])."""
    if len(x) % 2:
        raise ValueError(f"{len(x)} rows are not a pair batch (a rows then b rows: an even count)")
    half = len(x) // 2
    return x[:half], x[half:]


def repeat_rows(x: Rows, k: int) -> Rows:
    """[N, …] → [N·k, …]: each row k times in a row (rows j·k … j·k + k − 1 are x[j])."""
    _check_count(k)
    if isinstance(x, torch.Tensor):
        return x if k == 1 else x.repeat_interleave(k, dim=0)
    return [row for row in x for _ in range(k)]


def tile_rows(x: Rows, k: int) -> Rows:
    """[N, …] → [k·N, …]: the whole block k times (rows i·N … i·N + N − 1 are x)."""
    _check_count(k)
    if isinstance(x, torch.Tensor):
        return x if k == 1 else x.repeat(k, *([1] * (x.dim() - 1)))
    return list(x) * k


def group_rows(x: torch.Tensor, k: int) -> torch.Tensor:
    """[N·k, …] → [N, k, …]: `repeat_rows`' layout viewed as groups of k consecutive rows."""
    _check_count(k)
    if x.shape[0] % k:
        raise ValueError(f"{x.shape[0]} rows do not split into groups of {k} consecutive rows")
    return x.reshape(x.shape[0] // k, k, *x.shape[1:])


def group_members(groups: torch.Tensor, k: int) -> torch.Tensor:
    """Indices [len(groups)·k] of the rows of the given groups under `repeat_rows`' layout,
    group by group (group g's rows are g·k … g·k + k − 1)."""
    _check_count(k)
    return (groups[:, None] * k + torch.arange(k, device=groups.device)).reshape(-1)


def within_group_pairs(num_groups: int, k: int, device=None) -> torch.Tensor:
    """[num_groups · k(k−1)/2, 2] row indices (a, b) of every unordered pair within each group of
    k consecutive rows, group-major: (0, 1), (0, 2), …, (k−2, k−1), then group 1's."""
    _check_count(k)
    within = torch.triu_indices(k, k, 1, device=device).T
    starts = torch.arange(num_groups, device=device) * k
    return (starts[:, None, None] + within[None]).reshape(-1, 2)


def _check_count(k: int) -> None:
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"a row repeat count must be an integer >= 1, got {k!r}")
