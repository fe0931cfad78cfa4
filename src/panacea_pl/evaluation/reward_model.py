"""Evaluator (b): generate for every λ of the grid and score the responses with a trained
vector reward / cost model.

    evaluator = RewardModelEvaluator("runs/rm/scorer", prompts="prompts.jsonl",
                                     objectives={"helpful": "score:helpful",
                                                 "harmless": "neg_cost"})
    trainer = Trainer(callbacks=[ParetoSweep(evaluator, divisions=10)])

or from YAML:

    - class_path: panacea_pl.callbacks.ParetoSweep
      init_args:
        evaluator:
          class_path: panacea_pl.evaluation.RewardModelEvaluator
          init_args:
            scorer: runs/reward_model_local/pku_cost/version_0/scorer
            objectives: {helpful: "score:helpful", harmless: neg_cost}
            max_prompts: 32

**Rows.** Every prompt is answered under every λ of the grid: rows = grid λ × prompts (×
`samples_per_prompt`), one λ row per sequence, `max_rows` rows per `policy.generate` call, so the
whole grid goes through in per-sample batches (for a policy that takes one λ per batch,
`accepts_row_preferences` False — the baselines' collections — no call mixes two λ). Prompt +
response texts are scored by the `VectorRewardModel` loaded from `scorer`
(`VectorRewardModel.load`); f_i(λ) is the mean over the prompts, its standard error is the column `"{objective} se"`.

**Objectives.** `objectives` maps each policy dimension (in the module's `dimension_names`) to
one output of the scorer: `"score:<name>"` (the scorer's reward head `<name>`, higher is better)
or `"neg_cost"` (minus its cost head: safe-rlhf's cost is > 0 for unsafe text, so −cost is
higher for safer text). Without `objectives` the rule is: dimension d reads `score:d`, except
`cost_dimension` (default `harmless`), which reads `neg_cost` when the scorer has a cost head.
All objectives are maximised.

**Reference point** (for the hypervolume): by default the base model's mean scores — the same
prompts answered by `policy.reference()` (Panacea: the adapter disabled), with the same seed and
decoding — so the hypervolume
is the objective-space volume that the front gains over the model it started from (0 when no λ
beats the base model in every objective). A configured `reference_point` replaces it (and then
no base generation is run). The base scores are reported in the summary as `base_{dimension}`.
The inner product ⟨λ, f̂(λ)⟩ is normalised by `lower`/`upper`; by default lower = the reference
point and upper = lower + 1, i.e. the mean λ-weighted gain over the reference in scorer units.

**Decoding.** Greedy by default (deterministic, so a front does not move between sweeps by
sampling noise, and chunking does not change a response); `do_sample=True` samples with
`temperature`/`top_p` on common random numbers (`panacea_pl.evaluation.crn`): row k of every λ
and of the base model (prompt k, sample k) shares one noise key derived from `seed`, so a policy
that ignores λ gives one point, the columns `"{objective} - base"` (with `"… - base se"`) are
paired differences, and a sweep is the same at every call, in any chunking, on any number of
ranks. **Ranks.** Under DDP every rank calls `evaluate` (`shard`, the default): it generates and
scores its share of the rows (`panacea_pl.evaluation.sharding`), and all ranks get the gathered
front.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import lightning.pytorch as pl
import numpy as np
import torch

from panacea_pl.data.config import TokenizationSpec
from panacea_pl.evaluation.crn import row_keys
from panacea_pl.evaluation.generation import (
    datamodule_prompt_ids,
    encode_prompts,
    generate_rows,
    load_prompts,
)
from panacea_pl.evaluation.result import FrontResult
from panacea_pl.evaluation.sharding import gather, shard_plan
from panacea_pl.models.generation import Generations
from panacea_pl.models.reward import ScorerOutput, VectorRewardModel
from panacea_pl.rows import group_rows, repeat_rows, tile_rows

log = logging.getLogger(__name__)

NEG_COST = "neg_cost"
SCORE_PREFIX = "score:"


def default_objectives(
    dimension_names: Sequence[str], scorer: VectorRewardModel, cost_dimension: str | None
) -> dict[str, str]:
    """The default mapping: `score:d` for every dimension d, `neg_cost` for `cost_dimension`
    when the scorer has a cost head."""
    has_cost = scorer.cost_head is not None
    return {
        d: NEG_COST if has_cost and d == cost_dimension else f"{SCORE_PREFIX}{d}"
        for d in dimension_names
    }


def check_objectives(
    objectives: dict[str, str], dimension_names: Sequence[str], scorer: VectorRewardModel
) -> None:
    """Raise ValueError unless `objectives` maps exactly the policy's dimensions to outputs that
    the scorer has."""
    if set(objectives) != set(dimension_names):
        raise ValueError(
            f"objectives must map every policy dimension {list(dimension_names)} and nothing "
            f"else, got {sorted(objectives)}"
        )
    for dim, source in objectives.items():
        if source == NEG_COST:
            if scorer.cost_head is None:
                raise ValueError(f"objective {dim!r}: {NEG_COST} needs a scorer with a cost head")
        elif source.startswith(SCORE_PREFIX):
            name = source[len(SCORE_PREFIX) :]
            if name not in scorer.dimension_names:
                raise ValueError(
                    f"objective {dim!r}: the scorer has no head {name!r} "
                    f"(its heads: {scorer.dimension_names})"
                )
        else:
            raise ValueError(
                f"objective {dim!r}: {source!r} is neither '{SCORE_PREFIX}<name>' nor {NEG_COST!r}"
            )


def select_objectives(
    out: ScorerOutput, sources: Sequence[str], scorer: VectorRewardModel
) -> torch.Tensor:
    """[N, m] the scorer outputs named by `sources` (one column per policy dimension)."""
    columns = []
    for source in sources:
        if source == NEG_COST:
            columns.append(-out.cost)
        else:
            columns.append(out.scores[:, scorer.dimension_names.index(source[len(SCORE_PREFIX) :])])
    return torch.stack(columns, dim=1)


def objective_name(dimension: str, source: str) -> str:
    """`helpful reward`, `harmless -cost`, or `helpful reward (harmless)` for a renamed head."""
    if source == NEG_COST:
        return f"{dimension} -cost"
    head = source[len(SCORE_PREFIX) :]
    return f"{dimension} reward" if head == dimension else f"{dimension} reward ({head})"


class RewardModelEvaluator:
    """Mean reward-model scores (↑) of generated responses, per dimension, for every λ of a grid.

    Args:
        scorer: folder of a saved `VectorRewardModel` (loaded on first use) or the model itself.
        objectives: {policy dimension: "score:<scorer head>" | "neg_cost"}; default: see the
            module docstring.
        cost_dimension: the dimension read from the cost head by the default mapping.
        prompts: a list of prompts, or a JSON-lines file (field `prompt_field`); None: the first
            `max_prompts` distinct prompts of the datamodule's held-out set.
        prompt_field: the prompt's key in a JSON-lines file.
        tokenization: template / BOS / truncation of `prompts` (default: the datamodule's
            `tokenization` when it has one, else the raw prompt, or the tokenizer's chat template
            when it has one). Not used for the datamodule's own prompts (already tokenised).
        max_prompts: most prompts used (None: all).
        samples_per_prompt: responses per prompt and λ (more than 1 only makes sense sampling).
        max_new_tokens: response budget.
        do_sample: sample instead of greedy decoding.
        temperature, top_p: sampling settings.
        seed: sampling seed, reset at every sweep.
        max_rows: most sequences in one `generate` call (the grid is chunked to fit).
        score_batch_size: texts per scorer forward pass.
        reference_point: [m] the hypervolume's reference (default: the base model's scores).
        lower, upper: [m] the inner product's range (default: reference, reference + 1).
        scorer_dtype: dtype to load the scorer in.
        progress: show progress bars.
        shard: under DDP, every rank generates and scores its share of the rows (`ParetoSweep`
            then calls `evaluate` on every rank); False: rank zero does all of them.
    """

    def __init__(
        self,
        scorer: str | VectorRewardModel,
        objectives: dict[str, str] | None = None,
        cost_dimension: str | None = "harmless",
        prompts: list[str] | str | None = None,
        prompt_field: str = "prompt",
        tokenization: TokenizationSpec | None = None,
        max_prompts: int | None = 16,
        samples_per_prompt: int = 1,
        max_new_tokens: int = 64,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_p: float = 1.0,
        seed: int = 0,
        max_rows: int = 64,
        score_batch_size: int = 32,
        reference_point: list[float] | None = None,
        lower: list[float] | None = None,
        upper: list[float] | None = None,
        scorer_dtype: str = "float32",
        progress: bool = True,
        shard: bool = True,
    ):
        if samples_per_prompt < 1 or max_rows < 1 or max_new_tokens < 1:
            raise ValueError("samples_per_prompt, max_rows and max_new_tokens must be at least 1")
        self._scorer = scorer if isinstance(scorer, VectorRewardModel) else None
        self.scorer_path = None if self._scorer is not None else str(scorer)
        self.objectives = dict(objectives) if objectives is not None else None
        self.cost_dimension = cost_dimension
        self.prompts = prompts
        self.prompt_field = prompt_field
        self.tokenization = tokenization
        self.max_prompts = max_prompts
        self.samples_per_prompt = samples_per_prompt
        self.generate_kwargs = {"max_new_tokens": max_new_tokens, "do_sample": do_sample}
        if do_sample:
            self.generate_kwargs |= {"temperature": temperature, "top_p": top_p, "top_k": 0}
        self.seed = seed
        self.distributed = shard  # ParetoSweep: every rank calls `evaluate`
        self.max_rows = max_rows
        self.score_batch_size = score_batch_size
        self.reference_point = reference_point
        self.lower, self.upper = lower, upper
        self.scorer_dtype = scorer_dtype
        self.progress = progress
        self.last_generations: Generations | None = None
        self.last_base: Generations | None = None

    @property
    def scorer(self) -> VectorRewardModel:
        """The reward model (loaded from `scorer_path` on first use, in eval mode)."""
        if self._scorer is None:
            log.info("loading the reward model from %s", self.scorer_path)
            self._scorer = VectorRewardModel.load(self.scorer_path, dtype=self.scorer_dtype)
        return self._scorer.eval()

    def resolve_objectives(self, dimension_names: Sequence[str]) -> dict[str, str]:
        """The mapping in the policy's dimension order, checked against the scorer."""
        mapping = self.objectives or default_objectives(
            dimension_names, self.scorer, self.cost_dimension
        )
        check_objectives(mapping, dimension_names, self.scorer)
        return {d: mapping[d] for d in dimension_names}

    def prompt_ids(self, module: pl.LightningModule, tokenizer) -> list[list[int]]:
        """Token ids of the evaluation prompts (see `prompts`)."""
        trainer = getattr(module, "_trainer", None)
        datamodule = getattr(trainer, "datamodule", None) if trainer is not None else None
        if self.prompts is None:
            if datamodule is None:
                raise ValueError("no prompts: give `prompts` or run with a datamodule")
            return datamodule_prompt_ids(datamodule, self.max_prompts)
        prompts = load_prompts(self.prompts, self.prompt_field)[: self.max_prompts]
        if not prompts:
            raise ValueError("the evaluator's prompt list is empty")
        spec = self.tokenization or getattr(datamodule, "tokenization", None)
        spec = spec or TokenizationSpec(prompt_template="{prompt}", max_prompt_length=None)
        return encode_prompts(tokenizer, prompts, spec)

    @torch.no_grad()
    def evaluate(self, module: pl.LightningModule, preferences: torch.Tensor) -> FrontResult:
        policy = module.policy
        names = list(module.dimension_names)
        mapping = self.resolve_objectives(names)
        sources = list(mapping.values())
        tokenizer = policy.tokenizer()
        prompts = repeat_rows(self.prompt_ids(module, tokenizer), self.samples_per_prompt)
        k, grid = len(prompts), preferences.detach().float().cpu()
        self._place_scorer(module.device)

        rows = repeat_rows(grid, k)  # λ-major: the k prompt rows of λ_0, then λ_1, …
        texts = tile_rows(prompts, len(grid))
        generations, scores = self._sweep(policy, tokenizer, texts, rows, k, sources)
        scores = group_rows(scores, k)  # [λ, k, objectives]
        objectives, se = _mean_se(scores)
        self.last_generations = generations

        objective_names = [objective_name(d, s) for d, s in mapping.items()]
        columns = {f"{n} se": se[:, i] for i, n in enumerate(objective_names)}
        summary = {"mean_response_tokens": float(generations.lengths.mean())}
        base_point = None
        if self.reference_point is None:
            base, base_scores = self._sweep(
                policy, tokenizer, prompts, None, k, sources, "reference"
            )
            reference = base_scores.mean(0).double().numpy()
            summary |= {f"base_{d}": float(v) for d, v in zip(names, reference, strict=True)}
            self.last_base = base
            base_point = reference
            # the same prompts and sampling noise: the gain over the base is a paired difference
            gain, gain_se = _mean_se(scores - base_scores[None])
            columns |= {f"{n} - base": gain[:, i] for i, n in enumerate(objective_names)}
            columns |= {f"{n} - base se": gain_se[:, i] for i, n in enumerate(objective_names)}
        else:
            reference = np.asarray(self.reference_point, dtype=np.float64)
        lower = reference if self.lower is None else np.asarray(self.lower, dtype=np.float64)
        upper = lower + 1.0 if self.upper is None else np.asarray(self.upper, dtype=np.float64)

        lengths = group_rows(generations.lengths, k).mean(1)
        return FrontResult(
            preferences=preferences.detach().cpu().numpy(),
            objectives=objectives,
            objective_names=objective_names,
            maximize=[True] * len(names),
            reference_point=reference,
            lower=lower,
            upper=upper,
            columns=columns | {"response_tokens": lengths},
            summary=summary,
            base=base_point,
        )

    def _place_scorer(self, device: torch.device) -> None:
        scorer = self.scorer
        if scorer.score_head.weight.device != device:
            scorer.to(device)

    def _sweep(self, policy, tokenizer, prompts, rows, per_lambda, sources, what="λ grid"):
        """This rank's share of the rows generated and scored, then every rank's gathered:
        (Generations, scores [N, m]) in row order. Row i's noise key is i mod K (its prompt and
        sample), so every λ and the base model share the draws."""
        keys = row_keys(self.seed, torch.arange(len(prompts)) % per_lambda)
        group_size = None if getattr(policy, "accepts_row_preferences", True) else per_lambda
        plan = shard_plan(len(prompts), self.max_rows, group_size, sharded=self.distributed)
        local = generate_rows(
            policy,
            tokenizer,
            prompts,
            rows,
            max_rows=self.max_rows,
            group_size=group_size,
            progress=self.progress,
            desc=f"reward-model sweep ({what})",
            noise_keys=keys,
            plan=plan,
            **self.generate_kwargs,
        )
        scores = self._score(local.texts, sources) if local.prompts else None
        parts = gather([(local, scores)], self.distributed)
        generations = Generations(
            [p for g, _ in parts for p in g.prompts],
            [r for g, _ in parts for r in g.responses],
            np.concatenate([g.lengths for g, _ in parts]),
        )
        return generations, torch.cat([s for _, s in parts if s is not None])

    def _score(self, texts: list[str], sources: list[str]) -> torch.Tensor:
        out = self.scorer.score_texts(texts, batch_size=self.score_batch_size)
        return select_objectives(out, sources, self.scorer).double().cpu()


def _mean_se(scores: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Mean over axis 1 of [G, K, m] and its standard error (0 for K = 1)."""
    values = scores.numpy()
    k = values.shape[1]
    se = values.std(1, ddof=1) / np.sqrt(k) if k > 1 else np.zeros_like(values[:, 0])
    return values.mean(1), se


__all__ = ["RewardModelEvaluator", "default_objectives", "objective_name"]
