"""Causal-LM classification: the prompt template and the label words, checked before anything trains.

A causal-LM task shows the model ``prompt`` with ``{text}`` (and ``{text_pair}`` for sentence pairs) filled in,
and the model answers with the label word of the class (``label_words[class id]``), scored by parsing the
generated text back to a class (:func:`parse_label`).

- :func:`check_prompt`: ``{text}`` must occur, ``{text_pair}`` exactly when the task has pairs, and no other
  field (``{{`` and ``}}`` write literal braces, as in ``str.format``);
- :func:`check_label_words`: one non-empty word per class, no two alike (ignoring case, which parsing ignores);
- :func:`label_word_ids`: the words' token ids (each written after a space, as the model generates it); two
  words with the same ids, or a word whose decoded tokens do not parse back to its own class (a tokenizer that
  maps it to ``<unk>``, a word ``parse_label`` cannot find as a whole word), are errors.

On the command line ``--prompt`` reads ``\\n`` as a newline, ``\\t`` as a tab and ``\\\\`` as a backslash
(:func:`unescape`), so ``--prompt 'Sentence: {text}\\nSentiment:'`` is a two-line prompt in any shell; YAML files
use YAML's own escapes (``"...\\n..."`` in double quotes, or a ``|`` block). ``--label-words no,yes`` lists one
word per class in class-id order (the task's label names, sorted as ``file:`` tasks sort them).
"""
from __future__ import annotations

import re
import string
from collections.abc import Sequence

from minift.data.errors import DataError

FIELDS = ("text", "text_pair")  # what a prompt may name
_ESCAPES = {"n": "\n", "t": "\t", "\\": "\\"}


def unescape(text: str) -> str:
    """A command-line prompt with ``\\n``, ``\\t`` and ``\\\\`` turned into newline, tab and backslash; any other
    backslash is kept as it is."""
    return re.sub(r"\\([nt\\])", lambda m: _ESCAPES[m.group(1)], text)


def split_label_words(text: str) -> list[str]:
    """``"no,yes"`` → ``["no", "yes"]``: comma-separated, each stripped; empty words are kept (and refused by
    :func:`check_label_words`, which names them)."""
    return [word.strip() for word in text.split(",")]


def prompt_fields(prompt: str, where: str = "prompt") -> list[str]:
    """The ``{field}`` names of a prompt template, in order (``{{`` / ``}}`` are literal braces)."""
    try:
        parsed = list(string.Formatter().parse(prompt))
    except ValueError as err:  # a lone "{" or "}"
        raise DataError(f"{where} {prompt!r} is not a valid template ({err}); write a literal brace as {{{{ or "
                        "}}") from None
    return [name for _, name, _, _ in parsed if name is not None]


def check_prompt(prompt: str, pair: bool, where: str = "prompt") -> None:
    """Raise ``DataError`` unless ``prompt`` names ``{text}``, names ``{text_pair}`` exactly when the task has text
    pairs (``pair``), and names nothing else.

    Args:
        where: how to name the prompt in the message (e.g. "--prompt of task 'mrpc_lm'").
    """
    names = prompt_fields(prompt, where)
    unknown = sorted({n for n in names if n not in FIELDS})
    if unknown:
        shown = ", ".join("{" + n + "}" for n in unknown)
        raise DataError(f"{where} {prompt!r} names {shown}; a prompt may name only {{text}} and {{text_pair}} "
                        "(write a literal brace as {{ or }})")
    if "text" not in names:
        raise DataError(f"{where} {prompt!r} lacks {{text}}: the example's text would not be shown to the model")
    if pair and "text_pair" not in names:
        raise DataError(f"{where} {prompt!r} lacks {{text_pair}}: the task's examples are text pairs and the "
                        "second text would not be shown to the model")
    if not pair and "text_pair" in names:
        raise DataError(f"{where} {prompt!r} names {{text_pair}}, but the task has no second text (for a file: "
                        "task, name its column with --text-pair-column)")


def check_label_words(words: Sequence[str], label_names: Sequence[str], where: str = "label words") -> None:
    """Raise ``DataError`` unless there is one non-empty word per class and no two are the same ignoring case."""
    for index, word in enumerate(words):
        if not word.strip():
            raise DataError(f"{where} {list(words)}: word {index + 1} is empty; give one word per class, in the "
                            f"order {list(label_names)}")
    if len(words) != len(label_names):
        raise DataError(f"{where} {list(words)}: {len(words)} word(s) for {len(label_names)} classes; give one per "
                        f"class, in the order {list(label_names)}")
    seen: dict[str, int] = {}
    for index, word in enumerate(words):
        key = word.strip().lower()
        if key in seen:
            raise DataError(f"{where} {list(words)}: classes {label_names[seen[key]]!r} and {label_names[index]!r} "
                            f"have the same word {word!r} (answers are compared ignoring case): make them distinct")
        seen[key] = index


def parse_label(generated: str, label_words: Sequence[str]) -> int:
    """The class id whose label word appears first in generated text (case-insensitive, whole word),
    or -1 when none does (counted as wrong by compute_metrics)."""
    best, best_at = -1, None
    lowered = generated.lower()
    for index, word in enumerate(label_words):
        match = re.search(rf"\b{re.escape(word.lower())}\b", lowered)
        if match and (best_at is None or match.start() < best_at):
            best, best_at = index, match.start()
    return best


def label_word_ids(tokenizer, label_words: Sequence[str]) -> list[list[int]]:
    """The token ids of each label word as the model writes it after the prompt (``" " + word``).

    Raises:
        DataError: a word with no tokens, two words with the same tokens, or a word whose tokens decode to text
            that does not parse back to its own class (generation could never name it).
    """
    ids = [tokenizer.encode(" " + word, add_special_tokens=False).ids for word in label_words]
    for index, (word, tokens) in enumerate(zip(label_words, ids)):
        if not tokens:
            raise DataError(f"label word {word!r} has no tokens for this tokenizer: choose another word")
        twin = next((other for other, o_ids in zip(label_words[:index], ids) if o_ids == tokens), None)
        if twin is not None:
            raise DataError(f"label words {twin!r} and {word!r} are the same tokens {tokens} for this tokenizer "
                            "(e.g. both unknown words): the model could not tell them apart; choose other words")
    for index, (word, tokens) in enumerate(zip(label_words, ids)):
        decoded = tokenizer.decode(tokens, skip_special_tokens=True)
        parsed = parse_label(decoded, label_words)
        if parsed != index:
            found = f"as {label_words[parsed]!r}" if parsed >= 0 else "as no label word"
            raise DataError(f"label word {word!r}: its tokens {tokens} decode to {decoded!r}, which is read back "
                            f"{found}; choose words made of letters or digits that the tokenizer keeps")
    return ids
