"""G on the stories benchmark's own reference draw, by importance sampling: a low-noise estimate.

    draw = ReferenceDraw(bench)                      # the base model's log-probs, once (~20 s)
    with policy.preference(torch.tensor(lam)):
        logps = draw.logps(policy.model)             # [P, n] under the policy at λ
    draw.gain(logps, lam)    # {"G_is", "G_is_se", "kl_is", "tilt_slope", "tilt_corr", "ess_is_min", …}

The sampled G of `StoriesEvaluator` is unbiased but noisy (±0.1 at a corner with 512 stories).
Here the base model, the optimum and the policy are all estimated on the same 512 π_ref samples
per prompt that the optimum itself is computed from, so most of the noise cancels (±0.02–0.04).
It needs the policy's effective sample size on the draw (`ess_is_min`, of n per prompt) to be
large: a policy far from π_ref is better read with the sampled G. Also reports how much of the
policy's log-ratio is the optimum's tilt (`tilt_slope`, `tilt_corr`: 1 and 1 at the optimum).
"""

from __future__ import annotations

from collections.abc import Sequence
from types import SimpleNamespace

import numpy as np
import torch

from panacea_pl.benchmarks.stories.benchmark import StoriesBenchmark
from panacea_pl.benchmarks.stories.samples import StorySamples
from panacea_pl.benchmarks.stories.sampling import response_logprobs


class ReferenceDraw:
    """G estimated by importance sampling on the benchmark's fixed reference draw (512 π_ref
    samples per prompt, the ones the optimum is computed from): V(π) ≈ Σ_j w_j (λ·r_j − β·ℓ_j)
    with ℓ = log π/π_ref and self-normalised w ∝ e^ℓ per prompt. The base model, the optimum and
    the policy are then estimated on the same samples, so their errors largely cancel in G; the
    standard error is a bootstrap over samples within prompts. Trustworthy while the policy's
    effective sample size (`ess_is`, per prompt) is large."""

    def __init__(self, bench: StoriesBenchmark, num_boot: int = 200):
        samples = bench.samples
        keep = np.flatnonzero(~samples.for_pairs)
        keep = keep[np.argsort(samples.prompt_index[keep], kind="stable")]
        self.rewards = samples.reference_rewards(bench.num_dimensions)  # [P, n, m], `keep`'s order
        num_prompts, n, _ = self.rewards.shape
        self.rows = keep.reshape(num_prompts, n)
        self.ids = samples.response_ids
        self.prompts = bench.prompts
        self.prompt_index = samples.prompt_index
        self.tokenizer = bench.load_tokenizer()
        self.beta = bench.beta_eff
        self.boot = np.random.default_rng(0).integers(0, n, size=(num_boot, num_prompts, n))
        self.boot[0] = np.arange(n)  # row 0: the estimate itself
        self.base_logps = self.logps(bench.load_model())

    def batch(self, rows: np.ndarray, samples: StorySamples | None = None) -> SimpleNamespace:
        """Sample rows (indices into `samples`, default the benchmark's; all of one prompt) as a
        batch: the prompt's ids, then each response, right-padded, with masks."""
        ids, prompt_index = (
            (self.ids, self.prompt_index)
            if samples is None
            else (samples.response_ids, samples.prompt_index)
        )
        prompt = self.tokenizer(self.prompts[int(prompt_index[rows[0]])]).input_ids
        resp = torch.as_tensor(ids[rows], dtype=torch.long)  # [B, T], −1 after the end
        in_response = resp >= 0
        lp = len(prompt)
        seq = torch.cat([torch.tensor(prompt).expand(len(rows), lp), resp.clamp(min=0)], 1)
        head = torch.ones(len(rows), lp, dtype=torch.bool)
        return SimpleNamespace(
            sequences=seq,
            attention_mask=torch.cat([head, in_response], 1).long(),
            response_mask=torch.cat([torch.zeros_like(head), in_response], 1),
        )

    @torch.no_grad()
    def logps(self, model: torch.nn.Module, chunk: int = 256) -> np.ndarray:
        """[P, n] response log-probs of the reference draw under `model` as it is now."""
        was = model.training
        model.eval()
        out = np.zeros(self.rows.shape)
        for p, rows in enumerate(self.rows):
            for lo in range(0, len(rows), chunk):
                out[p, lo : lo + chunk] = response_logprobs(
                    model, self.batch(rows[lo : lo + chunk])
                )
        model.train(was)
        return out

    def tilt(self, policy_logps: np.ndarray, lam: Sequence[float]) -> tuple[float, float]:
        """How much of the policy's log-ratio ℓ is the optimum's tilt: the slope and correlation
        of ℓ regressed on ℓ* = λ·r/β within prompts (1 and 1 at the optimum)."""
        ell = policy_logps - self.base_logps
        opt = self.rewards @ np.asarray(lam, dtype=np.float64) / self.beta
        ell_c = ell - ell.mean(1, keepdims=True)
        opt_c = opt - opt.mean(1, keepdims=True)
        slope = float((ell_c * opt_c).sum() / (opt_c**2).sum())
        corr = float((ell_c * opt_c).sum() / np.sqrt((ell_c**2).sum() * (opt_c**2).sum()))
        return slope, corr

    def gain(self, policy_logps: np.ndarray, lam: Sequence[float]) -> dict:
        """G, its bootstrap SE, the policy's KL and ESS on the reference draw."""
        lam_r = self.rewards @ np.asarray(lam, dtype=np.float64)  # [P, n]
        ell = policy_logps - self.base_logps
        idx = self.boot
        take = lambda x: np.take_along_axis(x[None].repeat(len(idx), 0), idx, 2)  # noqa: E731
        lr, el = take(lam_r), take(ell)
        w = np.exp(el - el.max(-1, keepdims=True))
        w /= w.sum(-1, keepdims=True)
        v_pol = (w * (lr - self.beta * el)).sum(-1).mean(-1)
        s = lr / self.beta
        top = s.max(-1, keepdims=True)
        v_opt = (self.beta * (top[..., 0] + np.log(np.exp(s - top).mean(-1)))).mean(-1)
        v_0 = lr.mean(-1).mean(-1)
        g = (v_pol - v_0) / (v_opt - v_0)
        kl = (w * el).sum(-1).mean(-1)
        objectives = np.einsum("pn,pnm->m", w[0], self.rewards) / len(self.rewards)
        slope, corr = self.tilt(policy_logps, lam)
        return {
            "tilt_slope": slope,
            "tilt_corr": corr,
            "objectives_is": objectives.tolist(),
            "G_is": float(g[0]),
            "G_is_se": float(g[1:].std(ddof=1)),
            "kl_is": float(kl[0]),
            "ess_is_mean": float((1 / (w[0] ** 2).sum(-1)).mean()),
            "ess_is_min": float((1 / (w[0] ** 2).sum(-1)).min()),
        }
