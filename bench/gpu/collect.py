"""Merge the sections of `bench/gpu/check.sh` into one JSON file and print a summary.

    python bench/gpu/collect.py SECTIONS_DIR OUT.json [--device cuda --tiny 0 ...]

For each section NAME the folder holds NAME.meta.json (rc, seconds, limit), NAME.out (its
output), and NAME.json (its numbers) when it wrote any; `gpu_tests.xml` is pytest's JUnit XML.
A section's status is ok (rc 0), timeout (rc 124 or 137), skipped, or failed; a failed or timed
out one keeps the last 60 lines of its output.
"""

from __future__ import annotations

import argparse
import json
import time
import xml.etree.ElementTree as ET
from pathlib import Path

SECTIONS = [
    "install",
    "env",
    "gpu_tests",
    "fused",
    "adapter_overhead",
    "adapter_paths",
    "adapter_compiled",
    "dpo_step",
    "fsdp",
    "fsdp2",
]


def junit(path: Path) -> dict:
    """Counts and each test's outcome from pytest's JUnit XML."""
    tests: dict[str, str] = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        outcome = "passed"
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[child.tag]
                if outcome == "skipped":
                    outcome += ": " + (child.get("message") or "")
        tests[f"{case.get('classname')}::{case.get('name')}"] = outcome
    counts = {
        k: sum(v.split(":")[0] == k for v in tests.values())
        for k in ("passed", "failed", "error", "skipped")
    }
    return {"counts": counts, "tests": tests}


def section(folder: Path, name: str) -> dict:
    meta_path = folder / f"{name}.meta.json"
    if not meta_path.exists():
        return {"status": "missing"}
    record = json.loads(meta_path.read_text())
    rc = record.get("rc")
    if record.get("skipped"):
        record["status"] = "skipped" if rc in (0, None) else "failed"
    elif rc == 0:
        record["status"] = "ok"
    elif rc in (124, 137):
        record["status"] = "timeout"
    else:
        record["status"] = "failed"
    result = folder / f"{name}.json"
    if result.exists():
        try:
            record["result"] = json.loads(result.read_text())
        except json.JSONDecodeError as error:
            record["result_error"] = str(error)
    if name == "gpu_tests" and (folder / "gpu_tests.xml").exists():
        record["result"] = junit(folder / "gpu_tests.xml")
    out = folder / f"{name}.out"
    if record["status"] in ("failed", "timeout") and out.exists():
        record["output_tail"] = out.read_text(errors="replace").splitlines()[-60:]
    return record


def summary(sections: dict) -> list[str]:
    lines = []
    for name, record in sections.items():
        line = f"{name:18s} {record['status']}"
        result = record.get("result") or {}
        if name == "gpu_tests" and "counts" in result:
            line += f"  {result['counts']}"
        elif name == "fused" and "passed" in result:
            line += f"  fused == separate ops: {result['passed']}"
        elif name == "adapter_overhead" and "c_a" in result:
            line += f"  c/a {result['c_a']:.3f} (<= 1.10)  c/b {result['c_b']:.3f} (<= 1.00)"
        elif name in ("adapter_paths", "adapter_compiled") and "shapes" in result:
            for shape, numbers in result["shapes"].items():
                t = numbers["seconds"]
                line += f"  {shape}: " + ", ".join(
                    f"{k[2:]} {t[k] / t['b_peft_lora']:.2f}"
                    for k in ("c_composed", "c_fused")
                    if k in t
                )
                line += f", PEFT/base {t['b_peft_lora'] / t['a_frozen_base']:.2f}"
            line += " (× PEFT's step)"
        elif name == "dpo_step" and "ours" in result:
            ours, trl = result["ours"], result["trl"]
            line += (
                f"  tokens/s {ours['tokens_per_s']:.0f} vs TRL {trl['tokens_per_s']:.0f}; peak "
                f"{ours['peak'] / 2**20:.0f} vs {trl['peak'] / 2**20:.0f} MiB"
            )
            if ours.get("mfu") is not None:
                line += f"; MFU {100 * ours['mfu']:.1f} % vs {100 * trl['mfu']:.1f} %"
        elif name in ("fsdp", "fsdp2") and "passed" in result:
            line += f"  resumed to step {result['resumed']['global_step']}: {result['passed']}"
        lines.append(line)
    return lines


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sections", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", default="0")
    parser.add_argument("--budget", type=float, default=None)
    parser.add_argument("--elapsed", type=float, default=None)
    args = parser.parse_args(argv)
    sections = {name: section(args.sections, name) for name in SECTIONS}
    report = {
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "device": args.device,
        "tiny": args.tiny == "1",
        "budget_s": args.budget,
        "elapsed_s": args.elapsed,
        "sections": sections,
    }
    args.out.write_text(json.dumps(report, indent=2))
    print("\n".join(["gpu check summary:", *summary(sections), f"numbers: {args.out}"]))
    return report


if __name__ == "__main__":
    main()
