"""The stories benchmark as Lightning parts, so YAML and the CLI can use it by name.

    policy:  class_path: panacea_pl.benchmarks.stories.StoriesPolicy      (the converted model)
    data:    class_path: panacea_pl.benchmarks.stories.StoriesDataModule  (its labelled pairs)
    data:    class_path: panacea_pl.benchmarks.stories.StoriesPromptDataModule  (PPO's prompts)
    sweep:   panacea_pl.benchmarks.stories.StoriesEvaluator               (f(λ) vs the optimum)

All three find the checkpoint in `data_dir` (default `$PANACEA_DATA_DIR` or `../shared/data`)
and keep what they build in `cache_dir` (default `~/.cache/panacea_pl/stories`).
"""

from __future__ import annotations

import json

import lightning.pytorch as pl
import numpy as np
import torch

from panacea_pl.atomic import atomic_write
from panacea_pl.benchmarks.stories.benchmark import StoriesBenchmark
from panacea_pl.data import (
    ConfigError,
    DimensionSpec,
    PreferenceDataModule,
    PromptDataModule,
    SourceSpec,
    TokenizationSpec,
)
from panacea_pl.evaluation.result import FrontResult
from panacea_pl.hashing import settings_key
from panacea_pl.layers import PanaceaConfig
from panacea_pl.models import PanaceaPolicy
from panacea_pl.pareto.front import rank_correlations


class StoriesPolicy(PanaceaPolicy):
    """stories260K (converted to a Hugging Face folder on first use) with the Panacea adapter.

    Args:
        adapter: the adapter; `num_preferences` must match the data's dimensions.
        data_dir: where `tinyllamas-stories260k/` is.
        cache_dir: where the converted model is kept.
        adapter_path: a saved adapter to load instead of a new one.
    """

    def __init__(
        self,
        adapter: PanaceaConfig | None = None,
        data_dir: str | None = None,
        cache_dir: str | None = None,
        adapter_path: str | None = None,
    ):
        bench = StoriesBenchmark(data_dir, cache_dir, progress=False)
        super().__init__(str(bench.model_dir), adapter=adapter, adapter_path=adapter_path)


class StoriesDataModule(PreferenceDataModule):
    """The benchmark's Bradley–Terry-labelled pairs (built and cached on first use).

    Args:
        num_dimensions: m, 2 to 10 (the first m scorers).
        data_dir: where `tinyllamas-stories260k/` is.
        cache_dir: where samples, pairs and the optimum are kept.
        batch_size: pairs per batch.
        val_fraction: share of prompts held out.
        seed: split and shuffling seed.
        benchmark: further `StoriesBenchmark` arguments (label_temperature, pairs_per_prompt, …).
    """

    def __init__(
        self,
        num_dimensions: int = 2,
        data_dir: str | None = None,
        cache_dir: str | None = None,
        batch_size: int = 16,
        val_fraction: float = 0.1,
        seed: int = 0,
        benchmark: dict | None = None,
    ):
        bench = StoriesBenchmark(data_dir, cache_dir, num_dimensions, **(benchmark or {}))
        self.benchmark = bench
        super().__init__(
            tokenizer=str(bench.model_dir),
            sources=[SourceSpec(name="stories", schema="generic", path=str(bench.pairs_path))],
            dimensions=[
                DimensionSpec(name=n, source="stories", field=n) for n in bench.dimension_names
            ],
            tokenization=TokenizationSpec(
                prompt_template="{prompt}",
                response_template="{response}",
                add_eos=False,
                max_prompt_length=None,
                max_response_length=None,
            ),
            batch_size=batch_size,
            val_fraction=val_fraction,
            seed=seed,
            cache_dir=str(bench.cache_dir / "tokenized"),
        )


class StoriesPromptDataModule(PromptDataModule):
    """The benchmark's story openings as PPO prompts (BOS + prompt, left-padded), one row each.

    The prompts are written once to `prompts-<key>.jsonl` in the cache (`prompts` schema); an
    epoch is one pass over them, so with `batch_size` = `num_prompts` every training step rolls
    out every prompt (`PanaceaPPO.samples_per_prompt` times each).

    Args:
        num_dimensions: m, 2 to 10 (exposed as `dimension_names`).
        data_dir: where `tinyllamas-stories260k/` is.
        cache_dir: where the converted model and the prompt file are kept.
        num_prompts: how many of `STORY_PROMPTS` (1 to 16).
        batch_size: prompts per batch.
        val_fraction: share of prompts held out (validation rolls out at the simplex centre).
        seed: split and shuffling seed.
    """

    def __init__(
        self,
        num_dimensions: int = 2,
        data_dir: str | None = None,
        cache_dir: str | None = None,
        num_prompts: int = 16,
        batch_size: int = 16,
        val_fraction: float = 0.0,
        seed: int = 0,
    ):
        if batch_size > num_prompts:  # the loader would quietly give batches of num_prompts
            raise ConfigError(
                f"StoriesPromptDataModule: batch_size = {batch_size} prompts, but the benchmark "
                f"has num_prompts = {num_prompts}; expected batch_size <= num_prompts (for more "
                "stories per step, raise the module's group_size or samples_per_prompt)"
            )
        bench = StoriesBenchmark(
            data_dir, cache_dir, num_dimensions, num_prompts=num_prompts, progress=False
        )
        self.benchmark = bench
        prompts = list(bench.prompts)
        path = bench.cache_dir / f"prompts-{settings_key({'prompts': prompts})}.jsonl"
        if not path.is_file():
            lines = "".join(json.dumps({"prompt": p}) + "\n" for p in prompts)
            atomic_write(path, lambda tmp: tmp.write_text(lines), keep_suffix=True)
        super().__init__(
            tokenizer=str(bench.model_dir),
            sources=[SourceSpec(name="stories", schema="prompts", path=str(path))],
            dimension_names=list(bench.dimension_names),
            tokenization=TokenizationSpec(prompt_template="{prompt}", max_prompt_length=None),
            batch_size=batch_size,
            val_fraction=val_fraction,
            seed=seed,
            cache_dir=str(bench.cache_dir / "tokenized"),
        )


