"""Readers for the single-text and text-pair course data sets: AG News, SemEval-2014 aspect sentiment,
ACL-ARC citation intent and Financial PhraseBank. Each returns ``(splits, label_names)``."""
from __future__ import annotations

import html
import re
from pathlib import Path

from minift.data.errors import row_error
from minift.data.example import Example, seeded_split
from minift.data.readers_common import (
    check_columns,
    label_index,
    nonempty,
    read_delimited,
    read_json,
    read_jsonl,
    read_lines,
    require_text,
)

SPLIT_SEED = 42  # the seed of every seeded split in minift.data (AG News 9:1, Financial PhraseBank)

AGNEWS_LABELS = ["World", "Sports", "Business", "Sci/Tech"]  # file labels 1..4
ABSA_LABELS = ["negative", "neutral", "positive"]
ACL_LABELS = ["Background", "Uses", "CompareOrContrast", "Motivation", "Extends", "Future"]
FPB_LABELS = ["negative", "neutral", "positive"]

_AG_BACKSLASHES = re.compile(r"\\+")
# The original lost the "&" of its HTML entities (or turned it into a space): "isn #39;t", " quot;Hi",
# "#36;10"; others survived whole ("&lt;b&gt;").
_AG_ENTITY = re.compile(r"[& ]?(#\d{2,5}|quot|amp|lt|gt|nbsp|apos);")
_AG_TAGS = re.compile(r"</?(?:b|i|p|br)\s*/?>", re.IGNORECASE)
_SPACES = re.compile(r"\s+")


def _entity(match: re.Match) -> str:
    name = match.group(1)
    if name.startswith("#"):
        code = int(name[1:])
        if 128 <= code < 160:  # Windows-1252 punctuation written as numeric entities (#151; is an em dash)
            return bytes([code]).decode("cp1252", errors="replace")
        return chr(code) if code < 0x110000 else match.group(0)
    return html.unescape(f"&{name};")


def clean_agnews(text: str) -> str:
    """AG News text: ``\\`` is the original's newline escape (runs of them become one space); HTML entities,
    whole or without their ``&`` (``#36;`` -> ``$``, `` quot;`` -> ``"``), are decoded and ``<b>``/``<p>``/``<br>``
    tags dropped; whitespace is collapsed."""
    text = _AG_BACKSLASHES.sub(" ", text)
    text = _AG_ENTITY.sub(_entity, text)
    text = _AG_TAGS.sub(" ", text)
    return _SPACES.sub(" ", text).strip()


def read_agnews(root: Path, test_fraction: float = 0.1, seed: int = SPLIT_SEED):
    """AG News ``test.csv`` (7,600 rows, header ``label,title,description``) split 9:1 with ``seed``.

    Returns 6,840 train / 760 test examples; text = title + " " + description.
    """
    path = root / "test.csv"
    examples = []
    for line, row in read_delimited(path, ","):
        if line == 1 and [c.strip().lower() for c in row] == ["label", "title", "description"]:
            continue
        check_columns(path, line, row, 3)
        label, title, description = row
        if label.strip() not in ("1", "2", "3", "4"):
            raise row_error(path, line, f"unknown label {label!r}; expected 1..4 ({', '.join(AGNEWS_LABELS)})")
        text = clean_agnews(f"{title} {description}")
        if not text:
            raise row_error(path, line, "missing text: both title and description are empty")
        examples.append(Example(text=text, label=int(label) - 1, id=f"test.csv:{line}"))
    nonempty("test", examples, path)
    train, test = seeded_split(examples, test_fraction, seed)
    return {"train": train, "test": test}, list(AGNEWS_LABELS)


