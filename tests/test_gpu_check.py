"""The GPU check (`bench/gpu/check.sh`): its CPU dry run writes every section's numbers, and on
a GPU (marked `gpu`) the fused adapter function equals the separate ops in bf16 and under
autocast, values and gradients.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from panacea_pl.layers.layer import PanaceaLinear

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "bench" / "gpu"))

import collect  # noqa: E402
import fused_check  # noqa: E402


def test_fused_check_passes_on_cpu_and_fails_on_a_wrong_path(monkeypatch):
    report = fused_check.check("cpu", (32, 32, 48), tol=2.0**-6)
    assert report["passed"] and len(report["cases"]) == 6
    tensors = report["cases"]["autocast/per_sequence_lambda"]["tensors"]
    assert set(tensors) == {"y", "x", "panacea_U", "panacea_V", "panacea_sigma", "panacea_scale"}
    # a separate-ops path that halves the singular values is caught
    original = PanaceaLinear._forward_composed
    monkeypatch.setattr(
        PanaceaLinear, "_forward_composed", lambda self, x, d: original(self, x, d * 0.5)
    )
    assert not fused_check.check("cpu", (32, 32, 48), tol=2.0**-6)["passed"]


def test_fused_check_judges_against_fp64_where_the_separate_ops_are_no_yardstick():
    """The H200's numbers for ∂s with one λ per sequence (bf16, 2026-12-04): the separate ops
    are 63 % off fp64, the fused path 1 %: it passes; a fused path that far off would not."""
    tol = 2.0**-6
    h200 = {"rel_diff": 0.622, "rel_err_fused": 0.0105, "rel_err_separate": 0.633}
    assert fused_check.passes(h200, tol)
    assert not fused_check.passes({**h200, "rel_err_fused": 1.3}, tol)
    # where the separate ops are accurate, the two paths must agree within tol
    accurate = {"rel_diff": 0.02, "rel_err_fused": 0.005, "rel_err_separate": 0.005}
    assert not fused_check.passes(accurate, tol)
    assert fused_check.passes({**accurate, "rel_diff": 0.004}, tol)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_fused_function_equals_separate_ops_on_cuda():
    report = fused_check.check("cuda", (8 * 512, 2048, 5632), tol=2.0**-6)
    failed = [name for name, case in report["cases"].items() if not case["passed"]]
    assert not failed, json.dumps({n: report["cases"][n] for n in failed}, indent=1)[:4000]


@pytest.mark.slow
@pytest.mark.skipif(
    os.environ.get("PANACEA_GPU_DRY_RUN") != "1",
    reason="the whole GPU check on CPU takes 2-4 minutes: `make gpu-dry-run` runs it",
)
def test_cpu_dry_run_writes_every_section(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT / "src"), env.get("PYTHONPATH", "")])
    env.pop("OUT", None)
    script = REPO_ROOT / "bench" / "gpu" / "check.sh"
    done = subprocess.run(
        ["bash", str(script), "--device", "cpu", "--tiny", "--out", str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    sections = report["sections"]
    assert list(sections) == collect.SECTIONS
    assert sections["install"]["status"] == "skipped"  # this venv has every package
    for name in collect.SECTIONS[2:]:
        assert sections[name]["status"] == "ok", (name, sections[name].get("output_tail"))
    torch_version = sections["env"]["result"]["packages"]["torch"]
    assert torch_version.split("+")[0] == torch.__version__.split("+")[0]
    counts = sections["gpu_tests"]["result"]["counts"]
    assert counts["failed"] == counts["error"] == 0 and counts["skipped"] >= 2  # no CUDA here
    assert sections["fused"]["result"]["passed"] is True
    overhead = sections["adapter_overhead"]["result"]
    assert overhead["c_a"] > 0 and overhead["c_b"] > 0 and overhead["config"]["size"] == "tiny"
    paths = sections["adapter_paths"]["result"]["shapes"]["2x16"]["seconds"]
    assert set(paths) >= {"a_frozen_base", "b_peft_lora", "c_fused", "c_composed_per_sequence"}
    compiled = sections["adapter_compiled"]["result"]
    assert compiled["config"]["compile"] == "aot_eager"
    assert set(compiled["shapes"]["2x16"]["seconds"]) == {"a_frozen_base", "b_peft_lora", "c_fused"}
    dpo = sections["dpo_step"]["result"]
    for side in ("ours", "trl"):
        assert dpo[side]["tokens_per_s"] > 0 and dpo[side]["peak"] > 0
        assert dpo[side]["mfu"] is None  # no peak FLOP/s is assumed on CPU
    assert sections["fsdp"]["result"]["passed"] is True
    fsdp2 = sections["fsdp2"]["result"]
    assert fsdp2["passed"] is True and fsdp2["strategy"] == "FSDP2Strategy"  # runs on CPU too
    assert (tmp_path / "gpu_check.log").read_text().count("=== ") >= 14


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["none", "aot_eager"])
def test_adapter_paths_runs_on_cpu_eager_and_compiled(tmp_path, backend):
    """`adapter_paths.py` as check.sh runs it (tiny sizes): eager, every contender with both
    kinds of λ; through torch.compile, a, b and ours fused only, each with a profile."""
    out = tmp_path / "paths.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT / "src"), env.get("PYTHONPATH", "")])
    done = subprocess.run(
        [sys.executable, "bench/gpu/adapter_paths.py", "--device", "cpu", "--size", "tiny"]
        + ["--shapes", "2x16", "--steps", "1", "--compile", backend, "--json", str(out)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    shape = json.loads(out.read_text())["shapes"]["2x16"]
    wanted = {"a_frozen_base", "b_peft_lora", "c_fused"}
    if backend == "none":
        wanted |= {"c_composed", "c_fused_per_sequence", "c_composed_per_sequence"}
    assert set(shape["seconds"]) == wanted and all(t > 0 for t in shape["seconds"].values())
    assert set(shape["profile"]) == wanted - {"c_fused_per_sequence", "c_composed_per_sequence"}
    assert ("compile (aot_eager) and warm-up" in done.stdout) == (backend == "aot_eager")


def test_collect_marks_failures_and_timeouts(tmp_path):
    (tmp_path / "fused.meta.json").write_text('{"rc": 1, "seconds": 1.0, "limit_s": 60}')
    (tmp_path / "fused.out").write_text("line\n" * 100 + "Traceback: boom\n")
    (tmp_path / "dpo_step.meta.json").write_text('{"rc": 124, "seconds": 60.0, "limit_s": 60}')
    report = collect.main([str(tmp_path), str(tmp_path / "out.json")])
    sections = report["sections"]
    assert sections["fused"]["status"] == "failed"
    assert sections["fused"]["output_tail"][-1] == "Traceback: boom"
    assert len(sections["fused"]["output_tail"]) == 60
    assert sections["dpo_step"]["status"] == "timeout" and sections["env"]["status"] == "missing"
    assert json.loads((tmp_path / "out.json").read_text())["sections"]["fused"]["rc"] == 1
