"""A small stories benchmark for tests that train on it through Lightning or the CLI.

8 prompts, 256 labelled pairs (192 train, 64 validation with `val_fraction=0.25`), 24-token
responses: built in about a second, then cached. Every test of a session shares one cache
folder (`cache_root`), so only the first builds it.

    monkeypatch.setenv("PANACEA_CACHE_DIR", str(cache_root(tmp_path_factory)))
    StoriesDataModule(2, batch_size=8, val_fraction=0.25, benchmark=SMALL)
    run_lightning_cli(["fit", "--config", STORIES_CONFIG, "--config", str(small_config(tmp))])
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
STORIES_CONFIG = REPO_ROOT / "experiments" / "stories" / "panacea_dpo.yaml"

SMALL = dict(
    num_prompts=8,
    reference_samples_per_prompt=32,
    pair_responses_per_prompt=16,
    pairs_per_prompt=32,
    max_new_tokens=24,
    batch_size=256,
    progress=False,
)


def cache_root(tmp_path_factory) -> Path:
    """The session's shared `$PANACEA_CACHE_DIR` (the benchmark keys its files by settings)."""
    return tmp_path_factory.getbasetemp() / "stories_small_cache"


def small_config(path: Path, max_steps: int = 3, batch_size: int = 8, sweep: bool = True) -> Path:
    """A config to layer over `STORIES_CONFIG`: the small benchmark, a few steps, and (with
    `sweep`) a 3-point Pareto sweep at the end, so `pareto/*` metrics are logged."""
    callbacks = []
    if sweep:
        evaluator = {
            "class_path": "panacea_pl.benchmarks.stories.StoriesEvaluator",
            "init_args": {"num_dimensions": 2, "samples_per_prompt": 2, "benchmark": SMALL},
        }
        callbacks.append(
            {
                "class_path": "panacea_pl.callbacks.ParetoSweep",
                "init_args": {"evaluator": evaluator, "divisions": 2, "every_n_epochs": 0},
            }
        )
    config = {
        "trainer": {
            "max_steps": max_steps,
            "log_every_n_steps": 1,
            "val_check_interval": max_steps,
            "limit_val_batches": 2,
            "num_sanity_val_steps": 0,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "callbacks": callbacks,
        },
        "data": {"init_args": {"batch_size": batch_size, "val_fraction": 0.25, "benchmark": SMALL}},
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@contextmanager
def prepared_for_forks(tmp_path_factory, shared_data: Path) -> Iterator[Path]:
    """Build the small benchmark (data, optimal front, converted model) in this process, with
    `PANACEA_CACHE_DIR` / `PANACEA_DATA_DIR` set for forked processes to read it; the two
    variables are restored afterwards."""
    from panacea_pl.benchmarks.stories import StoriesBenchmark, StoriesDataModule, StoriesPolicy

    cache = cache_root(tmp_path_factory)
    saved = {k: os.environ.get(k) for k in ("PANACEA_CACHE_DIR", "PANACEA_DATA_DIR")}
    os.environ.update(PANACEA_CACHE_DIR=str(cache), PANACEA_DATA_DIR=str(shared_data))
    try:
        StoriesDataModule(2, val_fraction=0.25, benchmark=SMALL).prepare_data()
        StoriesBenchmark(num_dimensions=2, **SMALL).optimal_front()
        StoriesPolicy()  # converts the model into the cache
        yield cache
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