def read_absa(root: Path):
    """SemEval-2014 aspect sentiment ``{train,dev,test}.json``: ``{id: {term, sentence, polarity}}``.

    The input is the pair (aspect term, sentence), as in the BERT post-training papers (Xu et al. 2019).
    """
    splits = {}
    for split in ("train", "dev", "test"):
        path = root / f"{split}.json"
        data = read_json(path)
        if not isinstance(data, dict):
            raise row_error(path, 1, f"expected a JSON object {{id: {{term, sentence, polarity}}}}, got "
                            f"{type(data).__name__}")
        examples = []
        for key, item in data.items():
            where = f"entry {key!r}"
            if not isinstance(item, dict):
                raise row_error(path, None, f"{where}: expected an object with term, sentence, polarity")
            term = require_text(path, None, item.get("term"), f"{where} term")
            sentence = require_text(path, None, item.get("sentence"), f"{where} sentence")
            label = label_index(path, None, item.get("polarity"), ABSA_LABELS)
            examples.append(Example(text=term, text_pair=sentence, label=label, id=str(key)))
        splits[split] = nonempty(split, examples, path)
    return splits, list(ABSA_LABELS)


def read_acl(root: Path):
    """ACL-ARC ``{train,dev,test}.jsonl``; train keeps no context that also occurs in dev or test.

    ``string`` is HTML-unescaped (``&quot;``); this copy's random split leaks 12 contexts into each of dev
    and test, which are dropped from train (1,745 -> 1,721).
    """
    splits = {}
    for split in ("train", "dev", "test"):
        path = root / f"{split}.jsonl"
        examples = []
        for line, obj in read_jsonl(path):
            text = html.unescape(require_text(path, line, obj.get("string"), "string"))
            label = label_index(path, line, obj.get("label"), ACL_LABELS)
            examples.append(Example(text=text, label=label, id=str(obj.get("citation_id", f"{split}:{line}"))))
        splits[split] = nonempty(split, examples, path)
    held_out = {ex.text for ex in splits["dev"]} | {ex.text for ex in splits["test"]}
    splits["train"] = nonempty("train", [ex for ex in splits["train"] if ex.text not in held_out], root)
    return splits, list(ACL_LABELS)


def _read_phrasebank(path: Path) -> dict[str, int]:
    """Unique sentence -> label id of one ``Sentences_*Agree.txt`` (``sentence@label`` lines).

    Duplicate lines collapse; a sentence listed with two different labels is ambiguous and dropped.
    """
    labels: dict[str, int] = {}
    conflicting = set()
    for line, raw in read_lines(path, encoding="utf-8", fallback="iso-8859-1"):
        if not raw.strip():
            continue
        sentence, sep, label = raw.rpartition("@")
        if not sep:
            raise row_error(path, line, "expected 'sentence@label', found no '@'")
        sentence = require_text(path, line, sentence.strip(), "sentence")
        label_id = label_index(path, line, label, FPB_LABELS)
        if labels.get(sentence, label_id) != label_id:
            conflicting.add(sentence)
        labels[sentence] = label_id
    for sentence in conflicting:
        del labels[sentence]
    return labels


def read_financial_phrasebank(root: Path, test_fraction: float = 0.2, seed: int = SPLIT_SEED):
    """Financial PhraseBank without train/test leakage.

    The seeds trained on ``Sentences_50Agree`` and tested on ``Sentences_66Agree``, which is a subset of
    it. Here the test split is a seeded 20% of the unique sentences of 66Agree (labels agreed by at least
    two thirds of annotators) and train is every unique sentence of 50Agree that is not in test, so no
    sentence is in both (train 3,994 / test 842).
    """
    train_labels = _read_phrasebank(root / "Sentences_50Agree.txt")
    test_pool = _read_phrasebank(root / "Sentences_66Agree.txt")
    _, test_sentences = seeded_split(sorted(test_pool), test_fraction, seed)
    held_out = set(test_sentences)
    train = [Example(text=s, label=y, id=f"50Agree:{i}") for i, (s, y) in enumerate(train_labels.items())
             if s not in held_out]
    test = [Example(text=s, label=test_pool[s], id=f"66Agree:{i}") for i, s in enumerate(test_sentences)]
    return {"train": nonempty("train", train, root), "test": nonempty("test", test, root)}, list(FPB_LABELS)


__all__ = ["clean_agnews", "read_absa", "read_acl", "read_agnews", "read_financial_phrasebank"]
