"""Ground-truth scorers of a generated story: the benchmark's m = 2 … 10 objectives.

    from panacea_pl.benchmarks.stories.scorers import SCORERS, score_texts
    [s.name for s in SCORERS[:3]]                   # ['happy', 'sad', 'nature']
    SCORERS[0]("She was happy and loved the sun.")  # 2 happy words / 7 words = 0.2857…
    score_texts(["The dog ate a cake."], SCORERS[:4])  # array [1, 4]

Every scorer maps the text of a response (the continuation, not the prompt) to a number in
[0, 1], higher is better. Words are the lower-cased runs of letters with an optional `'` suffix
(`didn't`, `lily's`); a text with no word scores 0 everywhere.

| # | name     | score                                                        | range  |
|---|----------|--------------------------------------------------------------|--------|
| 1 | happy    | share of words in HAPPY (joy, love, fun, kindness)           | [0, 1] |
| 2 | sad      | share of words in SAD (sadness, fear, anger, negation)       | [0, 1] |
| 3 | nature   | share of words in NATURE (trees, sky, water, weather)        | [0, 1] |
| 4 | animal   | share of words in ANIMAL                                     | [0, 1] |
| 5 | food     | share of words in FOOD (food, eating, dishes)                | [0, 1] |
| 6 | toys     | share of words in TOYS (toys, play, games)                   | [0, 1] |
| 7 | family   | share of words in FAMILY (parents, siblings, friends)        | [0, 1] |
| 8 | colors   | share of words in COLORS                                     | [0, 1] |
| 9 | dialogue | double-quote marks per word (two per speech), capped at 1    | [0, 1] |
| 10| brevity  | sentence ends (runs of . ! ?) per word, capped at 1          | [0, 1] |

The order makes a prefix of any length a sensible benchmark: m = 2 is the clearly conflicting
pair happy vs sad (a word spent on one family is not spent on the other, and stories lean one
way); m = 3 adds nature, negatively correlated with both over the base model's stories. The word
families are disjoint. Further dimensions are mostly weakly conflicting, but not all pairs are
(happy and toys share "loved to play" stories; dialogue and family go together).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

WORD = re.compile(r"[a-z]+(?:'[a-z]+)?")
SENTENCE_END = re.compile(r"[.!?]+")


def _family(words: str) -> frozenset[str]:
    return frozenset(words.split())


HAPPY = _family(
    "happy happily happier glad joy joyful fun funny love loved loves lovely smile smiled smiles "
    "smiling laugh laughed laughing laughs excited cheer cheered cheerful yay great nice good "
    "kind proud hug hugged hugs liked likes enjoy enjoyed best wonderful beautiful friendly "
    "amazing awesome thankful grateful thank cute pretty fantastic"
)
SAD = _family(
    "sad sadly unhappy cry cried cries crying tears scared scary afraid fear frightened angry "
    "mad upset hurt lost broken broke bad worried worry sorry alone lonely sick mean frown "
    "frowned hate terrible awful not no never didn't couldn't can't don't won't wasn't nobody "
    "nothing"
)
NATURE = _family(
    "tree trees sun sunny sky flower flowers garden park forest grass rain rainy river lake sea "
    "ocean beach sand hill woods leaves leaf rock rocks water wind cloud clouds snow pond moon "
    "stars star mountain"
)
ANIMAL = _family(
    "dog dogs puppy cat cats kitten kitty bird birds fish bear bunny rabbit duck frog fox lion "
    "monkey elephant squirrel mouse cow horse pig animal animals bug bugs butterfly owl turtle "
    "snake sheep chicken tiger bee ant deer pony wolf whale"
)
FOOD = _family(
    "food eat ate eating eats cake cakes cookie cookies apple apples bread candy snack snacks "
    "dinner lunch breakfast yummy delicious hungry soup pie carrot carrots cream milk juice "
    "sandwich pizza fruit banana treat treats cheese honey tea sugar bake baked"
)
TOYS = _family(
    "toy toys ball balls doll dolls game games play played playing plays blocks car cars truck "
    "trucks train kite teddy swing swings slide puzzle robot"
)
FAMILY = _family(
    "mom mommy dad daddy mother father mama papa sister brother grandma grandpa family baby "
    "parents friend friends"
)
COLORS = _family(
    "red blue green yellow pink purple orange white black brown colorful color colors rainbow "
    "gold golden gray grey"
)


def words(text: str) -> list[str]:
    """The lower-cased words of `text` (letters with an optional `'` suffix)."""
    return WORD.findall(text.lower())


@dataclass(frozen=True)
class Scorer:
    """One objective of the benchmark: a text → score in [low, high], higher is better.

    Attributes:
        name: the dimension name (also the label column of the pair files).
        description: what the score measures.
        low, high: the documented range of the score.
    """

    name: str
    description: str
    low: float = 0.0
    high: float = 1.0
    higher_is_better: bool = True

    def __call__(self, text: str) -> float:
        raise NotImplementedError


@dataclass(frozen=True)
class WordShare(Scorer):
    """Share of the words of a text that belong to a word family."""

    family: frozenset[str] = frozenset()

    def __call__(self, text: str) -> float:
        tokens = words(text)
        return sum(t in self.family for t in tokens) / len(tokens) if tokens else 0.0


@dataclass(frozen=True)
class Dialogue(Scorer):
    """Double-quote marks per word, capped at 1: two per quoted speech, so more speech scores higher.

    (Counting quote marks rather than quoted words keeps the spread of this score close to that of
    the word shares; the share of quoted words varies four times more and would dominate any λ.)
    """

    def __call__(self, text: str) -> float:
        total = len(words(text))
        return min(1.0, text.count('"') / total) if total else 0.0


@dataclass(frozen=True)
class Brevity(Scorer):
    """Sentence ends per word (1 / mean sentence length), capped at 1."""

    def __call__(self, text: str) -> float:
        total = len(words(text))
        return min(1.0, len(SENTENCE_END.findall(text)) / total) if total else 0.0


SCORERS: tuple[Scorer, ...] = (
    WordShare("happy", "share of happy words (joy, love, fun, kindness)", family=HAPPY),
    WordShare("sad", "share of sad words (sadness, fear, anger, negation)", family=SAD),
    WordShare("nature", "share of nature words (trees, sky, water, weather)", family=NATURE),
    WordShare("animal", "share of animal words", family=ANIMAL),
    WordShare("food", "share of food words (food, eating, dishes)", family=FOOD),
    WordShare("toys", "share of toy and play words", family=TOYS),
    WordShare("family", "share of family and friends words", family=FAMILY),
    WordShare("colors", "share of color words", family=COLORS),
    Dialogue("dialogue", "double-quote marks per word (more speech scores higher)"),
    Brevity("brevity", "sentence ends per word (short sentences score high)"),
)
DIMENSION_NAMES: tuple[str, ...] = tuple(s.name for s in SCORERS)


def get_scorers(num_dimensions: int) -> tuple[Scorer, ...]:
    """The first `num_dimensions` scorers (2 ≤ m ≤ 10)."""
    if not 2 <= num_dimensions <= len(SCORERS):
        raise ValueError(
            f"the stories benchmark has 2 to {len(SCORERS)} dimensions, got {num_dimensions}"
        )
    return SCORERS[:num_dimensions]


def score_texts(texts: Sequence[str], scorers: Sequence[Scorer] = SCORERS) -> np.ndarray:
    """Scores [len(texts), len(scorers)] as float64."""
    return np.array([[s(t) for s in scorers] for t in texts], dtype=np.float64).reshape(
        len(texts), len(scorers)
    )
