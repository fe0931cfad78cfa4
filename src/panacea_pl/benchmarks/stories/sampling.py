"""Sample story continuations in one batched `generate` call, and score their log-probabilities.

    batch = sample_batch(model, tokenizer, ["Ben had a red ball."] * 8, max_new_tokens=48)
    batch.texts[0]                          # ' He liked to play with it every day. …'
    logp = response_logprobs(model, batch)  # [8] summed log π(response | prompt)

Sampling is ancestral (temperature 1, no top-k / top-p), so the samples follow the model's own
distribution: the reference samples of the optimum and the policy samples of an evaluation are
draws from π_ref and π_λ. A response is the generated tokens up to and including the first stop
token (the generation config's `eos_token_id`; BOS and `</s>` for the converted llama2.c model,
which ends a story with BOS), or `max_new_tokens` tokens. Its text is cut from the decoded
prompt + response, so it keeps the space that separates it from the prompt.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from transformers import LogitsProcessorList, PreTrainedModel, PreTrainedTokenizerBase

from panacea_pl.evaluation.crn import GumbelSampler
from panacea_pl.models.logprobs import sequence_logprobs


@contextmanager
def torch_threads(num_threads: int | None) -> Iterator[None]:
    """Run the block with `num_threads` intra-op threads (None: leave as is), then restore.

    A 260K-parameter model's matmuls are too small to share: one thread samples fastest, and on a
    busy 2-core machine two threads can be 30× slower than one (they wait on each other).
    """
    previous = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@dataclass
class SampledBatch:
    """One batch of prompts with their sampled responses.

    Attributes:
        sequences: [B, L] left-padded prompt ids followed by the response ids (then padding).
        attention_mask: [B, L] 1 on prompt and response tokens.
        response_mask: [B, L] True on response tokens (stop token included).
        response_ids: the response ids of each row (stop token included).
        texts: the response texts (stop token excluded).
    """

    sequences: torch.Tensor
    attention_mask: torch.Tensor
    response_mask: torch.Tensor
    response_ids: list[list[int]]
    texts: list[str]


def stop_token_ids(model: PreTrainedModel) -> list[int]:
    """The ids that end a response: the generation config's `eos_token_id` as a list."""
    eos = model.generation_config.eos_token_id
    if eos is None:
        raise ValueError("the model's generation config has no eos_token_id to stop a story")
    return [eos] if isinstance(eos, int) else list(eos)


@torch.no_grad()  # not inference_mode: FSDP2 reuses the all-gathered buffers in training
def sample_batch(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    max_new_tokens: int,
    noise_keys: torch.Tensor | None = None,
) -> SampledBatch:
    """Sample one continuation of each prompt (BOS + prompt) with temperature 1.

    The model samples with whatever preference is currently set on it; seed with
    `torch.manual_seed` beforehand for reproducible samples. With `noise_keys` ([B] int64, see
    `panacea_pl.evaluation.crn`) each row's sample is a function of its key instead of the global
    generator's state (common random numbers).
    """
    encoded = tokenizer(list(prompts), return_tensors="pt", padding=True, padding_side="left")
    stops = stop_token_ids(model)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0]
    if noise_keys is None:
        decoding = dict(do_sample=True, temperature=1.0, top_k=0, top_p=1.0)
    else:
        sampler = GumbelSampler(noise_keys, encoded.input_ids.shape[1])
        decoding = dict(do_sample=False, logits_processor=LogitsProcessorList([sampler]))
    sequences = model.generate(
        input_ids=encoded.input_ids.to(model.device),
        attention_mask=encoded.attention_mask.to(model.device),
        max_new_tokens=max_new_tokens,
        eos_token_id=stops,
        pad_token_id=pad_id,
        **decoding,
    ).cpu()
    prompt_len = encoded.input_ids.shape[1]
    generated = sequences[:, prompt_len:]
    is_stop = torch.isin(generated, torch.tensor(stops))
    # Length = position of the first stop token + 1, or every generated token if none.
    first_stop = torch.where(is_stop.any(1), is_stop.int().argmax(1) + 1, generated.shape[1])
    in_response = torch.arange(generated.shape[1])[None, :] < first_stop[:, None]
    response_mask = torch.cat(
        [torch.zeros_like(encoded.attention_mask, dtype=torch.bool), in_response], 1
    )
    attention_mask = torch.cat([encoded.attention_mask, in_response.long()], 1)
    response_ids = [row[:n].tolist() for row, n in zip(generated, first_stop.tolist(), strict=True)]
    return SampledBatch(
        sequences=sequences,
        attention_mask=attention_mask,
        response_mask=response_mask,
        response_ids=response_ids,
        texts=response_texts(
            tokenizer, encoded.input_ids, encoded.attention_mask, response_ids, stops
        ),
    )


def response_texts(
    tokenizer: PreTrainedTokenizerBase,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    response_ids: Sequence[Sequence[int]],
    stops: Sequence[int],
) -> list[str]:
    """Decode prompt + response and cut off the decoded prompt (keeps the joining space)."""
    prompts = [ids[mask.bool()].tolist() for ids, mask in zip(prompt_ids, prompt_mask, strict=True)]
    responses = [[t for t in ids if t not in stops] for ids in response_ids]
    heads = tokenizer.batch_decode(prompts, skip_special_tokens=True)
    fulls = tokenizer.batch_decode(
        [p + r for p, r in zip(prompts, responses, strict=True)], skip_special_tokens=True
    )
    return [full[len(head) :] for head, full in zip(heads, fulls, strict=True)]


@torch.no_grad()  # not inference_mode: FSDP2 reuses the all-gathered buffers in training
def response_logprobs(model: PreTrainedModel, batch: SampledBatch) -> torch.Tensor:
    """Σ_t log p(y_t | prompt, y_<t) over each row's response tokens, [B] float32 on CPU.

    Runs `model` as it is now: with the preference (or adapter state) that was set for the
    sampling, or inside `adapter.disabled()` for the reference.
    """
    device = model.device
    mask = batch.attention_mask.to(device)
    logits = model(
        input_ids=batch.sequences.to(device),
        attention_mask=mask,
        position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
        use_cache=False,
    ).logits
    logps, _ = sequence_logprobs(logits, batch.sequences.to(device), batch.response_mask.to(device))
    return logps.float().cpu()
