"""Stories-benchmark scorers on hand-written stories, with hand-counted values."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from panacea_pl.benchmarks.stories import scorers as S

HAPPY_STORY = "Lily was happy. She smiled and hugged her dog. They had fun!"
# words: lily was happy she smiled and hugged her dog they had fun = 12
# happy: happy smiled hugged fun = 4; animal: dog = 1; family: 0; sentence ends: 3
SAD_STORY = 'Tom cried. "I lost my ball," he said. He was not happy.'
# words: tom cried i lost my ball he said he was not happy = 12
# sad: cried lost not = 3; happy: happy = 1; toys: ball = 1; quote marks: 2; ends: 3
TOPIC_STORY = "The cat ate a red apple under the big tree with mom"
# words = 12; animal: cat; food: ate apple; colors: red; nature: tree; family: mom; ends: 0


def by_name(name: str) -> S.Scorer:
    return S.SCORERS[S.DIMENSION_NAMES.index(name)]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (HAPPY_STORY, {"happy": 4 / 12, "sad": 0, "animal": 1 / 12, "brevity": 3 / 12}),
        (
            SAD_STORY,
            {"happy": 1 / 12, "sad": 3 / 12, "toys": 1 / 12, "dialogue": 2 / 12, "brevity": 3 / 12},
        ),
        (
            TOPIC_STORY,
            {
                "animal": 1 / 12,
                "food": 2 / 12,
                "colors": 1 / 12,
                "nature": 1 / 12,
                "family": 1 / 12,
                "dialogue": 0,
                "brevity": 0,
            },
        ),
    ],
)
def test_hand_counted_scores(text, expected):
    for name, value in expected.items():
        assert by_name(name)(text) == pytest.approx(value), name


def test_dialogue_counts_quote_marks_per_word():
    assert by_name("dialogue")('Mom said, "come here and eat') == pytest.approx(1 / 6)
    assert by_name("dialogue")('"Hi!" "Yes?"') == 1.0  # capped


def test_empty_and_wordless_texts_score_zero():
    assert (S.score_texts(["", " ... !"]) == 0).all()


def test_order_ranges_and_directions():
    assert S.DIMENSION_NAMES[:3] == ("happy", "sad", "nature")
    assert len(S.SCORERS) == 10
    for scorer in S.SCORERS:
        assert (scorer.low, scorer.high, scorer.higher_is_better) == (0.0, 1.0, True)
    scores = S.score_texts([HAPPY_STORY, SAD_STORY, TOPIC_STORY, "no. no! no?"])
    assert scores.shape == (4, 10) and (scores >= 0).all() and (scores <= 1).all()


def test_word_families_are_disjoint():
    families = [s.family for s in S.SCORERS if isinstance(s, S.WordShare)]
    for a, b in itertools.combinations(families, 2):
        assert not a & b, a & b


def test_get_scorers_bounds():
    assert [s.name for s in S.get_scorers(2)] == ["happy", "sad"]
    for bad in (1, 11):
        with pytest.raises(ValueError, match="2 to 10"):
            S.get_scorers(bad)


def test_score_texts_matches_scorers():
    texts = [HAPPY_STORY, SAD_STORY]
    expected = np.array([[s(t) for s in S.SCORERS[:3]] for t in texts])
    np.testing.assert_array_equal(S.score_texts(texts, S.SCORERS[:3]), expected)
