"""omegaconf resolvers that the shipped YAMLs use; `panacea-pl` registers them before parsing.

    num_preferences: 2                                # m, stated once
    data:
      init_args:
        tokenizer: ${panacea.stories_model:}        # the converted stories260K folder
        num_dimensions: ${panacea.num_preferences:} # this file's top-level num_preferences
    # or with an explicit data_dir / cache_dir:  ${panacea.stories_model:/data,/cache}

Built-in resolvers such as `${oc.env:PANACEA_DATA_DIR,../shared/data}` need nothing from here.
To use the resolvers outside the CLI (e.g. `OmegaConf.load` in a notebook), call
`register_resolvers()` first.

jsonargparse reads a config file from inside that file's folder (it changes the working
directory while loading), so a resolver that touches the filesystem would see relative paths
relative to the config file. The resolvers here resolve them against the directory that was
current when `register_resolvers()` ran instead — the directory `panacea-pl` was started in,
which is what every other relative path of a config is relative to.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import omegaconf
from omegaconf import OmegaConf

STORIES_MODEL = "panacea.stories_model"
NUM_PREFERENCES = "panacea.num_preferences"

_launch_dir: str | None = None


def _from_launch_dir(path: str | Path) -> Path:
    return Path(_launch_dir or os.getcwd()) / Path(path).expanduser()


def stories_model_dir(data_dir: str | None = None, cache_dir: str | None = None) -> str:
    """The Hugging Face folder of stories260K, converted from the llama2.c checkpoint on first use.

    The folder name carries a hash of the checkpoint, so configs cannot spell it out; this is
    the folder `StoriesPolicy` loads, usable as any `tokenizer:` or `model_name_or_path:`.

    Args:
        data_dir: folder holding `tinyllamas-stories260k/` (default `$PANACEA_DATA_DIR`, else
            `../shared/data`; relative to the launch directory).
        cache_dir: where the converted model is kept (default `$PANACEA_CACHE_DIR/stories`, else
            `~/.cache/panacea_pl/stories`).
    """
    from panacea_pl.benchmarks.stories.benchmark import (
        StoriesBenchmark,
        default_cache_dir,
        default_data_dir,
    )

    data = _from_launch_dir(data_dir or default_data_dir())
    cache = _from_launch_dir(cache_dir or default_cache_dir())
    return str(StoriesBenchmark(data, cache, progress=False).model_dir)


def config_num_preferences(*, _root_: Any) -> int:
    """m for `${panacea.num_preferences:}`: the config's top-level `num_preferences`.

    Resolved when its config file is read (jsonargparse's omegaconf mode resolves each file on
    its own), against that file's top-level key: to change m, change that one number. A root
    with a single key (`{"fit": {...}}`, a config read under a subcommand) is looked into.
    """
    node = _root_
    if "num_preferences" not in node and len(node) == 1:  # {"fit": {...}}
        node = next(iter(node.values()))
    m = node.get("num_preferences")
    if m is None:
        raise ValueError(
            f"${{{NUM_PREFERENCES}:}} needs the config's top-level `num_preferences: m` (the "
            "number of preference dimensions, stated once for every component) in the same "
            "file: each config file is resolved on its own, so a file layered over a recipe "
            "(--config recipe.yaml --config mine.yaml) that uses it states `num_preferences` "
            "too, or writes the number"
        )
    return m


def register_resolvers() -> None:
    """Register `${panacea.stories_model:...}` (relative to the current directory) and
    `${panacea.num_preferences:}` with omegaconf."""
    global _launch_dir
    _launch_dir = os.getcwd()
    # omegaconf 2.4 renamed register_new_resolver to register_resolver (in 2.3 that name is the
    # legacy, string-only API)
    new_api = tuple(int(v) for v in omegaconf.__version__.split(".")[:2]) >= (2, 4)
    register = OmegaConf.register_resolver if new_api else OmegaConf.register_new_resolver
    for name, resolver in (
        (STORIES_MODEL, stories_model_dir),
        (NUM_PREFERENCES, config_num_preferences),
    ):
        if not OmegaConf.has_resolver(name):
            register(name, resolver)
