"""BioNLP/JNLPBA 2004 NER: the train set from brat standoff files (text + character-offset entities) turned
into sentences of words with IOB2 tags, and the test set from the original ``Genia4EReval1.iob2``."""
from __future__ import annotations

import re
from pathlib import Path

from minift.data.errors import DataError, row_error
from minift.data.example import Example
from minift.data.readers_common import nonempty, read_lines, read_text

ENTITY_TYPES = ["DNA", "RNA", "cell_line", "cell_type", "protein"]
BIO_LABELS = ["O"] + [f"{p}-{t}" for t in ENTITY_TYPES for p in ("B", "I")]

# Words roughly as GENIA tokenises: brackets and , ; : " stand alone; a chunk's final "." is split off.
_WORD = re.compile(r'[()\[\]{},;:"]|[^\s()\[\]{},;:"]+')
_SENTENCE_END = {".", "?", "!"}
# A "." after these is an abbreviation (journal citations, "et al.", initials), not a sentence end.
_ABBREVIATIONS = {"al", "e.g", "i.e", "vs", "ca", "approx", "Fig", "Figs", "Ref", "No", "Dr", "Mol", "Biol", "Cell",
                  "Natl", "Acad", "Sci", "Proc", "USA", "Virol", "Immunol", "Exp", "Med", "J", "Chem", "Res", "Nucl"}


def parse_ann(path: Path) -> list[tuple[int, int, str, str]]:
    """``(start, end, type, text)`` of every text-bound (``T``) annotation of a brat ``.ann`` file."""
    spans = []
    for line, raw in read_lines(path):
        if not raw.strip() or raw.startswith("#"):
            continue
        fields = raw.split("\t")
        if not raw.startswith("T") or len(fields) != 3:
            raise row_error(path, line, "expected a text-bound annotation 'T<n><TAB><type> <start> <end><TAB><text>'")
        parts = fields[1].split(" ")
        if len(parts) != 3 or not parts[1].isdigit() or not parts[2].isdigit():
            raise row_error(path, line, f"expected '<type> <start> <end>' (one contiguous span), got {fields[1]!r}")
        if parts[0] not in ENTITY_TYPES:
            raise row_error(path, line, f"unknown entity type {parts[0]!r}; expected one of {ENTITY_TYPES}")
        spans.append((int(parts[1]), int(parts[2]), parts[0], fields[2]))
    return spans


def _words(text: str, boundaries: set[int]) -> list[tuple[int, int]]:
    """Character spans of the words of ``text``, also cut at every entity boundary inside a word."""
    spans = []
    for match in _WORD.finditer(text):
        start, end = match.span()
        split_stop = end - start > 1 and text[end - 1] == "."  # a final "." is its own word
        pieces = [(start, end - 1), (end - 1, end)] if split_stop else [(start, end)]
        for s, e in pieces:
            cuts = [b for b in boundaries if s < b < e]
            for b in sorted(cuts):
                spans.append((s, b))
                s = b
            spans.append((s, e))
    return spans


def _abbreviation(word: str) -> bool:
    return word in _ABBREVIATIONS or (len(word) == 1 and word.isupper())


def brat_to_sentences(text: str, entities: list[tuple[int, int, str, str]], where: Path) -> list[Example]:
    """Words and IOB2 tag ids of one document, split into sentences.

    A sentence ends at a line break, or after ``.``/``?``/``!`` followed by a word starting with a capital
    letter or a digit, never inside an entity, nor after an initial or a common abbreviation (``M.``, ``al.``,
    ``Biol.``). Overlapping entities are an error (JNLPBA has none).
    """
    boundaries = {b for s, e, _, _ in entities for b in (s, e)}
    spans = _words(text, boundaries)
    tags = [0] * len(spans)
    start_index = {s: i for i, (s, _) in enumerate(spans)}
    inside = [False] * len(spans)  # word continues an entity: no sentence break before it
    for s, e, kind, surface in sorted(entities):
        if text[s:e] != surface:
            raise DataError(f"{where}: entity {kind} {s} {e} reads {text[s:e]!r} in the .txt but {surface!r} in "
                            "the .ann; the two files do not belong together")
        i = start_index.get(s)
        if i is None:
            raise DataError(f"{where}: entity {kind} {s} {e} {surface!r} starts inside whitespace")
        if tags[i] != 0:
            raise DataError(f"{where}: entity {kind} {s} {e} {surface!r} overlaps another entity")
        tags[i] = BIO_LABELS.index(f"B-{kind}")
        i += 1
        while i < len(spans) and spans[i][1] <= e:
            tags[i], inside[i] = BIO_LABELS.index(f"I-{kind}"), True
            i += 1
    sentences, current = [], []
    for i, (s, _) in enumerate(spans):
        if current and not inside[i]:
            previous_end = spans[current[-1]][1]
            newline = "\n" in text[previous_end:s]
            after_stop = text[spans[current[-1]][0]:previous_end] in _SENTENCE_END and not (
                len(current) > 1 and _abbreviation(text[spans[current[-2]][0]:spans[current[-2]][1]]))
            if newline or (after_stop and (text[s].isupper() or text[s].isdigit())):
                sentences.append(current)
                current = []
        current.append(i)
    if current:
        sentences.append(current)
    examples = []
    for n, indices in enumerate(sentences):
        words = tuple(text[spans[i][0]:spans[i][1]] for i in indices)
        examples.append(Example(text=" ".join(words), words=words, label=tuple(tags[i] for i in indices),
                                id=f"{where.stem}:{n}"))
    return examples


def read_brat_folder(folder: Path) -> list[Example]:
    """Every ``*.txt`` + ``*.ann`` pair of a brat folder, as sentences (files in name order)."""
    examples = []
    texts = sorted(folder.glob("*.txt"))
    for txt in texts:
        ann = txt.with_suffix(".ann")
        if not ann.exists():
            raise DataError(f"{ann}: missing annotation file for {txt.name}; every .txt needs its .ann")
        examples.extend(brat_to_sentences(read_text(txt), parse_ann(ann), txt))
    return nonempty("train", examples, f"{folder} (*.txt + *.ann)")


def read_iob2(path: Path) -> list[Example]:
    """A ``word<TAB>tag`` file with blank lines between sentences (``###MEDLINE`` lines are skipped)."""
    examples, words, tags, first = [], [], [], 1
    for line, raw in read_lines(path):
        if not raw.strip() or raw.startswith("###MEDLINE"):
            if words:
                examples.append(Example(text=" ".join(words), words=tuple(words), label=tuple(tags),
                                        id=f"{path.name}:{first}"))
                words, tags = [], []
            continue
        fields = raw.split("\t")
        if len(fields) != 2 or not fields[0]:
            raise row_error(path, line, f"expected 'word<TAB>tag', found {len(fields)} columns: {raw!r}")
        if fields[1] not in BIO_LABELS:
            raise row_error(path, line, f"unknown tag {fields[1]!r}; expected one of {BIO_LABELS}")
        if not words:
            first = line
        words.append(fields[0])
        tags.append(BIO_LABELS.index(fields[1]))
    if words:
        examples.append(Example(text=" ".join(words), words=tuple(words), label=tuple(tags),
                                id=f"{path.name}:{first}"))
    return nonempty("test", examples, path)


def read_bionlp2004(root: Path):
    """Train from ``train/*.txt + *.ann``; test = ``test/Genia4EReval1.iob2`` (3,856 sentences)."""
    splits = {"train": read_brat_folder(root / "train"), "test": read_iob2(root / "test" / "Genia4EReval1.iob2")}
    return splits, list(BIO_LABELS)
