"""The base model's responses to the story prompts, scored by every scorer, saved to disk.

    samples = draw_samples(model, tokenizer, STORY_PROMPTS, pair_responses=64, reference=512,
                           max_new_tokens=48, batch_size=512, seed=0)
    samples.reference_rewards(2)   # [P, 512, 2] rewards of the optimum's samples, by prompt
    samples.save(path); StorySamples.load(path)

Rows are grouped by prompt: for each prompt, `pair_responses` responses for the pairs, then
`reference` responses for the optimum (disjoint draws, so the optimum is not estimated on the
training responses). All ten scores are kept, so one sample set serves every m.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from panacea_pl.atomic import atomic_write
from panacea_pl.benchmarks.stories.sampling import sample_batch, torch_threads
from panacea_pl.benchmarks.stories.scorers import SCORERS, score_texts

log = logging.getLogger(__name__)


@dataclass
class StorySamples:
    """Responses sampled from the base model, with all ten scores.

    Attributes:
        prompt_index: [N] index into the prompts.
        for_pairs: [N] True for the responses used in pairs, False for the optimum's samples.
        texts: [N] response texts.
        response_ids: [N, T] token ids, -1 after the end of the response.
        rewards: [N, 10] scores by `SCORERS`, in order.
    """

    prompt_index: np.ndarray
    for_pairs: np.ndarray
    texts: np.ndarray
    response_ids: np.ndarray
    rewards: np.ndarray

    def reference_rewards(self, num_dimensions: int) -> np.ndarray:
        """Rewards [P, n, m] of the optimum's samples, grouped by prompt."""
        keep = ~self.for_pairs
        order = np.argsort(self.prompt_index[keep], kind="stable")
        num_prompts = len(np.unique(self.prompt_index))
        return self.rewards[keep][order, :num_dimensions].reshape(num_prompts, -1, num_dimensions)

    def save(self, path: Path) -> Path:
        return atomic_write(path, lambda tmp: np.savez(tmp, **asdict(self)), keep_suffix=True)

    @classmethod
    def load(cls, path: Path) -> StorySamples:
        with np.load(path) as data:
            return cls(**{k: data[k] for k in data.files})


def draw_samples(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    pair_responses: int,
    reference: int,
    max_new_tokens: int,
    batch_size: int,
    seed: int,
    num_threads: int | None = 1,
    progress: bool = True,
) -> StorySamples:
    """Sample `pair_responses + reference` responses per prompt from `model` and score them."""
    per_prompt = pair_responses + reference
    prompt_index = np.repeat(np.arange(len(prompts)), per_prompt)
    texts: list[str] = []
    ids: list[list[int]] = []
    start = time.perf_counter()
    with (
        torch.random.fork_rng(devices=[]),
        torch_threads(num_threads),
        tqdm(total=len(prompt_index), desc="sampling stories", disable=not progress) as bar,
    ):
        torch.manual_seed(seed)
        for lo in range(0, len(prompt_index), batch_size):
            rows = prompt_index[lo : lo + batch_size]
            batch = sample_batch(model, tokenizer, [prompts[i] for i in rows], max_new_tokens)
            texts += batch.texts
            ids += batch.response_ids
            bar.update(len(rows))
    log.info("sampled %d stories in %.1f s", len(texts), time.perf_counter() - start)
    padded = np.full((len(ids), max_new_tokens), -1, dtype=np.int32)
    for row, seq in zip(padded, ids, strict=True):
        row[: len(seq)] = seq
    return StorySamples(
        prompt_index=prompt_index,
        for_pairs=np.tile(np.arange(per_prompt) < pair_responses, len(prompts)),
        texts=np.array(texts, dtype=str),
        response_ids=padded,
        rewards=score_texts(texts, SCORERS),
    )
