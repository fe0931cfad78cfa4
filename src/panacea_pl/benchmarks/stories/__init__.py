"""The stories benchmark: Pareto alignment of stories260K with a known optimal front.

    from panacea_pl.benchmarks.stories import StoriesBenchmark
    bench = StoriesBenchmark(num_dimensions=2).build()
    result = bench.evaluate(model, adapter=adapter)   # regret and hypervolume ratio per λ

Modules: `scorers` (the objectives), `prompts`, `sampling` (batched generation and log-probs),
`samples` (the base model's scored responses), `pairs` (Bradley–Terry labels, `generic` schema),
`optimum` (the tilted optimum by importance sampling), `evaluate` (a policy against the optimum),
`cache` (keys, atomic writes), `benchmark` (the entry point), `reward` (the scorers as a PPO
reward function), `lightning` (policy, data, evaluator for YAML).
"""

from panacea_pl.benchmarks.stories.benchmark import StoriesBenchmark, locate_checkpoint
from panacea_pl.benchmarks.stories.evaluate import Evaluation, evaluate_policy
from panacea_pl.benchmarks.stories.lightning import (
    StoriesDataModule,
    StoriesEvaluator,
    StoriesPolicy,
    StoriesPromptDataModule,
)
from panacea_pl.benchmarks.stories.optimum import TiltedFront, tilted_front
from panacea_pl.benchmarks.stories.prompts import STORY_PROMPTS
from panacea_pl.benchmarks.stories.reward import StoriesReward
from panacea_pl.benchmarks.stories.samples import StorySamples, draw_samples
from panacea_pl.benchmarks.stories.scorers import DIMENSION_NAMES, SCORERS, Scorer, get_scorers

__all__ = [
    "DIMENSION_NAMES",
    "SCORERS",
    "STORY_PROMPTS",
    "Evaluation",
    "Scorer",
    "StoriesBenchmark",
    "StoriesDataModule",
    "StoriesEvaluator",
    "StoriesPolicy",
    "StoriesPromptDataModule",
    "StoriesReward",
    "StorySamples",
    "TiltedFront",
    "draw_samples",
    "evaluate_policy",
    "get_scorers",
    "locate_checkpoint",
    "tilted_front",
]
