"""Score a policy's front against the known optimum: objectives, KL, regret and hypervolume ratio.

    result = evaluate_policy(model, tokenizer, optimum, STORY_PROMPTS, max_new_tokens=48,
                             adapter=PanaceaAdapter.of(model))
    result.objectives        # [G, m] E_{π_λ}[r_i] with standard errors in result.objectives_se
    result.kl                # [G]    KL(π_λ ‖ π_ref) per response
    result.regret            # [G]    optimum's value − policy's value (≥ −error, 0 at the optimum)
    result.hypervolume_ratio # HV(policy front) / HV(optimal front)
    result.gain              # [G]    G(λ) = 1 − regret(π)/regret(π_ref): 0 base, 1 optimum
    result.mean_gain, result.mean_gain_se

The policy is a model and its tokenizer plus how to set λ:
- `adapter`: a Panacea adapter in `model` — λ is set per sample through it and the reference is the
  same model with the adapter disabled;
- `set_preference`: any callable taking the λ rows of a chunk, [B, m] (for baselines such as
  rewarded soups); give the reference with `reference`. With `per_sample=False` every chunk holds
  one λ only, for policies that cannot take a different λ per row;
- neither: the model itself, with KL 0 (e.g. the base model: its regret is the optimum's value
  minus the base model's value).

For each λ of the optimum's grid, `samples_per_prompt` responses are sampled for every prompt
(rows repeat each λ, chunks of `batch_size` rows go through one `generate` call each), scored by
the ground-truth scorers, and the KL is estimated by the mean of Σ_t log π(y_t) − log π_ref(y_t)
over the response tokens. Sampling uses common random numbers (`panacea_pl.evaluation.crn`):
row k of every λ block (prompt k mod P, sample k div P) has the same noise key, derived from
`seed` and k, so a policy that ignores λ gives one point exactly, and a row's sample does not
depend on the chunking. The base model (the reference) is sampled once on the same K keys: its
value at λ is λ·r on the same draws, which gives G(λ) = 1 − regret(π, λ) / regret(π_ref, λ) with
the paired standard error (`panacea_pl.evaluation.gain`). Under an initialised
`torch.distributed` process group every rank calls this function: the rows are sharded by global
row index (`panacea_pl.evaluation.sharding`), every rank runs as many chunks, and every rank
returns the whole gathered result, equal to one process's. The regularised objective of a policy is V(λ) = λ·E[r] − β·KL (estimated
per sample as λ·r − β·log-ratio); the regret is V*(λ) − V(λ) with standard error from both sides.
Hypervolume uses `reference_point`, by default the optimal front's nadir lowered by 10 % of its
extent per dimension (so its extreme points count), with `panacea_pl.pareto.front.hypervolume`.
Each point of a policy's front is a noisy estimate, and the hypervolume of noisy points is biased
up (lucky points stick out), so compare ratios at the same `samples_per_prompt`, and read them
beside the KL of each point: a policy that drifts further than β allows can pass the optimal
front on one axis while its regret still shows the price.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from panacea_pl.benchmarks.stories.optimum import TiltedFront, _rows
from panacea_pl.benchmarks.stories.sampling import (
    SampledBatch,
    response_logprobs,
    sample_batch,
    torch_threads,
)
from panacea_pl.benchmarks.stories.scorers import Scorer, get_scorers, score_texts
from panacea_pl.evaluation.crn import row_keys
from panacea_pl.evaluation.gain import Gain, achievable_gain
from panacea_pl.evaluation.sharding import Chunk, gather, shard_plan
from panacea_pl.layers import PanaceaAdapter
from panacea_pl.pareto.front import hypervolume

NADIR_MARGIN = 0.1


@dataclass
class Evaluation:
    """A policy's front on the optimum's λ grid, and how far it is from the optimum.

    Attributes:
        preferences: [G, m] the λ grid.
        objectives: [G, m] mean score per dimension; `objectives_se` its standard error.
        kl: [G] estimated KL(π_λ ‖ π_ref) per response; `kl_se` its standard error.
        value: [G] λ·objectives − beta·kl; `value_se` its standard error.
        regret: [G] the optimum's value minus `value`; `regret_se` its standard error.
        hypervolume: of the policy's front, from `reference_point`.
        optimal_hypervolume: of the optimal front, from the same point.
        hypervolume_ratio: hypervolume / optimal_hypervolume.
        reference_point: [m] the hypervolume's reference point.
        gain: [G] G(λ) = 1 − regret / the base model's regret; `gain_se` its standard error.
        mean_gain: G averaged over the grid; `mean_gain_se` its standard error.
        base_objectives: [m] the base model's mean scores on the same draws (NaN without base).
        base_regret: [G] the base model's regret at each λ (its KL is 0; NaN without base).
        base_hypervolume_ratio: the hypervolume ratio of the base model's one point: what a
            sweep before training would report, without sampling it again.
        texts: G lists of the sampled responses, for reading.
        beta: β of the regularised objective.
        dimension_names: the m objective names.
    """

    preferences: np.ndarray
    objectives: np.ndarray
    objectives_se: np.ndarray
    kl: np.ndarray
    kl_se: np.ndarray
    value: np.ndarray
    value_se: np.ndarray
    regret: np.ndarray
    regret_se: np.ndarray
    hypervolume: float
    optimal_hypervolume: float
    hypervolume_ratio: float
    reference_point: np.ndarray
    gain: np.ndarray
    gain_se: np.ndarray
    mean_gain: float
    mean_gain_se: float
    base_objectives: np.ndarray
    base_regret: np.ndarray
    base_hypervolume_ratio: float
    texts: list[list[str]]
    beta: float
    dimension_names: tuple[str, ...]

    @property
    def mean_regret(self) -> float:
        return float(self.regret.mean())

    def regret_within_error(self, z: float = 2.0) -> np.ndarray:
        """[G] True where regret ≥ −z·standard error (no policy beats the optimum)."""
        return self.regret >= -z * self.regret_se

    def rows(self) -> list[dict[str, float]]:
        """One flat dict per λ (for a CSV or a logger table)."""
        fields = ["kl", "kl_se", "value", "value_se", "regret", "regret_se", "gain", "gain_se"]
        return _rows(self, fields)


def evaluate_policy(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    optimum: TiltedFront,
    prompts: Sequence[str],
    max_new_tokens: int,
    *,
    adapter: PanaceaAdapter | None = None,
    set_preference: Callable[[torch.Tensor], None] | None = None,
    reference: torch.nn.Module | Callable[[], AbstractContextManager] | None = None,
    per_sample: bool = True,
    samples_per_prompt: int = 4,
    batch_size: int = 512,
    num_threads: int | None = 1,
    seed: int = 0,
    scorers: Sequence[Scorer] | None = None,
    reference_point: np.ndarray | None = None,
    progress: bool = True,
    base: bool = True,
    shard: bool = True,
) -> Evaluation:
    """Sample, score and compare a policy with the optimum on the optimum's λ grid.

    Args:
        model: the policy's causal LM.
        tokenizer: its tokenizer (with a pad token).
        optimum: the optimal front (its grid, β and values are used).
        prompts: the story openings the optimum was computed on.
        max_new_tokens: the response budget the optimum was computed with.
        adapter: a Panacea adapter injected into `model` (sets λ per sample; reference = disabled).
        set_preference: sets λ from the chunk's rows [B, m] (instead of `adapter`).
        reference: the reference model, or a callable returning a context in which `model` is
            the reference (default: `adapter.disabled`; none for a model without λ).
        per_sample: False if `set_preference` cannot take different λ rows in one batch.
        samples_per_prompt: responses per prompt and λ (K = len(prompts) · samples_per_prompt).
        batch_size: rows per `generate` call.
        num_threads: torch intra-op threads while sampling (None: unchanged); see `torch_threads`.
        seed: seed of the sampling noise (the same draws for every λ and every call).
        scorers: the objectives (default: the first m benchmark scorers).
        reference_point: hypervolume reference point [m] (default: see the module docstring).
        progress: show a progress bar.
        base: also sample the base model on the same draws (for G; K more rows).
        shard: under a process group, sample this rank's share of the rows and gather (every
            rank must call); False: all rows here (a call from one rank only).

    Raises:
        ValueError: `set_preference` without a `reference`, or both `adapter` and `set_preference`.
    """
    if adapter is not None and set_preference is not None:
        raise ValueError("give either an adapter or a set_preference function, not both")
    if adapter is not None:
        set_preference, reference = adapter.set_preference, reference or adapter.disabled
    if set_preference is not None and reference is None:
        raise ValueError("a policy with set_preference needs a reference to estimate its KL")
    grid = torch.as_tensor(optimum.preferences, dtype=torch.float32)
    num_prefs, m = grid.shape
    scorers = tuple(scorers or get_scorers(m))
    per_pref = len(prompts) * samples_per_prompt
    keys = row_keys(seed, torch.arange(per_pref))
    sampler = _RowSampler(model, tokenizer, list(prompts), keys, max_new_tokens, scorers, shard)
    was_training = model.training
    model.eval()
    # The adapter's context restores the λ it had before the evaluation.
    keep_preference = adapter.preference(grid[0]) if adapter is not None else nullcontext()
    try:
        with keep_preference, torch_threads(num_threads):
            rows = sampler.run(
                num_prefs * per_pref,
                batch_size,
                None if per_sample else per_pref,
                lambda c: sampler.policy_chunk(c, grid, set_preference, reference),
                progress,
            )
            base_rows = (
                sampler.run(per_pref, batch_size, None, sampler.base_chunk(reference))
                if base
                else None
            )
    finally:
        model.train(was_training)
    return _summarise(rows, base_rows, grid, optimum, reference_point)


class _RowSampler:
    """Samples and scores the rows of a sweep; row i uses prompt i mod P and key i mod K."""

    def __init__(self, model, tokenizer, prompts, keys, max_new_tokens, scorers, shard):
        self.model, self.tokenizer, self.prompts = model, tokenizer, prompts
        self.keys, self.max_new_tokens, self.scorers = keys, max_new_tokens, scorers
        self.shard = shard

    def run(self, total, batch_size, group_size, chunk_fn, progress=False) -> list[tuple]:
        """(text, rewards [m], log-ratio) of every row, gathered from every rank in row order."""
        plan = shard_plan(total, batch_size, group_size, sharded=self.shard)
        local: list[tuple] = []
        for chunk in tqdm(plan.chunks, desc="evaluating policy", disable=not progress):
            out = chunk_fn(chunk)
            if chunk.keep:
                local += out
        return gather(local, self.shard)

    def sample(self, model, chunk: Chunk) -> SampledBatch:
        rows = range(chunk.start, chunk.stop)
        k = len(self.keys)
        return sample_batch(
            model,
            self.tokenizer,
            [self.prompts[i % k % len(self.prompts)] for i in rows],
            self.max_new_tokens,
            noise_keys=self.keys[[i % k for i in rows]],
        )

    def rows(self, batch: SampledBatch, log_ratio: torch.Tensor | None) -> list[tuple]:
        rewards = score_texts(batch.texts, self.scorers)
        ratios = [0.0] * len(batch.texts) if log_ratio is None else log_ratio.tolist()
        return list(zip(batch.texts, rewards, ratios, strict=True))

    def policy_chunk(self, chunk, grid, set_preference, reference) -> list[tuple]:
        if set_preference is not None:
            set_preference(grid[torch.arange(chunk.start, chunk.stop) // len(self.keys)])
        batch = self.sample(self.model, chunk)
        if reference is None:
            return self.rows(batch, None)
        ratio = response_logprobs(self.model, batch) - _reference_logprobs(
            self.model, reference, batch
        )
        return self.rows(batch, ratio)

    def base_chunk(self, reference) -> Callable[[Chunk], list[tuple]]:
        """Samples of the reference itself (KL 0): a module, a context over `model`, or `model`."""

        def run(chunk: Chunk) -> list[tuple]:
            if isinstance(reference, torch.nn.Module):
                return self.rows(self.sample(reference, chunk), None)
            with reference() if reference is not None else nullcontext():
                return self.rows(self.sample(self.model, chunk), None)

        return run


def _summarise(rows, base_rows, grid, optimum: TiltedFront, reference_point) -> Evaluation:
    num_prefs, m = grid.shape
    per_pref = len(rows) // num_prefs
    texts = [t for t, _, _ in rows]
    rewards = np.stack([r for _, r, _ in rows]).reshape(num_prefs, per_pref, m)
    log_ratio = np.array([x for _, _, x in rows], dtype=np.float64).reshape(num_prefs, per_pref)
    lam = grid.double().numpy()
    per_sample_value = np.einsum("gkm,gm->gk", rewards, lam) - optimum.beta * log_ratio
    value, value_se = _mean_se(per_sample_value)
    objectives, objectives_se = _mean_se(rewards)
    kl, kl_se = _mean_se(log_ratio)
    if base_rows is not None:
        base_rewards = np.stack([r for _, r, _ in base_rows])  # [K, m]
        gain = achievable_gain(
            per_sample_value, lam @ base_rewards.T, optimum.value, optimum.value_se
        )
        base_objectives = base_rewards.mean(0)
    else:
        nan = np.full(num_prefs, np.nan)
        gain, base_objectives = Gain(nan, nan, float("nan"), float("nan")), np.full(m, np.nan)
    point = _reference_point(optimum.objectives) if reference_point is None else reference_point
    hv = hypervolume(objectives, point)
    hv_opt = hypervolume(optimum.objectives, point)

    def ratio(volume: float) -> float:
        return volume / hv_opt if hv_opt > 0 else float("nan")

    base_regret = optimum.value - lam @ base_objectives  # NaN without base
    base_hv = hypervolume(base_objectives[None], point) if base_rows is not None else float("nan")
    return Evaluation(
        preferences=lam,
        objectives=objectives,
        objectives_se=objectives_se,
        kl=kl,
        kl_se=kl_se,
        value=value,
        value_se=value_se,
        regret=optimum.value - value,
        regret_se=np.sqrt(optimum.value_se**2 + value_se**2),
        hypervolume=hv,
        optimal_hypervolume=hv_opt,
        hypervolume_ratio=ratio(hv),
        reference_point=np.asarray(point, dtype=np.float64),
        gain=gain.per_lambda,
        gain_se=gain.per_lambda_se,
        mean_gain=gain.mean,
        mean_gain_se=gain.mean_se,
        base_objectives=base_objectives,
        base_regret=base_regret,
        base_hypervolume_ratio=ratio(base_hv),
        texts=[texts[g * per_pref : (g + 1) * per_pref] for g in range(num_prefs)],
        beta=optimum.beta,
        dimension_names=optimum.dimension_names,
    )


def _reference_logprobs(model, reference, batch) -> torch.Tensor:
    if isinstance(reference, torch.nn.Module):
        return response_logprobs(reference, batch)
    with reference():
        return response_logprobs(model, batch)


def _mean_se(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean over axis 1 and its standard error."""
    n = x.shape[1]
    se = x.std(1, ddof=1) / np.sqrt(n) if n > 1 else np.zeros_like(x.mean(1))
    return x.mean(1), se


def _reference_point(front: np.ndarray) -> np.ndarray:
    nadir, ideal = front.min(0), front.max(0)
    return nadir - NADIR_MARGIN * (ideal - nadir)
