"""`experiments/compare_aggregations/compare.py` as its README runs it, in a subprocess, on a tiny
budget: with `--ema` the table holds the averaged weights' row and the raw weights' row, swept on
the same draws."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_compare_with_ema_sweeps_the_average_and_the_raw_weights(shared_data, tmp_path):
    env = {**os.environ, "PANACEA_DATA_DIR": str(shared_data), "OMP_NUM_THREADS": "1"}
    env.update(HF_HUB_OFFLINE="1", WANDB_MODE="offline", WANDB_SILENT="true")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
    out = tmp_path / "compare"
    command = [
        sys.executable,
        "experiments/compare_aggregations/compare.py",
        *("--dims", "2", "--methods", "panacea_rloo", "--iterations", "1"),
        *("--samples-per-prompt", "1", "--ema", "0.9", "--cosine", "--out", str(out)),
    ]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, (done.stdout + done.stderr)[-6000:]
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [r["method"] for r in rows] == [  # (the base model's row comes with panacea_ls)
        "panacea_rloo [cosine lr, ema 0.9]",  # the label names every change to the recipe
        "panacea_rloo [cosine lr, ema 0.9]: raw weights",
    ]
    # one iteration is 4 optimiser steps: the average (1 − 0.1·… of the way) is not the raw
    assert rows[0]["mean_regret"] != rows[1]["mean_regret"]
    assert rows[0]["steps"] == rows[1]["steps"] == "4"
    assert list(out.rglob("pareto/final_raw_weights.csv"))
    assert (out / "front_m2.png").stat().st_size > 0


@pytest.mark.parametrize(("ema", "expected"), [(None, [0.995]), (0.9, [0.9]), (0.0, [])])
def test_ema_keeps_replaces_or_drops_the_recipes_average(tmp_path, monkeypatch, ema, expected):
    """RLOO's recipe ships an average (decay 0.995): `--ema D` replaces it, `--ema 0` drops it."""
    monkeypatch.syspath_prepend(str(ROOT / "experiments" / "compare_aggregations"))
    import compare

    config = compare.config_for(2, "panacea_rloo", 0, tmp_path, 1, iterations=1, ema=ema)
    decays = [
        c["init_args"]["decay"]
        for c in config["trainer"]["callbacks"]
        if c["class_path"] == compare.EMA_CLASS
    ]
    assert decays == expected
    assert compare.ema_decay(config["trainer"]["callbacks"]) == (expected[0] if expected else None)


def test_repeated_set_keeps_every_setting(monkeypatch):
    """`--set A=1 --set B=2` (the README's form) keeps both; it once kept only the last."""
    monkeypatch.syspath_prepend(str(ROOT / "experiments" / "compare_aggregations"))
    import compare

    args = compare.build_parser().parse_args(
        ["--set", "model.init_args.kl_coef=0.04", "--set", "seed_everything=1", "trainer.x=2"]
    )
    assert args.overrides == ["model.init_args.kl_coef=0.04", "seed_everything=1", "trainer.x=2"]
