"""Pair choice and Bradley–Terry labelling of the stories benchmark."""

from __future__ import annotations

import json

import numpy as np
import pytest

from panacea_pl.benchmarks.stories.pairs import bradley_terry_labels, choose_pairs, write_pairs


def test_label_frequencies_follow_the_bradley_terry_probability():
    margins = np.array([-0.1, -0.02, 0.0, 0.03, 0.2])
    rewards_a = np.repeat(margins, 20000)[:, None]
    labels = bradley_terry_labels(rewards_a, np.zeros_like(rewards_a), temperature=0.05, seed=3)
    assert set(np.unique(labels)) == {-1, 1}
    frequency = (labels.reshape(5, 20000) == 1).mean(1)
    np.testing.assert_allclose(frequency, 1 / (1 + np.exp(-margins / 0.05)), atol=0.01)


def test_soft_labels_are_two_p_minus_one_and_ties_are_zero():
    a = np.array([[0.1, 0.0], [0.0, 0.0], [-0.05, 0.2]])
    soft = bradley_terry_labels(a, np.zeros_like(a), temperature=0.05, soft=True)
    np.testing.assert_allclose(soft, 2 / (1 + np.exp(-a / 0.05)) - 1)
    assert soft[1, 0] == 0 and soft[0, 1] == 0  # a tie: no preference, read as unlabelled


def test_each_dimension_has_its_own_stream():
    rng = np.random.default_rng(0)
    a, b = rng.random((100, 3)), rng.random((100, 3))
    three = bradley_terry_labels(a, b, 0.1, seed=7)
    two = bradley_terry_labels(a[:, :2], b[:, :2], 0.1, seed=7)
    np.testing.assert_array_equal(three[:, :2], two)
    with pytest.raises(ValueError, match="positive"):
        bradley_terry_labels(a, b, 0.0)


def test_pairs_are_distinct_and_within_a_prompt():
    prompt_index = np.repeat([0, 1, 2], [5, 5, 3])
    pairs = choose_pairs(prompt_index, pairs_per_prompt=6, seed=0)
    assert len(pairs) == 6 + 6 + 3  # prompt 2 has only C(3, 2) = 3 pairs
    assert (prompt_index[pairs[:, 0]] == prompt_index[pairs[:, 1]]).all()
    assert (pairs[:, 0] != pairs[:, 1]).all()
    assert len({tuple(sorted(p)) for p in pairs.tolist()}) == len(pairs)


def test_pairs_that_differ_in_more_dimensions_come_first():
    # 4 responses to one prompt. Dimensions in which each pair differs:
    # (0,1): 1  (0,2): 0  (0,3): 2  (1,2): 1  (1,3): 1  (2,3): 2
    rewards = np.array([[0.1, 0.0], [0.0, 0.0], [0.1, 0.0], [0.0, 0.2]])
    prompt_index = np.zeros(4, dtype=int)
    pairs = choose_pairs(prompt_index, pairs_per_prompt=5, seed=0, rewards=rewards)
    unordered = [tuple(sorted(p)) for p in pairs.tolist()]
    assert set(unordered[:2]) == {(0, 3), (2, 3)}  # both dimensions differ
    assert set(unordered[2:]) == {(0, 1), (1, 2), (1, 3)}  # one differs
    assert (0, 2) not in unordered  # ties in both: left out while others remain
    # without rewards the choice is uniform, as before the argument existed
    np.testing.assert_array_equal(
        choose_pairs(prompt_index, 3, seed=0), choose_pairs(prompt_index, 3, seed=0, rewards=None)
    )


def test_write_pairs(tmp_path):
    path = write_pairs(tmp_path / "p.jsonl", ["P"], ["a"], ["b"], np.array([[1, -1]]), ["x", "y"])
    assert json.loads(path.read_text()) == {
        "prompt": "P",
        "response_a": "a",
        "response_b": "b",
        "x": 1,
        "y": -1,
    }
    assert [f.name for f in tmp_path.iterdir()] == ["p.jsonl"]
