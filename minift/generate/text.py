"""Text in, text out: a decoder (and a run's weights) loaded for generation, prompts encoded, continuations decoded.

The generation itself is ``minift.models.generate.generate`` (KV cache, greedy or sampled, EOS and stop strings);
this module only turns strings into a left-padded batch and the new tokens back into strings. With ``chat=True``
each prompt is a user message rendered by the checkpoint's chat template (``minift.data.chat``), the assistant's
turn opened, and tokenised without the tokenizer's own special tokens (the template writes them), as transformers'
``apply_chat_template`` does.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from minift.eval.cli import UsageError
from minift.eval.trained import Trained, TrainedError, load_trained
from minift.models.generate import generate
from minift.precision import autocast, param_dtype


@dataclass
class Generator:
    """A decoder ready to generate: the model (eval mode, on its device), its tokenizer and special ids."""

    model: nn.Module
    tokenizer: object  # tokenizers.Tokenizer
    special: object  # minift.data.tokenizer.SpecialIds
    path: Path  # where the tokenizer and its chat template were read: the checkpoint, or --tokenizer
    device: torch.device
    precision: str


def load_generator(model_path: Path, trained: Trained | None, precision: str, device: torch.device,
                   tokenizer_path: Path | None = None) -> Generator:
    """Load the causal LM at ``model_path`` (an HF folder or ``.gguf``), put ``trained`` on it, and the tokenizer of
    ``tokenizer_path`` (default: the model's; its chat template is the one ``chat_prompts`` renders)."""
    from minift.data.tokenizer import load_tokenizer, special_ids
    from minift.models import load_pretrained
    from minift.models.load import read_config
    from minift.models.registry import get_family

    if model_path.is_dir() and not get_family(read_config(model_path).model_type).is_decoder:
        raise UsageError(f"--model {model_path} is an encoder; generation needs a decoder (GPT-2, Llama, SmolLM2, ...)")
    model = load_pretrained(model_path, dtype=param_dtype(precision), head="causal-lm")
    if trained is not None:
        try:
            model = load_trained(model, trained)
        except TrainedError as err:
            raise TrainedError(f"{err}. Generation loads a causal-LM run (a task of kind causal-lm or sft) onto its "
                               "base model") from None
    source = tokenizer_path or model_path
    tokenizer = load_tokenizer(source)
    return Generator(model.to(device).eval(), tokenizer, special_ids(tokenizer, model.config), source, device,
                     precision)


def chat_prompts(generator: Generator, prompts: Sequence[str], system: str | None = None,
                 template: str | None = None) -> list[str]:
    """Each prompt as a user turn (after ``system``, if given), rendered by the chat template with the assistant's
    turn opened. ``template``: ``--chat-template`` (a Jinja file or ``plain``), None for the checkpoint's own."""
    from minift.data.chat import load_chat_template

    chat = load_chat_template(generator.path, generator.tokenizer, generator.special, template)
    head = [{"role": "system", "content": system}] if system else []
    return [chat.render([*head, {"role": "user", "content": p}], add_generation_prompt=True) for p in prompts]


def encode(generator: Generator, texts: Sequence[str], special_tokens: bool = True) -> tuple:
    """(input_ids, attention_mask), (B, T) left-padded with the pad id, on the generator's device."""
    rows = [generator.tokenizer.encode(text, add_special_tokens=special_tokens).ids for text in texts]
    if not all(rows):
        raise UsageError("--prompt: a prompt has no tokens; give some text")
    T = max(len(row) for row in rows)
    ids = torch.full((len(rows), T), generator.special.pad, dtype=torch.long)
    mask = torch.zeros(len(rows), T, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, T - len(row):], mask[i, T - len(row):] = torch.tensor(row), 1
    return ids.to(generator.device), mask.to(generator.device)


def generate_text(generator: Generator, texts: Sequence[str], *, max_new_tokens: int = 64,
                  temperature: float | None = None, top_k: int | None = None, top_p: float | None = None,
                  seed: int | None = None, stop: Sequence[str] | None = None, special_tokens: bool = True) -> list[str]:
    """The continuation of each text (without it, without special tokens), greedy unless a sampling setting is
    given (``temperature`` > 0, ``top_k`` or ``top_p``; ``temperature`` 0 is greedy).

    Args:
        special_tokens: let the tokenizer add its special tokens (False for chat-rendered text, which has them).
    """
    ids, mask = encode(generator, texts, special_tokens)
    sample = (temperature is not None and temperature > 0) or (temperature is None and (top_k or top_p))
    options = {"do_sample": True, "temperature": temperature or 1.0, "top_k": top_k, "top_p": top_p, "seed": seed}
    eos = generator.special.eos
    with torch.no_grad(), autocast(generator.precision, generator.device):
        out = generate(generator.model, ids, mask, max_new_tokens=max_new_tokens, eos_token_id=eos,
                       stop_strings=list(stop or []) or None, decode=generator.tokenizer,
                       **(options if sample else {}))
    texts_out = []
    for row in out[:, ids.shape[1]:].tolist():
        row = row[:row.index(eos)] if eos is not None and eos in row else row
        texts_out.append(generator.tokenizer.decode(row, skip_special_tokens=True))
    return texts_out
