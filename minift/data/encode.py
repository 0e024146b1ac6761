"""Examples -> features (lists of token ids and labels) with the fast ``tokenizers`` batch API.

A feature is a dict of Python lists: ``input_ids``, ``token_type_ids`` (only when the tokenizer's
post-processor uses them: BERT), and ``labels`` (a class id, a float, or one id per token with -100 where
no loss is taken). ``minift.data.collate`` pads a list of features into a batch of tensors.
"""
from __future__ import annotations

import json
import re
from collections.abc import Sequence
from contextlib import contextmanager

from tokenizers import Tokenizer

from minift.data.errors import DataError
from minift.data.example import IGNORE_INDEX, Example, Task
from minift.data.prompts import label_word_ids, parse_label
from minift.data.sft import encode_sft
from minift.data.tokenizer import SpecialIds, special_ids, uses_token_type_ids

__all__ = ["encode", "encode_causal_lm", "encode_task", "encode_words", "format_prompt", "parse_label"]


@contextmanager
def _truncating(tokenizer: Tokenizer, max_length: int | None):
    """Truncate to ``max_length`` (longest-first over a pair, special tokens included) inside the block."""
    previous = tokenizer.truncation
    if max_length is not None:
        if max_length < 4:
            raise ValueError(f"max_length={max_length} is too small to hold a sequence and its special tokens")
        tokenizer.enable_truncation(max_length, strategy="longest_first")
    try:
        yield
    finally:
        if previous is None:
            tokenizer.no_truncation()
        else:
            tokenizer.enable_truncation(**previous)


def encode(task: Task, examples: Sequence[Example], tokenizer: Tokenizer, max_length: int | None = 128,
           special: SpecialIds | None = None, token_type_ids: bool | None = None, template=None) -> list[dict]:
    """Encode examples for training / evaluation with a loss.

    Args:
        task: gives the kind (and, for causal-LM, the prompt and label words).
        examples: the examples of one split.
        tokenizer: the model's tokenizer (its post-processor adds the special tokens and type ids).
        max_length: longest sequence in tokens, special tokens included; None: no truncation.
        special: special ids (eos for causal-LM); default ``special_ids(tokenizer)``.
        token_type_ids: include ``token_type_ids``; None: when ``uses_token_type_ids(tokenizer)`` (BERT).
            Pass ``config.type_vocab_size > 1`` to decide by the model instead.
        template: SFT tasks: the ``minift.data.chat.ChatTemplate`` conversations are rendered with
            (``minift.data.sft.encode_sft``).

    Returns:
        One feature per example, in order.
    """
    if task.kind == "token-classification":
        return encode_words(examples, tokenizer, max_length, token_type_ids)
    if task.kind == "causal-lm":
        return encode_causal_lm(task, examples, tokenizer, max_length, special, with_target=True)
    if task.kind == "sft":
        if template is None:
            raise ValueError("an SFT task is encoded with a chat template: pass template= "
                             "(minift.data.chat.load_chat_template)")
        return encode_sft(examples, tokenizer, template, max_length)
    with_types = uses_token_type_ids(tokenizer) if token_type_ids is None else token_type_ids
    inputs = [ex.text if ex.text_pair is None else (ex.text, ex.text_pair) for ex in examples]
    with _truncating(tokenizer, max_length):
        encodings = tokenizer.encode_batch(inputs, add_special_tokens=True)
    features = []
    for ex, enc in zip(examples, encodings):
        feature = {"input_ids": enc.ids, "labels": float(ex.label) if task.kind == "regression" else int(ex.label)}
        if with_types:
            feature["token_type_ids"] = enc.type_ids
        features.append(feature)
    return features


def _space_prefixed_words(tokenizer: Tokenizer) -> bool:
    # A byte-level BPE sees each pre-tokenized word alone: without a leading space "Ġword" would become "word".
    # Every word gets one, as transformers does with the add_prefix_space=True it requires for word input.
    pre = json.dumps(json.loads(tokenizer.to_str()).get("pre_tokenizer") or {})
    return '"ByteLevel"' in pre and not re.search(r'"add_prefix_space":\s*true', pre)


