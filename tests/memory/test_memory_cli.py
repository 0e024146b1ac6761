"""``python -m minift.memory``: output, JSON, real checkpoints, and bad input."""
import json
import subprocess
import sys

import pytest
import torch

from minift.memory.__main__ import main, parse_gpu
from minift.memory.estimate import Setup, estimate
from minift.memory.params import Method, count_params
from minift.memory.presets import resolve_model


def test_params_only(capsys):
    assert main(["--params", "3e9", "--batch-size", "2"]) == 0
    out = capsys.readouterr().out
    assert "assumed Llama-3-style decoder for 3e+09 parameters" in out
    for word in ("full", "lora r=8", "adapter m=64", "prompt n=20", "peak allocated", "optimizer states",
                 "autocast copies", "logits buffers", "activations / layer", "Korthikanti"):
        assert word in out


def test_json_matches_the_api(capsys):
    assert main(["--model", "llama-3.2-3b", "--json", "--batch-size", "2", "--precision", "mixed-bf16"]) == 0
    data = json.loads(capsys.readouterr().out)
    names = [m["method"] for m in data["methods"]]
    assert names == ["full", "lora r=8", "adapter m=64 (houlsby)", "prompt n=20"]  # no biases: no BitFit
    config = resolve_model("llama-3.2-3b")[0]
    expected = estimate(config, Method("lora"), Setup(batch_size=2, precision="mixed-bf16"))
    assert data["methods"][1]["peak"] == expected.peak
    assert data["methods"][1]["autocast_copies"] > 0
    assert data["setup"]["precision"] == "mixed-bf16"


def test_gpu_fit_and_largest_batch(capsys):
    assert main(["--model", "llama-3.2-1b", "--method", "lora", "--gpu", "24GB", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["gpu"]["bytes"] == 24 * 10**9
    assert data["gpu"]["fits"]["lora r=8"] and data["gpu"]["largest_batch"]["lora r=8"] >= 1


def test_nothing_fits(capsys):
    assert main(["--model", "llama-3-8b", "--gpu", "8GB"]) == 1
    err = capsys.readouterr().err
    assert "nothing fits on a 7.45 GiB GPU" in err and "--grad-checkpointing" in err


def test_minilm_folder(minilm_dir, capsys):
    assert main(["--model", str(minilm_dir), "--json", "--seq-len", "128", "--batch-size", "32"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [m["method"] for m in data["methods"]][3] == "bitfit"
    config = resolve_model(str(minilm_dir))[0]
    assert data["methods"][0]["params_total"] == count_params(config, "classification", Method()).total


def test_smollm2_gguf(smollm2_gguf, capsys):
    gguf = pytest.importorskip("gguf")
    assert main(["--model", str(smollm2_gguf), "--json", "--method", "full"]) == 0
    data = json.loads(capsys.readouterr().out)
    reader = gguf.GGUFReader(str(smollm2_gguf))
    in_file = sum(int(t.n_elements) for t in reader.tensors)  # tied: no output.weight in the file
    assert data["methods"][0]["params_total"] == in_file


@pytest.mark.parametrize("argv,message", [
    (["--model", "llama-9b"], "unknown model 'llama-9b'"),
    (["--model", "bert-base", "--seq-len", "1000"], "positions"),
    (["--model", "bert-base", "--gpu", "lots"], "--gpu 'lots' is not a memory size"),
    (["--model", "bert-base", "--batch-size", "0"], "batch-size must be a positive integer"),
    (["--params", "1e3"], "outside the range"),
    (["--model", "bert-base", "--method", "lora", "--lora-r", "0"], "lora-r must be a positive integer"),
])
def test_bad_input(argv, message, capsys):
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_config_file_errors(tmp_path, capsys):
    (tmp_path / "config.json").write_text("{not json")
    assert main(["--model", str(tmp_path)]) == 2
    assert "not a valid JSON config" in capsys.readouterr().err
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "t5", "d_model": 512}))
    assert main(["--model", str(tmp_path)]) == 2
    assert "unknown model_type 't5'" in capsys.readouterr().err
    assert main(["--model", str(tmp_path / "nothing")]) == 2


def test_parse_gpu():
    assert parse_gpu("80GB") == 80 * 10**9
    assert parse_gpu("24 GiB") == 24 * 2**30
    assert parse_gpu("40") == 40 * 10**9


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown without a GPU")
def test_profile_without_cuda(capsys):
    assert main(["--model", "bert-base", "--method", "lora", "--profile"]) == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err


def test_module_entry_point():
    out = subprocess.run([sys.executable, "-m", "minift.memory", "--model", "gpt2", "--method", "full", "--json"],
                         capture_output=True, text=True, check=True).stdout
    assert json.loads(out)["methods"][0]["params_total"] == 124_439_808
