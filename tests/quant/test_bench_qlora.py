"""benchmarks/bench_qlora_gpu.py runs on the CPU with --dry-run (a tiny Llama shape): it writes its markdown and
JSON results, with each measured peak close to the estimate; without --dry-run it needs a GPU and says so."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_qlora_gpu.py"


def test_dry_run_writes_results(tmp_path):
    out = tmp_path / "qlora.md"
    subprocess.run([sys.executable, str(SCRIPT), "--dry-run", "--out", str(out)], check=True, capture_output=True)
    results = json.loads(out.with_suffix(".json").read_text())
    assert results["meta"]["device"] == "cpu" and len(results["rows"]) == 2
    for row in results["rows"]:
        assert row["dequantized"] > 0 and row["tokens_per_second"] > 0
        assert abs(row["error_peak"]) < 5, row
    assert "| tiny | lora r=4 | bf16 |" in out.read_text()


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without a GPU")
def test_without_a_gpu_the_full_run_is_refused(tmp_path):
    done = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path / "x.md")], capture_output=True,
                          text=True)
    assert done.returncode == 2 and "--dry-run" in done.stderr
