"""The ceiling study's off-tilt analysis (`experiments/ceiling/analysis.py`) on synthetic
log-ratios whose answer is known, and the `--set` form the comparison's README gives for the
adapter's layers."""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import stories_small

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def analysis(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "experiments" / "ceiling"))
    import analysis

    return analysis


def test_tilt_parts_splits_a_log_ratio_into_slope_and_residual(analysis):
    """ℓ = a·s + c_p + e with e uncorrelated with s within prompts: the slope is a, the residual
    is e centred, whatever the per-prompt constants c_p; the optimum's own tilt has G = 1."""
    rng = np.random.default_rng(0)
    rewards = rng.uniform(0, 0.1, size=(4, 500, 2))
    lam, beta = np.array([1.0, 0.0]), 0.05
    s = rewards @ lam / beta
    e = rng.normal(size=(4, 500))
    e -= e.mean(1, keepdims=True)
    s_c = s - s.mean(1, keepdims=True)
    e -= (e * s_c).sum() / (s_c**2).sum() * s_c  # exactly orthogonal to the centred tilt
    parts = analysis.tilt_parts(rewards, 0.6 * s + np.arange(4)[:, None] + e, lam, beta)
    assert parts["tilt_slope"] == pytest.approx(0.6)
    np.testing.assert_allclose(parts["off_tilt"], e, atol=1e-9)
    assert analysis.tilt_parts(rewards, s, lam, beta)["G_is"] == pytest.approx(1.0)


def test_held_out_r2_tells_a_word_signal_from_noise(analysis):
    """A target linear in the features is recovered on the prompts not fitted (R² near 1);
    noise independent of them is not (R² at or below 0)."""
    rng = np.random.default_rng(1)
    counts = rng.poisson(1.0, size=(8, 300, 20)).astype(float)
    signal = counts @ rng.normal(size=20)
    assert analysis.held_out_r2(counts, signal) > 0.99
    assert analysis.held_out_r2(counts, rng.normal(size=(8, 300))) < 0.02


def test_compare_set_reaches_the_adapters_layers(tmp_path, monkeypatch):
    """The README's `--set "model.init_args.policy.init_args.adapter.target_modules=[…]"` gives
    back the attention-and-MLP-only adapter, for every method built on panacea_dpo.yaml."""
    monkeypatch.syspath_prepend(str(ROOT / "experiments" / "compare_aggregations"))
    import compare

    config = compare.config_for(2, "panacea_ls", 400, tmp_path, 32, 120)
    adapter = config["model"]["init_args"]["policy"]["init_args"]["adapter"]
    assert adapter["target_modules"][-1] == "lm_head"
    layers = "[q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj]"
    compare.apply_overrides(
        config, [f"model.init_args.policy.init_args.adapter.target_modules={layers}"]
    )
    assert "lm_head" not in adapter["target_modules"] and len(adapter["target_modules"]) == 7


def test_shared_refuses_a_policy_not_saved_or_at_another_lambda(analysis, tmp_path):
    """`--shared` names what is missing (and what is saved), and refuses policies at two λ."""
    where = tmp_path / "logratios"
    where.mkdir()
    np.save(where / "dpo_r0_corner_step400.npy", np.zeros((2, 3), dtype=np.float32))
    np.save(where / "dpo_r0_centre_step400.npy", np.zeros((2, 3), dtype=np.float32))
    results = tmp_path / "results.jsonl"
    with pytest.raises(SystemExit, match=r"no saved policy .*dpo_r0_corner_step200.*saved: "):
        analysis.load_logratios(results, ["dpo_r0_corner@200"])
    with pytest.raises(SystemExit, match="one λ"):
        analysis.load_logratios(results, ["dpo_r0_corner@400", "dpo_r0_centre@400"])
    lam, ells = analysis.load_logratios(results, ["dpo_r0_corner@400"])
    assert lam.tolist() == [1.0, 0.0] and ells[0].shape == (2, 3)


