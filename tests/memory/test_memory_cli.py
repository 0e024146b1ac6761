"""``python -m minift.memory``: output, JSON, real checkpoints, and bad input."""
import json
import subprocess
import sys

import pytest
import torch

from minift.memory.__main__ import main, parse_gpu
from minift.memory.estimate import Setup, estimate
from minift.memory.params import model_facts
from minift.models.presets import PRESETS, resolve_model
from minift.peft.config import Method


def test_params_only(capsys):
    assert main(["--params", "3e9", "--batch-size", "2"]) == 0
    out = capsys.readouterr().out
    assert "assumed Llama-3-style decoder for 3e+09 parameters" in out
    for word in ("full", "lora r=8", "adapter m=64", "prompt n=20", "peak allocated", "optimizer states",
                 "autocast copies", "logits buffers", "activations / layer", "Korthikanti"):
        assert word in out


def test_json_matches_the_api(capsys):
    assert main(["--model", "llama-3.2-3b", "--json", "--batch-size", "2", "--precision", "bf16"]) == 0
    data = json.loads(capsys.readouterr().out)
    names = [m["method"] for m in data["methods"]]
    assert names == ["full", "lora r=8", "adapter m=64 (houlsby)", "prompt n=20"]  # no biases: no BitFit
    config = resolve_model("llama-3.2-3b")[0]
    expected = estimate(config, Method("lora"), Setup(batch_size=2, precision="bf16"))
    assert data["methods"][1]["peak"] == expected.peak
    assert data["methods"][1]["autocast_copies"] > 0  # bf16 is autocast, as in minift.train
    assert data["setup"]["precision"] == "bf16"


def test_old_spellings_are_aliases(capsys):
    """--seq-len, --grad-accumulation, --grad-checkpointing and mixed-bf16 give what the new names give."""
    new = ["--model", "gpt2", "--json", "--method", "lora", "--max-length", "128", "--grad-accum", "2",
           "--gradient-checkpointing", "--precision", "bf16"]
    old = ["--model", "gpt2", "--json", "--method", "lora", "--seq-len", "128", "--grad-accumulation", "2",
           "--grad-checkpointing", "true", "--precision", "mixed-bf16"]
    outputs = []
    for argv in (new, old):
        assert main(argv) == 0
        outputs.append(json.loads(capsys.readouterr().out))
    assert outputs[0] == outputs[1]
    assert outputs[0]["setup"]["gradient_checkpointing"] is True and outputs[0]["setup"]["grad_accum"] == 2
    assert main(["--model", "gpt2", "--json", "--method", "full", "--gradient-checkpointing", "false"]) == 0
    assert json.loads(capsys.readouterr().out)["setup"]["gradient_checkpointing"] is False


def test_method_options_are_minift_peft_fields(capsys):
    """--lora-*, --adapter-*, --prompt-* and --train-head build the same Method the API takes."""
    argv = ["--model", "roberta-base", "--json", "--max-length", "128", "--method", "lora", "--method", "adapter",
            "--method", "prompt", "--lora-r", "4", "--lora-alpha", "8", "--lora-dropout", "0", "--lora-targets",
            "query,key,value", "--adapter-reduction-factor", "16", "--adapter-placement", "pfeiffer",
            "--adapter-activation", "gelu", "--prompt-length", "7", "--prompt-init", "random", "--train-head", "false",
            "--precision", "fp32"]
    assert main(argv) == 0
    data = json.loads(capsys.readouterr().out)
    config, setup = resolve_model("roberta-base")[0], Setup(max_length=128)
    methods = [Method.of("lora", False, r=4, alpha=8, dropout=0.0, targets=["query", "key", "value"]),
               Method.of("adapter", False, reduction_factor=16, placement="pfeiffer", activation="gelu"),
               Method.of("prompt", False, length=7, init="random")]
    assert [m["method"] for m in data["methods"]] == [m.label() for m in methods]
    assert [m["peak"] for m in data["methods"]] == [estimate(config, m, setup).peak for m in methods]
    assert data["methods"][0]["params_trainable"] == 12 * 3 * 4 * (768 + 768)  # no head: --train-head false


