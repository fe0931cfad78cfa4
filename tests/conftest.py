"""Shared fixtures: tiny models on disk, the shared data folder, offline environment."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

import tiny  # noqa: E402

#: The environment as the session starts: what the session's CLI server inherits, whichever
#: module's patched variables are in force when a test first asks for it.
SESSION_ENV = dict(os.environ)

# The test models are tiny: one thread is faster than two, and immune to a busy second core.
torch.set_num_threads(1)

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real data samples that live beside the checkout (`../shared/data`)."""
    path = Path(os.environ.get("PANACEA_DATA_DIR", REPO_ROOT.parent / "shared" / "data"))
    if not path.is_dir():
        pytest.fail(f"shared data folder not found at {path}; set PANACEA_DATA_DIR")
    return path


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory) -> Path:
    return tiny.build_tokenizer(tmp_path_factory.mktemp("tokenizer"))


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory, tiny_tokenizer_dir) -> Path:
    return tiny.build_llama(tmp_path_factory.mktemp("llama"), tiny_tokenizer_dir)


@pytest.fixture(scope="session")
def tiny_gpt2_dir(tmp_path_factory, tiny_tokenizer_dir) -> Path:
    return tiny.build_gpt2(tmp_path_factory.mktemp("gpt2"), tiny_tokenizer_dir)


@pytest.fixture(params=["llama", "gpt2"])
def tiny_model_dir(request, tiny_llama_dir, tiny_gpt2_dir) -> Path:
    """Each test that takes this runs once on Llama (nn.Linear) and once on GPT-2 (Conv1D)."""
    return {"llama": tiny_llama_dir, "gpt2": tiny_gpt2_dir}[request.param]


@pytest.fixture(scope="session")
def panacea_cli():
    """One `CLIServer` per test process: each `panacea-pl` command forked from an interpreter
    that imported what the console script imports once (`cli_server`), not a new interpreter
    paying seconds of imports. `panacea_cli.run(args, cwd=…, env=…)` -> (exit status, output)."""
    from cli_server import CLIServer

    with CLIServer(base_env=SESSION_ENV) as server:
        yield server


@pytest.fixture(scope="module")
def forked_stories_env(tmp_path_factory, shared_data) -> Iterator[Path]:
    """The small stories benchmark built once here, so that forked processes only read it."""
    import stories_small

    with stories_small.prepared_for_forks(tmp_path_factory, shared_data) as cache:
        yield cache


#: The longest tests (over 20 s on 2 cores), started first under pytest-xdist.
LONGEST = ("tests/test_modules_ppo.py::test_short_stories_run_moves_the_front_toward_the_optimum",)


def pytest_collection_modifyitems(config, items):
    """Under pytest-xdist, hand out the longest tests first, then the other slow ones: a long
    test picked up last would leave the other worker idle while it runs. A run without workers
    keeps the file order, so module fixtures are built once."""
    if not hasattr(config, "workerinput"):
        return
    items.sort(
        key=lambda item: (item.nodeid not in LONGEST, item.get_closest_marker("slow") is None)
    )