@pytest.mark.slow
@pytest.mark.parametrize(
    "args, message",
    [
        (["--fresh", "8", "--fresh-seed", "0"], "--fresh-seed 0 is the benchmark's own draw"),
        (["--lam", "0.5", "0.5", "--shared", "rloo_r0_corner@240"], r"not \[0.5, 0.5\]"),
        (["--shared", "rloo_r0_corner@7"], "no saved policy"),
        (["--benchmark", "num_prompt=8"], r"--benchmark 'num_prompt=8': expected KEY=VALUE"),
    ],
)
def test_distill_refuses_bad_settings_before_sampling(args, message):
    """`distill.py` stops on a fit that would train on the evaluation's own stories, or on
    `--shared` policies it cannot compare with, before any model loads or any story is drawn."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PANACEA_DATA_DIR": str(ROOT / "missing")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
    done = subprocess.run(
        [sys.executable, str(ROOT / "experiments" / "ceiling" / "distill.py"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0 and re.search(message, done.stderr), done.stderr[-2000:]


@pytest.mark.parametrize(
    "item, message",
    [
        ("seed=3", "expected KEY=VALUE with KEY one of"),  # --fresh-seed's; the study's own
        ("num_prompts", "expected KEY=VALUE"),
        ("num_prompts=eight", "'eight' is not a number"),
    ],
)
def test_distill_benchmark_settings_refuse_what_they_cannot_pass_on(
    item, message, capsys, analysis
):
    import distill  # beside `analysis`, on the path the fixture adds

    parser = argparse.ArgumentParser(prog="distill.py")
    with pytest.raises(SystemExit):
        distill.benchmark_settings([item], parser)
    assert message in capsys.readouterr().err
    settings = distill.benchmark_settings(["num_prompts=8", "soft_labels=False"], parser)
    assert settings == {"num_prompts": 8, "soft_labels": False}


@pytest.mark.slow
def test_distill_fits_and_records_on_a_small_benchmark(tmp_path, tmp_path_factory, shared_data):
    """`distill.py` as a user runs it, on the tests' small benchmark: a --fresh draw, two
    evaluations, each a JSON line with G and its standard error."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PANACEA_DATA_DIR": str(shared_data)}
    env["PANACEA_CACHE_DIR"] = str(stories_small.cache_root(tmp_path_factory))
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
    small = [f"{k}={v}" for k, v in stories_small.SMALL.items() if k != "progress"]
    results = tmp_path / "distill.jsonl"
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "experiments" / "ceiling" / "distill.py"),
            "--benchmark",
            *small,
            "--steps",
            "1",
            "2",
            "--batch",
            "4",
            "--fresh",
            "16",
            "--results",
            str(results),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    records = [json.loads(line) for line in results.read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2]
    for record in records:
        assert record["fresh"] == 16 and record["lam"] == [1.0, 0.0]
        assert np.isfinite(record["G_is"]) and record["G_is_se"] > 0
    assert "step 2: G_is" in done.stdout


def test_training_beta_target_scores_like_an_overshot_gaussian_tilt(monkeypatch):
    """For a Gaussian tilt s = λ·r/β, the tilt a·s has value β·σ²·(a − a²/2) and KL a²σ²/2, so
    training at β_t = β/a aims at G = 1 − (1 − a)²: 1 at β_t = β, 0.9375 at β/1.25."""
    monkeypatch.syspath_prepend(str(ROOT / "experiments" / "ceiling"))
    import training_beta

    rng = np.random.default_rng(0)
    sigma, beta = 0.5, 0.05
    rewards = np.stack([sigma * beta * rng.standard_normal((4, 20_000)), np.zeros((4, 20_000))], -1)
    rows = training_beta.target_rows(rewards, beta, np.array([[1.0, 0.0]]), [beta, beta / 1.25])
    (_, _, g_same, kl_same), (_, _, g_low, kl_low) = rows
    assert g_same == pytest.approx(1.0)
    assert kl_same == pytest.approx(sigma**2 / 2, rel=0.03)
    assert g_low == pytest.approx(1 - 0.25**2, abs=0.01)
    assert kl_low == pytest.approx(1.25**2 * sigma**2 / 2, rel=0.03)
