"""Generation helpers shared by training and evaluation: which tokens end a response, and how
token ids become the texts a scorer reads.

    stops = stop_ids(policy, tokenizer)            # generation config's EOS ids + the tokenizer's
    out = decode_rows(tokenizer, prompt_ids, response_ids)
    out.texts[0]       # decoded prompt + response (leading BOS dropped, special tokens kept)
    out.responses[0]   # the response alone, cut from the decoded prompt + response

They live beside the policy (not in `panacea_pl.evaluation`) so that trainers which sample
(`panacea_pl.models.experience`) and evaluators decode alike without importing each other.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from panacea_pl.models.policy import PreferencePolicy


@dataclass
class Generations:
    """Decoded rows.

    Attributes:
        prompts: [N] decoded prompt of each row (leading BOS dropped).
        responses: [N] decoded response of each row (stop token excluded).
        lengths: [N] response length in tokens.
    """

    prompts: list[str]
    responses: list[str]
    lengths: np.ndarray

    @property
    def texts(self) -> list[str]:
        """Prompt + response of each row: what a reward model scores."""
        return [p + r for p, r in zip(self.prompts, self.responses, strict=True)]


def stop_ids(policy: PreferencePolicy, tokenizer) -> list[int]:
    """The tokens that end a response: the generation config's EOS ids and the tokenizer's."""
    eos = policy.model.generation_config.eos_token_id
    ids = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return ids


def decode_rows(
    tokenizer, prompt_ids: Sequence[Sequence[int]], responses: Sequence[Sequence[int]]
) -> Generations:
    """Decode prompts and responses (stop tokens already removed) with special tokens kept.

    The prompt's leading BOS is dropped, and the response text is cut from the decoded
    prompt + response so that it keeps the space joining it to the prompt (a tokenizer may
    decode a lone response without it); if the cut fails the response is decoded alone.
    """
    bos = tokenizer.bos_token_id
    prompts = [
        list(p[1:]) if p and bos is not None and p[0] == bos else list(p) for p in prompt_ids
    ]
    responses = [list(r) for r in responses]
    heads = tokenizer.batch_decode(prompts)
    fulls = tokenizer.batch_decode([p + r for p, r in zip(prompts, responses, strict=True)])
    bodies = tokenizer.batch_decode(responses)
    texts = [
        full[len(head) :] if full.startswith(head) else body
        for head, full, body in zip(heads, fulls, bodies, strict=True)
    ]
    return Generations(heads, texts, np.array([len(r) for r in responses]))