def test_gpu_fit_and_largest_batch(capsys):
    assert main(["--model", "llama-3.2-1b", "--method", "lora", "--gpu", "24GB", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["gpu"]["bytes"] == 24 * 10**9
    assert data["gpu"]["fits"]["lora r=8"] and data["gpu"]["largest_batch"]["lora r=8"] >= 1


def test_nothing_fits(capsys):
    assert main(["--model", "llama-3-8b", "--gpu", "8GB"]) == 1
    err = capsys.readouterr().err
    assert "nothing fits on a 7.45 GiB GPU" in err and "--gradient-checkpointing" in err


def test_minilm_folder(minilm_dir, capsys):
    assert main(["--model", str(minilm_dir), "--json", "--max-length", "128", "--batch-size", "32"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [m["method"] for m in data["methods"]][3] == "bitfit"
    config = resolve_model(str(minilm_dir))[0]
    assert data["methods"][0]["params_total"] == model_facts(config, "classification", Method()).params.total


def test_minilm_folder_without_flags(minilm_dir, capsys):
    """The default 512 tokens fill MiniLM's positions: the prompt row says it cannot run, the others answer."""
    assert main(["--model", str(minilm_dir)]) == 0
    out = capsys.readouterr().out
    assert "prompt n=20 cannot run" in out and "exceeds max_position_embeddings 512" in out


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_without_flags(name, capsys):
    """Every preset answers with no other flag (issue 14); a method that cannot run is a row, not exit 2."""
    assert main(["--model", name, "--json"]) == 0
    methods = json.loads(capsys.readouterr().out)["methods"]
    failed = {m["method"]: m["error"] for m in methods if "error" in m}
    config = resolve_model(name)[0]
    short = config.max_position_embeddings < 512 + 20 + 3  # BERT 512, RoBERTa 514 positions: no room for a prompt
    assert list(failed) == (["prompt n=20"] if short else [])
    assert all("peak" in m for m in methods if "error" not in m) and len(methods) - len(failed) >= 3


def test_smollm2_gguf(smollm2_gguf, capsys):
    gguf = pytest.importorskip("gguf")
    assert main(["--model", str(smollm2_gguf), "--json", "--method", "full"]) == 0
    data = json.loads(capsys.readouterr().out)
    reader = gguf.GGUFReader(str(smollm2_gguf))
    in_file = sum(int(t.n_elements) for t in reader.tensors)  # tied: no output.weight in the file
    assert data["methods"][0]["params_total"] == in_file


@pytest.mark.parametrize("argv,message", [
    (["--model", "llama-9b"], "unknown model 'llama-9b'"),
    (["--model", "bert-base", "--max-length", "1000"], "exceeds max_position_embeddings 512"),
    (["--model", "bert-base", "--gpu", "lots"], "--gpu 'lots' is not a memory size"),
    (["--model", "bert-base", "--batch-size", "0"], "batch-size must be a positive integer"),
    (["--params", "1e3"], "outside the range"),
    (["--model", "bert-base", "--method", "lora", "--lora-r", "0"], "LoRA r must be a positive integer"),
    (["--model", "bert-base", "--method", "lora", "--lora-targets", "q_proj"], "matches no module"),
    (["--model", "llama-3.2-1b", "--method", "bitfit"], "BitFit trains bias terms"),
    (["--model", "bert-base", "--head", "causal-lm"], "no causal-lm head"),
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


@pytest.mark.parametrize("family", ["qwen2", "mistral"])
def test_qwen2_and_mistral_folders(tiny, family, capsys):
    """The two families added after the estimator: a folder answers, counted from the model the folder loads."""
    t = tiny(family, "causal-lm")
    assert main(["--model", str(t.folder), "--json", "--max-length", "16"]) == 0
    methods = {m["method"]: m for m in json.loads(capsys.readouterr().out)["methods"]}
    assert methods["full"]["params_total"] == sum(p.numel() for p in t.load().parameters())
    from minift.peft import apply

    lora = apply(t.load(), "lora")  # the loaded model with minift.train's default LoRA
    assert methods["lora r=8"]["params_trainable"] == sum(p.numel() for p in lora.parameters() if p.requires_grad)
    assert methods["lora r=8"]["params_trainable"] == 2 * 8 * ((32 + 32) + (32 + 16))  # q, v (kv width 16), 2 layers
