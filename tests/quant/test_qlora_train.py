"""QLoRA through the command: ``python -m minift.train --quantize nf4 --method lora`` on a tiny encoder (BERT) and a
tiny decoder (Llama with a classification head) loads the base in 4 bits, trains LoRA on it (gradients reach every
LoRA matrix), never changes a 4-bit code (hashed before and after training), and saves a trainable state with
exactly the keys of a LoRA run on the unquantised model, which loads there."""
from __future__ import annotations

import hashlib
import json

import kit
import pytest
import torch

from minift.models import load_pretrained
from minift.peft import apply, load_trainable
from minift.peft.io import trainable_state
from minift.peft.lora import LoRANF4Linear
from minift.quant import NF4Linear, nf4_layers
from minift.train import recipe
from minift.train.__main__ import main


def codes_digest(model: torch.nn.Module) -> str:
    """SHA-256 of every NF4 buffer (codes and scales) of ``model``, in name order."""
    digest = hashlib.sha256()
    for name, layer in sorted(nf4_layers(model).items()):
        for buffer_name, buffer in sorted(layer.named_buffers()):
            digest.update(f"{name}.{buffer_name}".encode())
            digest.update(buffer.detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def llama_assets(root) -> tuple:
    """A tiny Llama classifier (2 labels) with a word-level ``tokenizer.json`` over the CLI task's words."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    _, task = kit.cli_assets(root)
    folder = kit.make_tiny(root, "llama", "classification", name="llama", num_labels=2, head_std=None, seed=0).folder
    vocab = {"[PAD]": 0, "[UNK]": 1, **{w: i + 4 for i, w in enumerate(kit.WORDS)}}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.save(str(folder / "tokenizer.json"))
    return folder, task


@pytest.fixture
def spy(monkeypatch):
    """Records the model the command builds and the digest of its 4-bit codes before any training step."""
    seen = {}
    build = recipe.build

    def recording(config, device):
        built = build(config, device)
        seen["model"], seen["before"] = built.model, codes_digest(built.model)
        return built

    monkeypatch.setattr(recipe, "build", recording)
    return seen


@pytest.mark.parametrize("family", ["bert", "llama"])
def test_qlora_run_trains_lora_and_never_changes_the_codes(tmp_path, spy, family):
    model_dir, task = kit.cli_assets(tmp_path) if family == "bert" else llama_assets(tmp_path)
    out = tmp_path / "run"
    args = ["--task", task, "--model", str(model_dir), "--method", "lora", "--lora-r", "4", "--quantize", "nf4",
            "--max-steps", "4", "--eval-every", "2", "--batch-size", "8", "--max-length", "32", "--lr", "1e-2",
            "--output-dir", str(out), "--plot", "false", "--device", "cpu"]
    assert main(args) == 0
    model = spy["model"]
    layers = nf4_layers(model)
    assert len(layers) == 2 * (6 if family == "bert" else 7)  # every block linear is 4-bit
    lora = [m for m in layers.values() if isinstance(m, LoRANF4Linear)]
    assert lora and all(m.lora_B.abs().sum() > 0 for m in lora)  # B starts at 0: the gradients reached every one
    assert all(type(m) in (NF4Linear, LoRANF4Linear) for m in layers.values())
    assert codes_digest(model) == spy["before"]  # the 4-bit codes and scales never changed

    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 4
    # the saved trainable state is a LoRA state of the unquantised model: same keys, and it loads there
    fp = apply(load_pretrained(model_dir, head="classification", num_labels=2), model.peft_spec)
    assert trainable_state(model).keys() == trainable_state(fp).keys()
    reloaded = load_trainable(load_pretrained(model_dir, head="classification", num_labels=2), out / "best")
    assert not nf4_layers(reloaded)
    batch = kit.batch(family, vocab=90)
    with torch.no_grad():
        got, expected = reloaded.eval()(**batch), model.eval()(**batch)
    assert ((got - expected).norm() / expected.norm()).item() < 0.3  # the NF4 rounding of the base apart


def test_quantize_with_full_fine_tuning_is_refused(tmp_path, capsys):
    model_dir, task = kit.cli_assets(tmp_path)
    assert main(["--task", task, "--model", str(model_dir), "--method", "full", "--quantize", "nf4",
                 "--output-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "--quantize nf4 with --method full" in err and "--method lora" in err
    assert main(["--task", task, "--model", str(model_dir), "--quantize", "int4",
                 "--output-dir", str(tmp_path / "run2")]) == 2
    assert "quantize='int4' is not one of: nf4" in capsys.readouterr().err