class StoriesEvaluator:
    """Evaluator (a): sample stories for every λ of the grid (per-sample λ, batched) and score
    them with the ground-truth scorers; report G (the fraction of the achievable gain), regret and
    hypervolume ratio to the optimum. Common random numbers: every λ and the base model see the
    same prompts and sampling noise. Sharded over the ranks of a process group (`distributed`).
    Every sweep also reports the base model's `base_hypervolume_ratio` and `base_mean_regret`
    on its draws, so a sweep before training (`ParetoSweep(sweep_on_fit_start=True)`) is not
    needed to compare with the starting point.

    Args:
        num_dimensions, data_dir, cache_dir, benchmark: as in `StoriesDataModule` (same values,
            so the optimum is the one the pairs were labelled for).
        samples_per_prompt: responses per prompt and λ.
        seed: sampling seed (the same seed every sweep, so fronts are comparable).
        shard: under DDP, every rank samples its share of the rows (`ParetoSweep` then calls
            `evaluate` on every rank); False: rank zero samples all of them.
    """

    def __init__(
        self,
        num_dimensions: int = 2,
        data_dir: str | None = None,
        cache_dir: str | None = None,
        benchmark: dict | None = None,
        samples_per_prompt: int = 4,
        seed: int = 0,
        shard: bool = True,
    ):
        self.bench = StoriesBenchmark(data_dir, cache_dir, num_dimensions, **(benchmark or {}))
        self.samples_per_prompt = samples_per_prompt
        self.seed = seed
        self.distributed = shard  # ParetoSweep: every rank calls `evaluate`
        self.last_evaluation = None

    def evaluate(self, module: pl.LightningModule, preferences: torch.Tensor) -> FrontResult:
        policy = module.policy  # a PreferencePolicy: Panacea's, or a baseline's collection
        with policy.preference(preferences[0]):  # restores Panacea's λ afterwards
            ev = self.bench.evaluate(
                policy.model,
                preferences=preferences,
                set_preference=policy.set_preference,
                reference=policy.reference,
                per_sample=policy.accepts_row_preferences,
                samples_per_prompt=self.samples_per_prompt,
                seed=self.seed,
                shard=self.distributed,
            )
        self.last_evaluation = ev
        optimum = self.bench.optimal_front(preferences)
        scorers = self.bench.scorers
        rho = rank_correlations(ev.preferences, ev.objectives)
        return FrontResult(
            preferences=ev.preferences,
            objectives=ev.objectives,
            objective_names=list(ev.dimension_names),
            maximize=[True] * len(scorers),
            reference_point=ev.reference_point,
            lower=np.array([s.low for s in scorers], dtype=float),
            upper=np.array([s.high for s in scorers], dtype=float),
            columns={"gain": ev.gain, "gain_se": ev.gain_se}
            | {"kl": ev.kl, "regret": ev.regret, "regret_se": ev.regret_se}
            | {f"{n}_se": ev.objectives_se[:, i] for i, n in enumerate(ev.dimension_names)},
            summary={
                "mean_gain": ev.mean_gain,
                "mean_gain_se": ev.mean_gain_se,
                "hypervolume_ratio": ev.hypervolume_ratio,
                "mean_regret": ev.mean_regret,
                "mean_kl": float(ev.kl.mean()),
            }
            | _base_summary(ev)
            | {
                f"rank_correlation/{n}": float(r)
                for n, r in zip(ev.dimension_names, rho, strict=True)
            },
            optimum=optimum.objectives,
            base=ev.base_objectives,
        )


def _base_summary(ev) -> dict[str, float]:
    """The base model's hypervolume ratio and mean regret on the sweep's own draws (it ignores λ,
    so this is what a sweep before training reports, without sampling it again)."""
    if not np.isfinite(ev.base_objectives).all():
        return {}
    return {
        "base_hypervolume_ratio": ev.base_hypervolume_ratio,
        "base_mean_regret": float(ev.base_regret.mean()),
    }
