"""Assets of the command tests (``python -m minift.eval``, ``minift.generate``, ``minift.export``): a tiny random
Llama with a byte-level BPE ``tokenizer.json`` (what the GGUF writer and generation need), and training runs made by
``python -m minift.train`` itself on it or on the kit's tiny BERT task."""
from __future__ import annotations

import json
from pathlib import Path

import kit
import torch

from minift.train.__main__ import main as train

SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHATML = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
          "'<|im_end|>\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
TEXT = ["the cat sat on the mat", "a dog ran in the park", "Operating profit rose to EUR 13.1 mn from EUR 8.7 mn",
        "Sentence: Sentiment: negative neutral positive", "The company said sales fell in the quarter"]
# the kit's tiny Llama with room for the tokenizer's tokens and longer prompts; SmolLM's special ids
LLAMA = {"vocab_size": 320, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2, "max_position_embeddings": 128}


def byte_level_tokenizer(vocab_size: int = 300):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.train_from_iterator(TEXT * 20, trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    return tokenizer


def llama_folder(root: Path, name: str = "llama", seed: int = 0) -> Path:
    """A tiny random LlamaForCausalLM folder with ``tokenizer.json`` and a ChatML ``tokenizer_config.json``."""
    folder = kit.make_tiny(root, "llama", "causal-lm", name=name, seed=seed, **LLAMA).folder
    byte_level_tokenizer().save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"chat_template": CHATML, "eos_token": "<|im_end|>"}))
    return folder


def train_run(out: Path, task: str, model: Path, method: str, *extra: str) -> Path:
    """A finished ``python -m minift.train`` run in ``out`` (a few steps, on the CPU)."""
    args = ["--task", task, "--model", str(model), "--method", method, "--batch-size", "8", "--max-length", "48",
            "--output-dir", str(out), "--plot", "false", "--device", "cpu", "--eval-batch-size", "64", *extra]
    assert train(args) == 0
    return out


def summary(folder: Path) -> dict:
    return json.loads((folder / "summary.json").read_text())


def noisy_lora(model, std: float = 0.2, seed: int = 0):
    """Draw every LoRA B (zero at init) from N(0, std²), so that the update matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("lora_B"):
                p.copy_(torch.randn(p.shape, generator=g) * std)
    return model