def encode_words(examples: Sequence[Example], tokenizer: Tokenizer, max_length: int | None = 128,
                 token_type_ids: bool | None = None) -> list[dict]:
    """Token classification: each word's tag on its first sub-token, -100 on the other sub-tokens and on
    special tokens. Words cut off by truncation lose their labels. ``token_type_ids`` as in ``encode``."""
    with_types = uses_token_type_ids(tokenizer) if token_type_ids is None else token_type_ids
    prefix = _space_prefixed_words(tokenizer)
    batch = []
    for ex in examples:
        if ex.words is None or len(ex.words) != len(ex.label):
            raise DataError(f"example {ex.id!r}: token classification needs as many tags as words")
        batch.append([" " + w for w in ex.words] if prefix else list(ex.words))
    with _truncating(tokenizer, max_length):
        encodings = tokenizer.encode_batch(batch, is_pretokenized=True, add_special_tokens=True)
    features = []
    for ex, enc in zip(examples, encodings):
        labels, previous = [], None
        for word in enc.word_ids:
            labels.append(ex.label[word] if word is not None and word != previous else IGNORE_INDEX)
            previous = word
        feature = {"input_ids": enc.ids, "labels": labels}
        if with_types:
            feature["token_type_ids"] = enc.type_ids
        features.append(feature)
    return features


def format_prompt(task: Task, example: Example) -> str:
    """The causal-LM prompt of an example (``task.prompt`` with ``{text}`` / ``{text_pair}`` filled in)."""
    if task.prompt is None:
        raise ValueError(f"task {task.name!r} has no prompt: it is not a causal-LM task")
    return task.prompt.format(text=example.text, text_pair=example.text_pair or "")


def encode_causal_lm(task: Task, examples: Sequence[Example], tokenizer: Tokenizer, max_length: int | None = 256,
                     special: SpecialIds | None = None, with_target: bool = True) -> list[dict]:
    """Causal-LM features: prompt + " " + label word + eos, the loss on the label word and eos only.

    Args:
        with_target: True for training (``labels`` is -100 on the prompt, the target ids after it);
            False for generation (``input_ids`` is the prompt alone and ``labels`` the class id, to compare
            with the label parsed from the generated text).

    Raises:
        DataError: label words the tokenizer cannot tell apart (``minift.data.prompts.label_word_ids``).

    A prompt too long for ``max_length`` loses its beginning, so the instruction at its end survives.
    """
    special = special or special_ids(tokenizer)
    if special.eos is None:
        raise DataError("the tokenizer has no end-of-sequence token: a causal-LM target needs one; pass "
                        "special=special_ids(tokenizer, config) with the model's config")
    prompts = tokenizer.encode_batch([format_prompt(task, ex) for ex in examples], add_special_tokens=True)
    words = [ids + [special.eos] for ids in label_word_ids(tokenizer, task.label_words)]  # checked distinct
    features = []
    for ex, prompt in zip(examples, prompts):
        target = words[ex.label] if with_target else []
        ids = prompt.ids
        if max_length is not None and len(ids) + len(target) > max_length:
            keep = max_length - len(target)
            if keep < 1:
                raise ValueError(f"max_length={max_length} cannot hold the label tokens ({len(target)})")
            ids = ids[len(ids) - keep:]
        if with_target:
            features.append({"input_ids": ids + target, "labels": [IGNORE_INDEX] * len(ids) + target})
        else:
            features.append({"input_ids": ids, "labels": int(ex.label)})
    return features


def encode_task(task: Task, tokenizer: Tokenizer, max_length: int | None = 128, special: SpecialIds | None = None,
                token_type_ids: bool | None = None) -> dict[str, list[dict]]:
    """``encode`` of every split of a task: split name -> features."""
    return {split: encode(task, examples, tokenizer, max_length, special, token_type_ids)
            for split, examples in task.splits.items()}
