"""Instruction tuning (``--task file:PATH --task-kind sft``): conversations from a file, encoded with the model's
chat template, the loss on the assistant's tokens only.

A row (a JSON-lines object; CSV/TSV files have ``prompt`` and ``response`` columns, optionally ``system``) is
either ``{"prompt": ..., "response": ...}`` (optionally ``"system"``) — one user turn and its answer — or
OpenAI's chat format ``{"messages": [{"role": "system" | "user" | "assistant", "content": "..."}, ...]}``: an
optional system message first, then a user message, ending with an assistant message. ``PATH`` takes the forms of
``minift.data.readers_file`` (one file split 9:1 with the library's seed, ``TRAIN,TEST``, ``TRAIN,DEV,TEST`` or a
folder). A row that is neither, an unknown role, empty content, a system message after the first, or a
conversation that does not end with the assistant is an error naming the file and line.

:func:`encode_sft` renders each conversation with a :class:`~minift.data.chat.ChatTemplate`, tokenises the text
once (without the tokenizer's own special tokens: the template writes them) and labels the tokens that overlap
an assistant turn (its content and the template's end-of-turn tokens); every other token carries
``IGNORE_INDEX``. :func:`encode_prompts` gives the generation prompts (the conversation without its last answer)
and the answers, for looking at what a model writes.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from minift.data.chat import ChatTemplate
from minift.data.errors import DataError, row_error
from minift.data.example import IGNORE_INDEX, ROLES, Conversation, Message, seeded_split
from minift.data.readers_common import nonempty, read_jsonl
from minift.data.readers_file import SUFFIXES, read_rows, split_paths
from minift.data.readers_text import SPLIT_SEED

PAIR_KEYS = ("prompt", "response")  # the short form's keys ("system" optional)


def _content(path: Path, line: int, value, where: str) -> str:
    if not isinstance(value, str):
        kind = "a list of parts (multi-part content is not supported)" if isinstance(value, list) else repr(value)
        raise row_error(path, line, f"{where}: content must be text, got {kind}")
    if not value.strip():
        raise row_error(path, line, f"{where}: empty content")
    return value


def _messages(path: Path, line: int, value) -> list[Message]:
    if not isinstance(value, list) or not value:
        raise row_error(path, line, f'"messages" must be a non-empty list of {{"role", "content"}} objects, got '
                        f"{value!r:.80}")
    messages = []
    for number, item in enumerate(value, start=1):
        where = f"message {number}"
        if not isinstance(item, dict) or "role" not in item or "content" not in item:
            raise row_error(path, line, f'{where}: expected an object with "role" and "content", got {item!r:.80}')
        if item["role"] not in ROLES:
            raise row_error(path, line, f"{where}: unknown role {item['role']!r}; the roles are {', '.join(ROLES)}")
        messages.append(Message(item["role"], _content(path, line, item["content"], where)))
    return messages


def conversation(path: Path, line: int, row: dict) -> Conversation:
    """The conversation of one row (see the module docstring), checked.

    Raises:
        DataError: naming ``path`` and ``line``.
    """
    has_messages, has_pair = "messages" in row, any(key in row for key in PAIR_KEYS)
    if has_messages and has_pair:
        raise row_error(path, line, 'a row holds either "messages" or "prompt"/"response", not both')
    if has_messages:
        messages = _messages(path, line, row["messages"])
    elif has_pair:
        missing = [key for key in PAIR_KEYS if key not in row]
        if missing:
            raise row_error(path, line, f'a "prompt"/"response" row lacks {missing[0]!r}')
        system = [Message("system", _content(path, line, row["system"], '"system"'))] if row.get("system") else []
        messages = [*system, Message("user", _content(path, line, row["prompt"], '"prompt"')),
                    Message("assistant", _content(path, line, row["response"], '"response"'))]
    else:
        raise row_error(path, line, f'expected {{"prompt": ..., "response": ...}} or {{"messages": [{{"role": ..., '
                        f'"content": ...}}, ...]}}; the row has the keys {sorted(row)}')
    _check_order(path, line, messages)
    return Conversation(tuple(messages), id=f"{path.name}:{line}")


def _check_order(path: Path, line: int, messages: list[Message]) -> None:
    roles = [m.role for m in messages]
    if "system" in roles[1:]:
        raise row_error(path, line, f"a system message may only come first (message {roles.index('system', 1) + 1} "
                        "is one)")
    talk = roles[1:] if roles[0] == "system" else roles
    if not talk or talk[0] != "user":
        raise row_error(path, line, "a conversation starts with a user message (after an optional system message)")
    if roles[-1] != "assistant":
        raise row_error(path, line, f"the conversation ends with a {roles[-1]} message; it must end with the "
                        "assistant's answer (the turns the model learns)")


def _read(path: Path) -> list[Conversation]:
    if path.suffix.lower() not in SUFFIXES:
        raise DataError(f"{path}: unsupported file type {path.suffix!r}; use .jsonl (or .csv/.tsv with prompt and "
                        "response columns)")
    rows = read_jsonl(path) if SUFFIXES[path.suffix.lower()] is None else read_rows(path, list(PAIR_KEYS))
    return nonempty(path.stem, [conversation(path, line, row) for line, row in rows], path)


def read_sft_task(spec: str, test_fraction: float = 0.1, seed: int = SPLIT_SEED) -> dict[str, list[Conversation]]:
    """The conversations of an SFT ``file:`` task by split ("train", optionally "dev", "test").

    Args:
        spec: what follows ``file:`` (a file, ``TRAIN,TEST``, ``TRAIN,DEV,TEST`` or a folder).
        test_fraction / seed: the split of a single file.
    """
    paths = split_paths(spec)
    splits = {split: _read(path) for split, path in paths.items()}
    if "all" in splits:
        train, test = seeded_split(splits.pop("all"), test_fraction, seed)
        splits = {"train": nonempty("train", train, spec), "test": nonempty("test", test, spec)}
    return splits


def encode_conversation(conv: Conversation, tokenizer, template: ChatTemplate, max_length: int | None) -> dict:
    """One conversation's feature: ``input_ids`` and ``labels`` (the ids on assistant tokens, ``IGNORE_INDEX``
    elsewhere), cut to ``max_length`` tokens from the end."""
    text, spans = template.assistant_spans(conv.as_dicts())
    encoding = tokenizer.encode(text, add_special_tokens=False)
    ids, labels = list(encoding.ids), []
    for token, (start, stop) in zip(ids, encoding.offsets):
        # a token that overlaps an answer is the answer's (a merge across its start, e.g. "\n " before " 12", too),
        # as transformers' assistant mask counts it
        inside = any(start < end and begin < stop for begin, end in spans)
        labels.append(token if inside else IGNORE_INDEX)
    if max_length is not None:
        ids, labels = ids[:max_length], labels[:max_length]
    return {"input_ids": ids, "labels": labels}


def encode_sft(conversations: Sequence[Conversation], tokenizer, template: ChatTemplate,
               max_length: int | None = 512) -> list[dict]:
    """Features of conversations for training or the held-out response loss (see :func:`encode_conversation`).

    Raises:
        DataError: every conversation lost all its assistant tokens to ``max_length`` (nothing would train).
    """
    features = [encode_conversation(conv, tokenizer, template, max_length) for conv in conversations]
    if features and not any(label != IGNORE_INDEX for f in features for label in f["labels"][1:]):
        raise DataError(f"max_length={max_length} cuts every conversation before the assistant's answer: raise "
                        "--max-length")
    return features


def encode_prompts(conversations: Sequence[Conversation], tokenizer, template: ChatTemplate,
                   max_length: int | None = None) -> list[dict]:
    """Generation prompts: each conversation without its last answer, rendered with the generation prompt
    (``input_ids``, keeping the last ``max_length`` tokens), with the answer it had (``answer``) and the prompt's
    text (``prompt``)."""
    out = []
    for conv in conversations:
        messages = conv.as_dicts()
        text = template.render(messages[:-1], add_generation_prompt=True)
        ids = tokenizer.encode(text, add_special_tokens=False).ids
        if max_length is not None:
            ids = ids[-max_length:]
        out.append({"input_ids": ids, "prompt": text, "answer": messages[-1]["content"], "id": conv.id})
    return out
