"""``tools/gpu_check.sh --dry-run``: the GPU check's whole plan on the CPU at tiny sizes, so that the
script runs unchanged the first time a GPU is at hand (about a minute here)."""

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import host  # noqa: E402

STEPS = ["probe", "cuda-tests", "engine-bench", "sampling-bench", "real-size"]


def test_gpu_check_dry_run(tmp_path):
    env = dict(os.environ, PYTHON=sys.executable)  # this interpreter: the one the tests run with
    res = subprocess.run(["bash", str(ROOT / "tools" / "gpu_check.sh"), "--dry-run", "--out", str(tmp_path)],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    reports = list(tmp_path.glob("gpu-check-*-dry-run.md"))
    assert len(reports) == 1, reports
    text = reports[0].read_text()
    with_host = host.find_comfyui() is not None
    for step in STEPS:
        row = re.search(rf"^\| {step} \| ([^|]+) \|", text, re.M)
        assert row, f"no row for {step}"
        if step in ("sampling-bench", "real-size") and not with_host:
            assert row.group(1).startswith("skipped"), row.group(1)
        else:
            assert row.group(1).strip() == "ok", f"{step}: {row.group(1)}"
    # what each step is there to show, as the report shows it
    assert re.search(r"bfloat16\s+bias\s+flash\s+fused\s+True\s+True", text)  # the probe's route table
    assert re.search(r"\d+ passed", text) and " failed" not in text.split("## cuda-tests")[1].split("##")[0]
    assert "chunked_all / foreign_all time" in text
    if with_host:
        for variant in ("attention_pytorch, one process, best of 1", "sub-quadratic attention", "foreign override calling through"):
            assert variant in text
        assert "SD3.5-medium-like depth 2" in text and "capture_all" in text
