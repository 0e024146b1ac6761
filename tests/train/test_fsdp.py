"""``torchrun --nproc_per_node 2 -m minift.train ... --shard fsdp`` on the CPU (gloo), against one process with the
same global batch (2 × ``--batch-size 4`` vs 1 × ``--batch-size 8``): the data order, the targets each mean loss
is divided by and the updates are then the same; only the order of the gradient sums differs.

Tolerances: fp32 weights agree to ``atol=1e-5`` (measured: ≤ 6e-8 after 6-24 AdamW steps at lr 1e-3; one update
moves a weight by about lr, so 1e-5 is 1% of one step: an extra or missing step, a wrong shard or a wrong reduction
is a thousand times larger) and the metrics and validation history are equal. Under ``--precision bf16`` FSDP
gathers every parameter in bf16 (norms included) where one process's autocast keeps some in fp32: a different bf16
run, so it is held to bf16's own distance from fp32, measured by the same runs. No dropout: a dropout mask drawn
by two processes is not the one process's mask.
"""
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from kit import cli_assets
from safetensors.torch import load_file

from minift.memory.estimate import Setup, estimate
from minift.models import load_pretrained
from minift.models.presets import resolve_model
from minift.peft.config import Method
from minift.train.__main__ import main
from minift.train.checkpoint import find_checkpoint

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """(model folder, task spec): the tiny BERT classifier of ``kit.cli_assets`` without dropout."""
    return cli_assets(tmp_path_factory.mktemp("fsdp-assets"), dropout=0.0)


def args(assets, out, *extra) -> list:
    model, task = assets
    return ["--task", task, "--model", str(model), "--max-length", "32", "--lr", "1e-3", "--plot", "false",
            "--device", "cpu", "--log-every", "1", "--output-dir", str(out), *extra]


def torchrun(argv: list) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             "-m", "minift.train", *argv], env=ENV, cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def finished(process: subprocess.Popen) -> str:
    output = process.communicate(timeout=600)[0]
    assert process.returncode == 0, output[-4000:]
    return output


def summary(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())


def records(run: Path, kind: str) -> list:
    return [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["type"] == kind]


def losses(run: Path) -> list:
    return [r["loss"] for r in records(run, "train")]


def checkpoint(run: Path) -> tuple:
    folder = find_checkpoint(run)
    return load_file(folder / "trainable.safetensors"), load_file(folder / "optimizer.safetensors")


def assert_same_run(a: Path, b: Path, atol: float = 1e-5) -> None:
    """Same steps, validation history, test metrics, training losses and final weights and AdamW states."""
    one, two = summary(a), summary(b)
    assert one["steps"] == two["steps"] and one["test"] == two["test"]
    assert [(r["step"], r["accuracy"]) for r in records(a, "eval")] == [(r["step"], r["accuracy"])
                                                                        for r in records(b, "eval")]
    assert one["best_step"] == two["best_step"] and one["best_validation"] == two["best_validation"]
    torch.testing.assert_close(losses(a), losses(b), atol=1e-5, rtol=0)
    for x, y in zip(checkpoint(a), checkpoint(b)):
        assert x.keys() == y.keys()
        for name in x:
            torch.testing.assert_close(x[name].float(), y[name].float(), atol=atol, rtol=0, msg=name)


def shard_bytes(folder: Path, processes: int) -> list:
    """Each process's bytes of the model saved in ``folder`` when every parameter is split on dim 0 by
    ``torch.chunk`` (FSDP2's ``Shard(0)``; a process past the last chunk holds none)."""
    model = load_pretrained(folder, head="classification")
    per = [0] * processes
    for p in model.parameters():
        for index, part in enumerate(torch.chunk(p.detach(), processes, dim=0)):
            per[index] += part.numel() * p.element_size()
    return per


def estimated_bytes(assets, method: Method) -> int:
    """``minift.memory``'s weights per GPU of 2 under --shard fsdp, for the tiny model and ``method``."""
    setup = Setup(gpus=2, shard="fsdp", device="cpu", head="classification", max_length=32)
    return estimate(resolve_model(str(assets[0]))[0], method, setup).weights


def test_full_fsdp_matches_one_process(assets, tmp_path):
    """Full fine-tuning with --grad-accum 2 and gradient checkpointing: the 2-process FSDP run is the 1-process run;
    each process holds half the parameters; best/ is a whole single-process model folder."""
    extra = ["--method", "full", "--grad-accum", "2", "--gradient-checkpointing", "true", "--max-steps", "6",
             "--eval-every", "3"]
    run = torchrun(args(assets, tmp_path / "fsdp", "--batch-size", "4", "--shard", "fsdp", *extra))
    finished(run)
    assert main(args(assets, tmp_path / "one", "--batch-size", "8", *extra)) == 0
    assert_same_run(tmp_path / "fsdp", tmp_path / "one")

    two, one = summary(tmp_path / "fsdp"), summary(tmp_path / "one")
    assert (two["processes"], two["shard"], one["processes"], one["shard"]) == (2, "fsdp", 1, "none")
    assert two["param_bytes_per_process"] == shard_bytes(tmp_path / "one" / "best", 2)
    assert sum(two["param_bytes_per_process"]) == one["param_bytes_per_process"][0]
    assert max(two["param_bytes_per_process"]) / one["param_bytes_per_process"][0] == pytest.approx(0.5, abs=0.01)
    assert estimated_bytes(assets, Method("full")) == max(two["param_bytes_per_process"])  # the estimator's GPU 0

    # best/ was gathered whole by process 0: the same files a single process writes
    gathered = load_pretrained(tmp_path / "fsdp" / "best", head="classification").state_dict()
    alone = load_pretrained(tmp_path / "one" / "best", head="classification").state_dict()
    assert gathered.keys() == alone.keys()
    for name in alone:
        torch.testing.assert_close(gathered[name], alone[name], atol=1e-5, rtol=0, msg=name)


