"""The speed scripts run on the CPU: the throughput benchmark's smoke mode (a tiny model and task, both
libraries, epoch and steady state) and the GPU check's dry run (tiny random shapes, every step, result files)."""
import json
import subprocess
import sys
from pathlib import Path

import kit
import pytest

ROOT = Path(__file__).resolve().parents[2]

pytest.importorskip("transformers")
pytest.importorskip("peft")


def test_bench_throughput_quick(tmp_path):
    assets = tmp_path / "assets"
    kit.cli_assets(assets, n_train=48, n_test=16)
    task = f"file:{assets / 'train.csv'},{assets / 'dev.csv'},{assets / 'test.csv'}"
    out = tmp_path / "bench.json"
    subprocess.run([sys.executable, "benchmarks/bench_throughput.py", "--quick", "--task", task, "--model",
                    str(assets / "model"), "--methods", "lora", "--precisions", "fp32", "--batch-size", "8",
                    "--max-length", "32", "--seq-len", "16", "--json", str(out)], cwd=ROOT, check=True, timeout=300)
    result = json.loads(out.read_text())["lora:fp32"]
    for library in ("minift", "hf"):
        epoch = result["epoch"][library]
        assert epoch["steps"] == 3 and epoch["examples"] == 24 and epoch["samples_per_s"] > 0
        assert epoch["padded_tokens"] >= epoch["real_tokens"] > 0 and 0 <= epoch["padding"] < 1
        assert 0 <= epoch["accuracy"] <= 1 and epoch["peak_rss_mib"] > 0 and epoch["precision"] == "fp32"
        assert result["steady"][library]["step_ms"] > 0
    assert result["steady"]["batch"] == [8, 16] and result["steady"]["ratio"] > 0


def test_gpu_check_dry_run(tmp_path):
    out = tmp_path / "gpu"
    done = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--dry-run", "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stdout + done.stderr
    summary = (out / "summary.md").read_text()
    assert "skipped (GPU only)" in summary and "timed out" not in summary
    for shape in ("bert-base", "llama-1b"):
        result = json.loads((out / f"throughput_{shape}.json").read_text())["lora:bf16"]["steady"]
        assert result["minift"]["tokens_per_s"] > 0 and result["hf"]["tokens_per_s"] > 0
    assert (out / "pytest_cuda.txt").exists() and (out / "qlora.md").exists()
