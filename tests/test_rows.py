"""The batch row layouts (`panacea_pl.rows`), checked against rows written out by hand."""

from __future__ import annotations

import pytest
import torch

from panacea_pl.rows import group_rows, join_pairs, pair_rows, repeat_rows, split_pairs, tile_rows

LAM = torch.tensor([[0.25, 0.75], [0.5, 0.5], [1.0, 0.0]])  # B = 3 pairs / prompts


def test_pairs_are_a_rows_then_b_rows():
    expected = torch.tensor([[0.25, 0.75], [0.5, 0.5], [1.0, 0.0]] * 2)
    assert torch.equal(pair_rows(LAM), expected)
    assert pair_rows(["p0", "p1"]) == ["p0", "p1", "p0", "p1"]
    assert join_pairs(["a0", "a1"], ["b0", "b1"]) == ["a0", "a1", "b0", "b1"]
    logps = torch.tensor([1.0, 2.0, 3.0, -1.0, -2.0, -3.0])
    a, b = split_pairs(logps)
    assert a.tolist() == [1.0, 2.0, 3.0] and b.tolist() == [-1.0, -2.0, -3.0]
    assert torch.equal(join_pairs(a, b), logps)


def test_pair_layout_errors():
    with pytest.raises(ValueError, match="5 rows are not a pair batch"):
        split_pairs(torch.zeros(5))
    with pytest.raises(ValueError, match="2 a rows but 1 b rows"):
        join_pairs(torch.zeros(2), torch.zeros(1))


def test_repeats_are_consecutive_and_tiles_are_blocks():
    assert repeat_rows(LAM, 2)[:, 0].tolist() == [0.25, 0.25, 0.5, 0.5, 1.0, 1.0]
    assert repeat_rows(["x", "y"], 3) == ["x", "x", "x", "y", "y", "y"]
    assert repeat_rows(LAM, 1) is LAM
    ids = torch.tensor([[1, 2], [3, 4]])
    assert tile_rows(ids, 3).tolist() == [[1, 2], [3, 4]] * 3
    assert tile_rows(torch.tensor([5.0, 6.0]), 2).tolist() == [5.0, 6.0, 5.0, 6.0]
    assert tile_rows(["x", "y"], 2) == ["x", "y", "x", "y"]
    # what generate(num_return_sequences=k) returns: prompt j's samples are rows j·k … j·k + k − 1
    grouped = group_rows(repeat_rows(LAM, 4), 4)
    assert grouped.shape == (3, 4, 2) and torch.equal(grouped, LAM[:, None].expand(3, 4, 2))


def test_repeat_layout_errors():
    with pytest.raises(ValueError, match="integer >= 1, got 0"):
        repeat_rows(LAM, 0)
    with pytest.raises(ValueError, match="integer >= 1, got True"):
        tile_rows(LAM, True)
    with pytest.raises(ValueError, match="7 rows do not split into groups of 2"):
        group_rows(torch.zeros(7), 2)
