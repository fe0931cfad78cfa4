"""PPO rollouts: sample one response per prompt row in one batched `generate` call.

    rollout = sample_rollout(policy.model, input_ids, attention_mask, max_new_tokens=48,
                             stop_ids=[2], pad_token_id=0)   # under the λ rows set on the adapter
    rollout.action_mask          # [N, L − 1] True where token t + 1 is a response token
    rollout.position_ids         # [N, L] positions that skip the left padding, as `generate` uses
    rollout.prompt_ids(), rollout.response_ids()   # unpadded ids, for a reward function to read

Sampling is ancestral (temperature 1, no top-k / top-p) unless told otherwise, so the responses
are draws from the policy whose log-probabilities PPO computes; other decoding settings make
PPO off-policy. A response is the generated tokens up to and including the first stop token
(or `max_new_tokens` tokens), as in `panacea_pl.benchmarks.stories.sampling`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn


@dataclass
class Rollout:
    """Left-padded prompts followed by their sampled responses.

    Attributes:
        sequences: [N, L] prompt ids (left-padded to `prompt_length`), then the response ids,
            then padding.
        attention_mask: [N, L] 1 on prompt and response tokens.
        response_mask: [N, L] bool, True on response tokens (the stop token included).
        prompt_length: width of the padded prompt block.
        stop_ids: the tokens that ended a response.
    """

    sequences: Tensor
    attention_mask: Tensor
    response_mask: Tensor
    prompt_length: int
    stop_ids: list[int]

    def __len__(self) -> int:
        return self.sequences.shape[0]

    @property
    def position_ids(self) -> Tensor:
        """Positions counted from each row's first real token (what `generate` used)."""
        return (self.attention_mask.long().cumsum(-1) - 1).clamp(min=0)

    @property
    def first_action(self) -> int:
        """Index of the first action that can predict a response token (`prompt_length − 1`):
        the actions before it are prompt tokens for every row."""
        return max(self.prompt_length - 1, 0)

    @property
    def action_mask(self) -> Tensor:
        """[N, L − 1] True where the predicted token (position t + 1) is a response token."""
        return self.response_mask[:, 1:]

    @property
    def response_lengths(self) -> Tensor:
        """[N] response tokens per row (the stop token included)."""
        return self.response_mask.sum(-1)

    def rows(self, index: Tensor) -> Rollout:
        """The rollout of the rows `index`."""
        return Rollout(
            self.sequences[index],
            self.attention_mask[index],
            self.response_mask[index],
            self.prompt_length,
            self.stop_ids,
        )

    def prompt_ids(self) -> list[list[int]]:
        """Each row's prompt ids without padding."""
        prompts = self.sequences[:, : self.prompt_length].cpu()
        mask = self.attention_mask[:, : self.prompt_length].bool().cpu()
        return [row[keep].tolist() for row, keep in zip(prompts, mask, strict=True)]

    def response_ids(self, keep_stop: bool = False) -> list[list[int]]:
        """Each row's response ids (the stop token dropped unless `keep_stop`)."""
        responses = self.sequences[:, self.prompt_length :].cpu()
        mask = self.response_mask[:, self.prompt_length :].cpu()
        out = [row[keep].tolist() for row, keep in zip(responses, mask, strict=True)]
        if keep_stop:
            return out
        return [ids[:-1] if ids and ids[-1] in self.stop_ids else ids for ids in out]


@torch.no_grad()
def sample_rollout(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor,
    max_new_tokens: int,
    stop_ids: Sequence[int],
    pad_token_id: int,
    **generate_kwargs,
) -> Rollout:
    """Sample one response per row with whatever λ is set on the model's adapter.

    Args:
        model: a causal LM with `generate`.
        input_ids: [N, P] left-padded prompt ids.
        attention_mask: [N, P] 1 on prompt tokens.
        max_new_tokens: response budget.
        stop_ids: tokens that end a response.
        pad_token_id: written after a row's stop token.
        **generate_kwargs: override the ancestral sampling (makes PPO off-policy).
    """
    if not stop_ids:
        raise ValueError("sample_rollout needs at least one stop token id")
    settings = {"do_sample": True, "temperature": 1.0, "top_k": 0, "top_p": 1.0}
    sequences = model.generate(
        input_ids=input_ids,
        attention_mask=attention_mask,
        max_new_tokens=max_new_tokens,
        eos_token_id=list(stop_ids),
        pad_token_id=pad_token_id,
        **(settings | generate_kwargs),
    )
    prompt_length = input_ids.shape[1]
    generated = sequences[:, prompt_length:]
    is_stop = torch.isin(generated, torch.as_tensor(list(stop_ids), device=generated.device))
    steps = torch.arange(generated.shape[1], device=generated.device)
    # length = position of the first stop token + 1, or every generated token if none
    first_stop = torch.where(is_stop.any(1), is_stop.int().argmax(1) + 1, generated.shape[1])
    in_response = steps[None, :] < first_stop[:, None]
    response_mask = torch.cat([torch.zeros_like(attention_mask, dtype=torch.bool), in_response], 1)
    return Rollout(
        sequences=sequences,
        attention_mask=torch.cat([attention_mask.long(), in_response.long()], 1),
        response_mask=response_mask,
        prompt_length=prompt_length,
        stop_ids=list(stop_ids),
    )