def wait_for_step(process: subprocess.Popen, run: Path, step: int) -> None:
    deadline = time.time() + 300
    log = run / "metrics.jsonl"
    while time.time() < deadline and process.poll() is None:
        if log.exists() and any(f'"step": {step},' in line and '"train"' in line
                                for line in log.read_text().splitlines()):
            return
        time.sleep(0.05)
    raise AssertionError(f"no training step {step} logged: {process.communicate()[0][-3000:]}")


def test_lora_killed_then_resumed_by_two_or_one_process(assets, tmp_path, capsys):
    """SIGTERM to torchrun mid-run: a checkpoint; --resume with 2 processes, or with 1 process and --batch-size 8,
    ends as the uninterrupted 1-process LoRA run; 1 process with --batch-size 4 is refused."""
    extra = ["--method", "lora", "--lora-dropout", "0", "--epochs", "2", "--eval-every", "6"]
    killed = tmp_path / "killed"
    run = torchrun(args(assets, killed, "--batch-size", "4", "--shard", "fsdp", *extra))
    wait_for_step(run, killed, 2)
    run.send_signal(signal.SIGTERM)  # torchrun passes it to both processes: they checkpoint at the next step
    output = run.communicate(timeout=300)[0]
    stopped = json.loads((find_checkpoint(killed) / "state.json").read_text())["loop"]
    assert 2 <= stopped["step"] < 24, output[-3000:]  # 12 steps per epoch, 2 epochs
    alone = tmp_path / "alone"
    shutil.copytree(killed, alone)

    assert main(["--resume", str(alone), *args(assets, alone, "--batch-size", "4", *extra)]) == 2
    error = " ".join(capsys.readouterr().err.split())
    assert "--batch-size 4 → 4 with 2 → 1 process(es)" in error and "resume with --batch-size 8" in error
    assert main(["--resume", str(alone), *args(assets, alone, "--batch-size", "8", *extra)]) == 0
    finished(torchrun(["--resume", str(killed), *args(assets, killed, "--batch-size", "4", "--shard", "fsdp",
                                                       *extra)]))
    assert main(args(assets, tmp_path / "one", "--batch-size", "8", *extra)) == 0

    assert_same_run(killed, tmp_path / "one")
    assert_same_run(alone, tmp_path / "one")
    assert summary(alone)["processes"] == 1 and summary(killed)["shard"] == "fsdp"
    assert estimated_bytes(assets, Method.of("lora", dropout=0.0)) == max(summary(killed)["param_bytes_per_process"])


def distance(a: Path, b: Path) -> float:
    """The largest difference of the training losses and of the final trainable weights of two runs."""
    loss = max(abs(x - y) for x, y in zip(losses(a), losses(b)))
    wa, wb = checkpoint(a)[0], checkpoint(b)[0]
    return max(loss, *((wa[k].float() - wb[k].float()).abs().max().item() for k in wa))


def test_adapter_bf16_under_fsdp_is_within_bf16_rounding(assets, tmp_path):
    """An adapter under --precision bf16 (FSDP gathers in bf16, reduces in fp32): as close to the 1-process bf16
    run as bf16 itself is to fp32, and not an fp32 run."""
    extra = ["--method", "adapter", "--max-steps", "4"]
    finished(torchrun(args(assets, tmp_path / "fsdp", "--batch-size", "4", "--shard", "fsdp", "--precision", "bf16",
                           *extra)))
    assert main(args(assets, tmp_path / "bf16", "--batch-size", "8", "--precision", "bf16", *extra)) == 0
    assert main(args(assets, tmp_path / "fp32", "--batch-size", "8", *extra)) == 0
    rounding = distance(tmp_path / "bf16", tmp_path / "fp32")
    assert 0 < distance(tmp_path / "fsdp", tmp_path / "bf16") <= 3 * rounding
    assert distance(tmp_path / "fsdp", tmp_path / "fp32") > 0
    assert summary(tmp_path / "fsdp")["test"].keys() == summary(tmp_path / "bf16")["test"].keys()
    assert all(math.isfinite(v) for v in summary(tmp_path / "fsdp")["test"].values())


def test_shard_none_under_torchrun_is_refused(assets, tmp_path):
    run = torchrun(args(assets, tmp_path / "none", "--batch-size", "4", "--shard", "none", "--max-steps", "1"))
    output = " ".join(run.communicate(timeout=300)[0].split())
    assert run.returncode != 0
    assert "--shard none with 2 processes: each would train alone" in output
    assert not (tmp_path / "none" / "checkpoints").exists()
