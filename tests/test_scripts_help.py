"""Every experiment and benchmark script starts: `<script> --help` exits 0 with its usage.

The scripts run for minutes to hours, so the suite cannot run their READMEs' commands; this
catches what a refactor breaks first (an import, a moved helper, an argument parser). One
subprocess from the repository root runs each script as `python <script> --help` would
(`runpy` as `__main__`, its folder first on `sys.path`), so the heavy imports load once.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(
    p.relative_to(ROOT).as_posix()
    for folder in ("experiments", "bench")
    for p in (ROOT / folder).rglob("*.py")
    if 'if __name__ == "__main__":' in p.read_text()
)

RUNNER = """
import contextlib, io, json, runpy, sys, traceback
results = {}
for script in sys.argv[1:]:
    sys.argv = [script, "--help"]
    sys.path.insert(0, script.rsplit("/", 1)[0])
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            runpy.run_path(script, run_name="__main__")
        code = "returned without printing its usage"
    except SystemExit as stop:
        code = stop.code or 0
    except BaseException:
        code = traceback.format_exc()[-1500:]
    finally:
        sys.path.pop(0)
    results[script] = [code, "usage:" in out.getvalue()]
print(json.dumps(results))
"""


def test_the_scripts_are_found():
    assert {"experiments/optimum/optimum.py", "experiments/ceiling/ceiling.py"} <= set(SCRIPTS)
    assert "experiments/compare_aggregations/compare.py" in SCRIPTS and len(SCRIPTS) >= 12


@pytest.mark.slow
def test_every_script_prints_its_usage():
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
    done = subprocess.run(
        [sys.executable, "-c", RUNNER, *SCRIPTS],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads(done.stdout.strip().splitlines()[-1])
    failed = {s: r for s, r in results.items() if r != [0, True]}
    assert not failed, "\n\n".join(f"{s}: {code}" for s, (code, _) in failed.items())


def test_compare_cosine_decays_over_every_optimiser_step(tmp_path, monkeypatch):
    """`compare.py --cosine`: PPO's and RLOO's cosine schedule spans their run's optimiser steps
    (PPO 2 epochs × 128/32, RLOO 2 passes × 128/64 per iteration); other methods refuse it."""
    monkeypatch.syspath_prepend(str(ROOT / "experiments" / "compare_aggregations"))
    import compare

    def t_max(method: str, iterations: int):
        config = compare.config_for(2, method, 400, tmp_path, 32, iterations, cosine=True)
        return config["model"]["init_args"]["scheduler"]["init_args"]["T_max"]

    assert t_max("panacea_rloo", 240) == 240 * 4
    assert t_max("panacea_ppo", 120) == 120 * 8
    plain = compare.config_for(2, "panacea_rloo", 400, tmp_path, 32, 240)
    assert "scheduler" not in plain["model"]["init_args"]
    with pytest.raises(SystemExit):
        compare.main(["--cosine", "--methods", "dps", "--out", str(tmp_path)])


def test_compare_set_changes_the_recipe_and_refuses_unknown_keys(tmp_path, monkeypatch, capsys):
    """`compare.py --set KEY=VALUE`: the value (YAML) replaces the recipe's setting, and the
    optimiser-step count (hence `--cosine`'s schedule) follows it; a misspelt key or section is
    refused by name before anything trains."""
    monkeypatch.syspath_prepend(str(ROOT / "experiments" / "compare_aggregations"))
    import compare

    overrides = ["model.init_args.group_size=4", "data.init_args.batch_size=32"]
    overrides += ["model.init_args.optimizer.init_args.lr=5e-4"]
    config = compare.config_for(2, "panacea_rloo", 400, tmp_path, 32, 10, True, overrides)
    init = config["model"]["init_args"]
    assert init["group_size"] == 4 and config["data"]["init_args"]["batch_size"] == 32
    assert init["optimizer"]["init_args"]["lr"] == 5e-4
    assert init["scheduler"]["init_args"]["T_max"] == 10 * 2 * (32 * 4 // 64)
    for bad, says in [
        ("model.init_args.groupsize=4", "has no key 'groupsize'"),
        ("model.nothing.x=1", "no section 'model.nothing'"),
        ("group_size", "expected KEY=VALUE"),
    ]:
        with pytest.raises(ValueError, match=says):
            compare.config_for(2, "panacea_rloo", 400, tmp_path, 32, 10, False, [bad])
    with pytest.raises(SystemExit):
        compare.main(["--methods", "panacea_rloo", "--set", "x.y=1", "--out", str(tmp_path)])
    assert "no section 'x'" in capsys.readouterr().err

    # RLOO's recipe has no critic_lr: refused before PPO, the first method, trains
    def trains(*args):
        raise AssertionError("a method trained before every --set was checked")

    monkeypatch.setattr(compare, "run_panacea", trains)
    out = tmp_path / "never_written"
    command = ["--dims", "2", "--methods", "panacea_ppo", "panacea_rloo"]
    with pytest.raises(SystemExit):
        compare.main([*command, "--set", "model.init_args.critic_lr=0.002", "--out", str(out)])
    assert "panacea_rloo: --set" in capsys.readouterr().err and not out.exists()
