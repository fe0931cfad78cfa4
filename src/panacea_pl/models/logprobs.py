"""Log-probabilities of response tokens under a causal LM, from the pair/SFT batch format."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def token_logprobs(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """log p(input_ids[:, t] | input_ids[:, <t]) for t ≥ 1: shape [N, T − 1]."""
    return target_logprobs(logits[:, :-1], input_ids[:, 1:])


def target_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[..., targets] for logits [N, T, V] already aligned with their
    targets [N, T]. Uses cross-entropy per token, which never materialises the [N, T, V]
    log-softmax."""
    logits = logits.float()
    return -F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none"
    ).view_as(targets)


def sequence_logprobs(
    logits: torch.Tensor, input_ids: torch.Tensor, response_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of log-probs over the response tokens of each row, and the number of those tokens.

    Args:
        logits: [N, T, V] from the model.
        input_ids: [N, T].
        response_mask: [N, T] bool, True at response-token positions (never at t = 0).

    Returns:
        (logps [N], lengths [N]).
    """
    mask = response_mask[:, 1:].to(logits.dtype if logits.is_floating_point() else torch.float32)
    per_token = token_logprobs(logits, input_ids)
    return (per_token * mask).sum(-1), mask.sum(-1)
