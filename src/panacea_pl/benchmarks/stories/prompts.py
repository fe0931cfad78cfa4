"""The story openings that every stories-benchmark sample continues.

    from panacea_pl.benchmarks.stories.prompts import STORY_PROMPTS
    STORY_PROMPTS[0]    # 'Once upon a time, there was a little girl named Lily.'

Sixteen TinyStories-style first sentences with different characters and settings, so that the
base model's continuations vary in mood, topic and dialogue. Each is encoded as BOS + prompt (the
tokenizer adds BOS) and the model writes the rest of the story. Changing this list changes the
benchmark: the cache key of every sample set includes it.
"""

from __future__ import annotations

STORY_PROMPTS: tuple[str, ...] = (
    "Once upon a time, there was a little girl named Lily.",
    "One day, a boy named Tom went to the park.",
    "Once upon a time, there was a big dog named Max.",
    "Sue and her mom went to the store.",
    "There was a little bird who lived in a tree.",
    "Once upon a time, in a small house, there lived a cat.",
    "Ben had a red ball.",
    "One sunny day, Tim and his friend went to the beach.",
    "Anna found a box in the garden.",
    "Once upon a time, there was a little fish.",
    "The old man had a farm with many animals.",
    "Mia wanted to bake a cake for her dad.",
    "It was a rainy day, and Sam could not go outside.",
    "A little bear woke up in the forest.",
    "Lucy lost her favorite toy.",
    "Once upon a time, there was a brave little car.",
)
