"""The stories benchmark: a real pretrained LM, m ground-truth scorers and the exact optimal front.

    bench = StoriesBenchmark(num_dimensions=2).build()   # ~40 s on 2 cores once, then cached
    bench.model_dir          # Hugging Face folder of stories260K (converted once)
    bench.pairs_path         # JSON lines, `generic` schema, one label column per dimension
    bench.dimension_names    # ('happy', 'sad')
    front = bench.optimal_front()          # TiltedFront on an 11-point λ grid
    model = bench.load_model()             # + inject_adapter(...) and training
    result = bench.evaluate(model, adapter=PanaceaAdapter.of(model))
    result.hypervolume_ratio, result.regret

The model is Karpathy's stories260K (llama2.c, MIT), read from `data_dir` (default
`$PANACEA_DATA_DIR` or `../shared/data`, folder `tinyllamas-stories260k`). Reference samples are
ancestral samples of `max_new_tokens` tokens continuing BOS + one of the `STORY_PROMPTS`; each
prompt gets `pair_responses_per_prompt` responses for the pairs and, separately,
`reference_samples_per_prompt` for the optimum.

**Which optimum DPO targets.** Labels follow Bradley–Terry at temperature τ:
p(a ≻ b) = σ((r(a) − r(b)) / τ), written as that probability (soft labels, the default) or drawn
from it (`soft_labels=False`). DPO models the same probability as σ(β·h(a) − β·h(b)) with
h = log π/π_ref, so at its population optimum β·h(y) = r(y)/τ + c(x), i.e.
π(y|x) ∝ π_ref(y|x) exp(r(y) / (β·τ)): the maximiser of E[r] − β_eff·KL(π‖π_ref) with
β_eff = β·τ. With the m dimensions weighted by λ the benchmark's optimum is
π*_λ ∝ π_ref exp(λ·r / β_eff), the optimum of the KL-regularised linear scalarisation
Σλ_i E[r_i] − β_eff·KL (what RLHF with a KL penalty and MODPO target). A λ-weighted sum of
per-dimension DPO losses reaches it exactly at the corners of the simplex and to first order in
Δr/τ inside: pair by pair, its minimiser sets σ(β·Δh) = Σλ_i σ(Δr_i/τ) instead of
σ(Σλ_i Δr_i/τ), so the regret of such a model includes that (small) approximation.

The defaults (τ = 0.04, β = 1.25, so β_eff = 0.05) keep the labels informative (one happy word
more in a 22-word response gives σ(Δr/τ) ≈ 0.76) while π*_λ stays within reach of importance
sampling: for m = 2 its KL at the corners of the simplex is about 0.3 nats and the effective
sample size is above 50 of 512 in every prompt (one story with many happy words can dominate a
prompt: at β_eff = 0.04 the smallest per-prompt ESS at the happy corner was 14 to 62 over three
independent reference draws, at 0.05 it was 55 to 144). Smaller β_eff moves the optimum further
from π_ref (larger KL) and shrinks the effective sample size; check `optimal_front().ess`. A
smaller τ at the same β_eff would sharpen the labels, but a λ-weighted sum of per-dimension DPO
losses then misses π*_λ inside the simplex by more (see above: the mismatch grows with Δr/τ).

Pairs: `pairs_per_prompt` distinct pairs among `pair_responses_per_prompt` responses per prompt,
those that differ in more of the m scores first (see `pairs.choose_pairs`: a tie is a coin-flip
label), so that training rarely sees a pair twice and each pair is informative in every
dimension where possible.

To train on the pairs with `panacea_pl.data`, use the `generic` schema, one
`DimensionSpec(name=n, source=..., field=n)` per name in `dimension_names`, the plain templates
`"{prompt}"` / `"{response}"`, and `add_eos: false`: responses are story continuations cut at
`max_new_tokens`, and the model never wrote `</s>` (it ends stories with BOS), so an appended EOS
would put a token into the DPO sequences that the optimum's sequences do not have. About 98 % of
the response texts re-tokenise to exactly the sampled ids (the rest were sampled in a
non-canonical tokenisation).

Everything is cached under `cache_dir` by a hash of the settings that produced it: the converted
model, the samples (with all ten scores), the pair file per (m, τ) and the optimal front per
(grid, β_eff). Delete the folder to rebuild.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from panacea_pl.atomic import atomic_write, publish_folder
from panacea_pl.benchmarks.stories.evaluate import Evaluation, evaluate_policy
from panacea_pl.benchmarks.stories.optimum import TiltedFront, tilted_front
from panacea_pl.benchmarks.stories.pairs import bradley_terry_labels, choose_pairs, write_pairs
from panacea_pl.benchmarks.stories.prompts import STORY_PROMPTS
from panacea_pl.benchmarks.stories.samples import StorySamples, draw_samples
from panacea_pl.benchmarks.stories.scorers import SCORERS, get_scorers
from panacea_pl.convert.llama2c import convert_llama2c
from panacea_pl.hashing import file_digest, settings_key
from panacea_pl.preference import simplex_grid

log = logging.getLogger(__name__)

CHECKPOINT_FOLDER = "tinyllamas-stories260k"
CHECKPOINT = "stories260K.bin"
TOKENIZERS = ("tok512.bin", "tok512.model")
WHERE_TO_GET = (
    "Download stories260K.bin and tok512.bin (or tok512.model) from "
    "https://huggingface.co/karpathy/tinyllamas/tree/main/stories260K (MIT license; the model "
    "of llama2.c's doc/stories260K.md) into {folder}, or point data_dir / PANACEA_DATA_DIR at "
    "the folder that holds `{sub}/`."
)


def default_data_dir() -> Path:
    """`$PANACEA_DATA_DIR`, else `../shared/data` (relative to the current directory)."""
    return Path(os.environ.get("PANACEA_DATA_DIR", "../shared/data"))


def default_cache_dir() -> Path:
    """`$PANACEA_CACHE_DIR/stories`, else `~/.cache/panacea_pl/stories`."""
    root = os.environ.get("PANACEA_CACHE_DIR", Path.home() / ".cache" / "panacea_pl")
    return Path(root) / "stories"


def locate_checkpoint(data_dir: str | Path) -> tuple[Path, Path]:
    """The stories260K checkpoint and tokenizer in `data_dir` (or its `tinyllamas-stories260k/`).

    Raises:
        FileNotFoundError: with where to download them.
    """
    data_dir = Path(data_dir)
    for folder in (data_dir / CHECKPOINT_FOLDER, data_dir):
        tokenizers = [folder / t for t in TOKENIZERS if (folder / t).is_file()]
        if (folder / CHECKPOINT).is_file() and tokenizers:
            return folder / CHECKPOINT, tokenizers[0]
    folder = data_dir.resolve() / CHECKPOINT_FOLDER
    raise FileNotFoundError(
        f"the stories260K checkpoint is not in {data_dir.resolve()}. "
        + WHERE_TO_GET.format(folder=folder, sub=CHECKPOINT_FOLDER)
    )


class StoriesBenchmark:
    """A known-optimum multi-objective benchmark on the stories260K language model.

    Args:
        data_dir: folder with `tinyllamas-stories260k/` (default: `default_data_dir()`).
        cache_dir: where converted model, samples, pairs and fronts are kept
            (default: `default_cache_dir()`).
        num_dimensions: m, 2 to 10; the first m of `SCORERS`.
        num_prompts: how many of `STORY_PROMPTS` to use (1 to 16).
        reference_samples_per_prompt: samples per prompt for the optimum (importance sampling).
        pair_responses_per_prompt: responses per prompt that pairs are made of.
        pairs_per_prompt: labelled pairs per prompt (distinct unordered pairs of its responses).
        max_new_tokens: response budget of every sample (reference, pairs and evaluation).
        label_temperature: τ of the Bradley–Terry labels.
        soft_labels: write the Bradley–Terry probability (as 2p − 1) instead of a label drawn
            from it; same optimum, no sampling noise (see `pairs`).
        beta: the DPO β the optimum is computed for (β_eff = beta · label_temperature).
        batch_size: rows per `generate` call.
        num_threads: torch threads while sampling (1 is fastest for this tiny model; None leaves
            torch's setting alone).
        seed: seed of sampling, pair choice and labels.
        progress: show progress bars.
    """

    def __init__(
        self,
        data_dir: str | Path | None = None,
        cache_dir: str | Path | None = None,
        num_dimensions: int = 2,
        *,
        num_prompts: int = len(STORY_PROMPTS),
        reference_samples_per_prompt: int = 512,
        pair_responses_per_prompt: int = 256,
        pairs_per_prompt: int = 1024,
        max_new_tokens: int = 48,
        label_temperature: float = 0.04,
        soft_labels: bool = True,
        beta: float = 1.25,
        batch_size: int = 512,
        num_threads: int | None = 1,
        seed: int = 0,
        progress: bool = True,
    ):
        if not 1 <= num_prompts <= len(STORY_PROMPTS):
            raise ValueError(f"num_prompts must be 1 to {len(STORY_PROMPTS)}, got {num_prompts}")
        self.scorers = get_scorers(num_dimensions)
        self.checkpoint, self.tokenizer_file = locate_checkpoint(data_dir or default_data_dir())
        self.cache_dir = Path(cache_dir or default_cache_dir())
        self.prompts = STORY_PROMPTS[:num_prompts]
        self.reference_samples_per_prompt = reference_samples_per_prompt
        self.pair_responses_per_prompt = pair_responses_per_prompt
        self.pairs_per_prompt = pairs_per_prompt
        self.max_new_tokens = max_new_tokens
        self.label_temperature = label_temperature
        self.soft_labels = soft_labels
        self.beta = beta
        self.batch_size = batch_size
        self.num_threads = num_threads
        self.seed = seed
        self.progress = progress
        self._model_key = settings_key(
            {
                "checkpoint": file_digest(self.checkpoint),
                "tokenizer": file_digest(self.tokenizer_file),
            }
        )
        self._samples_key = settings_key(
            {
                "model": self._model_key,
                "prompts": self.prompts,
                "reference": reference_samples_per_prompt,
                "pairs": pair_responses_per_prompt,
                "max_new_tokens": max_new_tokens,
                "batch_size": batch_size,
                "seed": seed,
                "scorers": [
                    [s.name, type(s).__name__, sorted(getattr(s, "family", []))] for s in SCORERS
                ],
            }
        )
        self._samples: StorySamples | None = None

    @property
    def num_dimensions(self) -> int:
        return len(self.scorers)

    @property
    def dimension_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.scorers)

    @property
    def beta_eff(self) -> float:
        """β·τ: the KL coefficient of the objective whose optimum DPO on these pairs targets."""
        return self.beta * self.label_temperature

    # ---- artefacts ---------------------------------------------------------------------------

    @property
    def model_dir(self) -> Path:
        """The converted Hugging Face model folder (converted on first use)."""
        path = self.cache_dir / f"stories260k-{self._model_key}"
        if not (path / "config.json").is_file():
            log.info("converting %s to %s", self.checkpoint, path)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            convert_llama2c(self.checkpoint, self.tokenizer_file, tmp)
            publish_folder(tmp, path, complete=lambda p: (p / "config.json").is_file())
        return path

    def load_model(self) -> PreTrainedModel:
        """A fresh copy of the base model, in eval mode."""
        return AutoModelForCausalLM.from_pretrained(self.model_dir).eval()

    def load_tokenizer(self):
        """The model's tokenizer (BOS added, `<unk>` as pad, left padding)."""
        tokenizer = AutoTokenizer.from_pretrained(self.model_dir)
        tokenizer.padding_side = "left"
        return tokenizer

    @property
    def samples(self) -> StorySamples:
        """The base model's responses (sampled once, then read from the cache)."""
        if self._samples is None:
            path = self.cache_dir / f"samples-{self._samples_key}.npz"
            if path.is_file():
                log.info("reusing samples from %s", path)
            else:
                draw_samples(
                    self.load_model(),
                    self.load_tokenizer(),
                    self.prompts,
                    self.pair_responses_per_prompt,
                    self.reference_samples_per_prompt,
                    self.max_new_tokens,
                    self.batch_size,
                    self.seed,
                    self.num_threads,
                    self.progress,
                ).save(path)
            self._samples = StorySamples.load(path)
        return self._samples

    @property
    def pairs_path(self) -> Path:
        """The labelled pairs, JSON lines in the `generic` schema (written on first use)."""
        key = settings_key(
            {
                "samples": self._samples_key,
                "dimensions": self.dimension_names,
                "tau": self.label_temperature,
                "pairs_per_prompt": self.pairs_per_prompt,
                "choice": "most-differing-dimensions-first",
                "soft": self.soft_labels,
            }
        )
        path = self.cache_dir / f"pairs-{key}.jsonl"
        if not path.is_file():
            self._write_pairs(path)
        return path

    def build(self) -> StoriesBenchmark:
        """Convert, sample, label and compute the default optimal front (each only if not cached)."""
        start = time.perf_counter()
        log.info("pairs: %s", self.pairs_path)
        self.optimal_front()
        log.info(
            "stories benchmark m=%d ready in %.1f s",
            self.num_dimensions,
            time.perf_counter() - start,
        )
        return self

    # ---- optimum and evaluation --------------------------------------------------------------

    def default_preferences(self) -> np.ndarray:
        """The evaluation grid: a Das–Dennis lattice with 11 points for m = 2, corners included."""
        divisions = {2: 10, 3: 6, 4: 4}.get(self.num_dimensions, 2)
        return simplex_grid(self.num_dimensions, divisions).double().numpy()

    def optimal_front(self, preferences: np.ndarray | torch.Tensor | None = None) -> TiltedFront:
        """E_{π*_λ}[r], KL and value of the optimum on a λ grid [G, m] (cached on disk)."""
        if preferences is None:
            grid = self.default_preferences()
        else:
            grid = torch.as_tensor(preferences, dtype=torch.float64).cpu().numpy()
        key = settings_key(
            {
                "samples": self._samples_key,
                "m": self.num_dimensions,
                "grid": grid.round(12).tolist(),
                "beta_eff": self.beta_eff,
            }
        )
        path = self.cache_dir / f"front-{key}.npz"
        if path.is_file():
            return TiltedFront.load(path)
        front = tilted_front(
            self.samples.reference_rewards(self.num_dimensions),
            grid,
            self.beta_eff,
            self.dimension_names,
        )
        atomic_write(path, front.save, keep_suffix=True)
        return front

    def evaluate(
        self,
        model: PreTrainedModel,
        tokenizer=None,
        preferences: np.ndarray | torch.Tensor | None = None,
        **kwargs,
    ) -> Evaluation:
        """Score a policy on the λ grid against the optimum; see `evaluate_policy` for `kwargs`.

        Args:
            model: the policy's model (e.g. `load_model()` with an adapter injected).
            tokenizer: default `load_tokenizer()`.
            preferences: [G, m] grid (default `default_preferences()`).
            **kwargs: `adapter`, `set_preference`, `reference`, `per_sample`,
                `samples_per_prompt`, `seed`, `reference_point`, `base`, and `batch_size`,
                `num_threads`, `progress` (default: the benchmark's).
        """
        return evaluate_policy(
            model,
            tokenizer or self.load_tokenizer(),
            self.optimal_front(preferences),
            self.prompts,
            self.max_new_tokens,
            scorers=self.scorers,
            **{"batch_size": self.batch_size, "num_threads": self.num_threads}
            | {"progress": self.progress}
            | kwargs,
        )

    def _write_pairs(self, path: Path) -> None:
        samples = self.samples
        candidates = np.flatnonzero(samples.for_pairs & (np.char.strip(samples.texts) != ""))
        m = self.num_dimensions
        chosen = choose_pairs(
            samples.prompt_index[candidates],
            self.pairs_per_prompt,
            self.seed,
            rewards=samples.rewards[candidates, :m],
        )
        a, b = candidates[chosen[:, 0]], candidates[chosen[:, 1]]
        labels = bradley_terry_labels(
            samples.rewards[a, :m],
            samples.rewards[b, :m],
            self.label_temperature,
            self.seed,
            soft=self.soft_labels,
        )
        prompts = [self.prompts[i] for i in samples.prompt_index[a]]
        texts = samples.texts.tolist()
        write_pairs(
            path,
            prompts,
            [texts[i] for i in a],
            [texts[i] for i in b],
            labels,
            self.dimension_names,
        )
        log.info("wrote %d pairs to %s", len(a), path)
