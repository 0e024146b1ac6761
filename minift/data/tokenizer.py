"""Load a fast ``tokenizers.Tokenizer`` from a Hugging Face model folder or a GGUF file, and find its
special token ids.

A folder is read, in this order, from ``tokenizer.json`` (padding and truncation stored in the file are
switched off: minift pads per batch and truncates per call), ``vocab.txt`` (BERT WordPiece), or
``vocab.json`` + ``merges.txt`` (byte-level BPE, post-processed as the model family says: ``Family.bpe_processor``,
the family found from ``config.json``'s ``model_type`` or ``tokenizer_config.json``'s ``tokenizer_class``).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

from minift.data.errors import DataError


def load_tokenizer(path: str | Path) -> Tokenizer:
    """The tokenizer of a model folder or ``.gguf`` file.

    Args:
        path: a Hugging Face model folder, or a ``.gguf`` file (its embedded vocabulary, read by
            ``minift.models.gguf.load_gguf_tokenizer``).

    Returns:
        A ``tokenizers.Tokenizer`` whose post-processor adds the model's special tokens
        (``[CLS] A [SEP] B [SEP]``, ``<s> A </s></s> B </s>``, nothing for GPT-2), without padding or truncation.

    Raises:
        DataError: the path does not exist or holds no tokenizer files.
    """
    path = Path(path).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        from minift.models.gguf import load_gguf_tokenizer  # lazily: gguf is an optional extra

        return load_gguf_tokenizer(path)
    if path.is_file():
        raise DataError(f"{path} is a file, not a model folder: pass the Hugging Face folder that holds config.json, "
                        "the weights and the tokenizer files (or a .gguf file)")
    if not path.is_dir():
        raise DataError(f"tokenizer not found: {path} is neither a model folder nor a .gguf file")
    if (path / "tokenizer.json").exists():
        try:
            tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
        except Exception as err:  # the tokenizers library raises its own Exception subclass for bad files
            raise DataError(f"{path / 'tokenizer.json'} cannot be read ({err}); the file is truncated or corrupt: "
                            "copy it again from the model's Hugging Face repository") from None
        tokenizer.no_padding()
        tokenizer.no_truncation()
        return tokenizer
    options = _json(path / "tokenizer_config.json")
    if (path / "vocab.txt").exists():
        return _wordpiece(path / "vocab.txt", options)
    if (path / "vocab.json").exists() and (path / "merges.txt").exists():
        return _byte_level_bpe(path, options, _bpe_processor(path, options))
    raise DataError(f"{path}: no tokenizer files; expected tokenizer.json, vocab.txt (WordPiece) or "
                    "vocab.json + merges.txt (byte-level BPE). Copy them from the model's Hugging Face repository.")


def gguf_chat_template(path: str | Path) -> str | None:
    """The Jinja chat template a ``.gguf`` file carries (its ``tokenizer.chat_template`` metadata), or None."""
    from minift.models.gguf import _meta, _reader  # lazily: gguf is an optional extra

    return _meta(_reader(path), "tokenizer.chat_template")


def _json(path: Path) -> dict:
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: not valid JSON ({err})") from None


def _bpe_processor(folder: Path, options: dict) -> str:
    """The post-processor of a byte-level BPE folder ("RobertaProcessing" or "ByteLevel"), from its model family."""
    from minift.models.registry import FAMILIES, families

    model_type = _json(folder / "config.json").get("model_type", "")
    tokenizer_class = str(options.get("tokenizer_class", ""))
    for family in families():
        named = model_type == family.model_type or tokenizer_class in family.tokenizer_classes
        if named and family.bpe_processor is not None:
            return family.bpe_processor
    raise DataError(f"{folder}: vocab.json + merges.txt found, but neither config.json's model_type "
                    f"({model_type!r}) nor tokenizer_config.json's tokenizer_class ({tokenizer_class!r}) names a "
                    f"model family with a byte-level BPE tokenizer ({', '.join(FAMILIES)}); add a config.json "
                    "with model_type")


def _wordpiece(vocab: Path, options: dict) -> Tokenizer:
    """BERT's WordPiece, as transformers' BertTokenizerFast builds it from a vocab.txt."""
    specials = {key: options.get(f"{key}_token", default) for key, default in
                (("unk", "[UNK]"), ("sep", "[SEP]"), ("cls", "[CLS]"), ("pad", "[PAD]"), ("mask", "[MASK]"))}
    tokenizer = Tokenizer(models.WordPiece.from_file(str(vocab), unk_token=specials["unk"]))
    tokenizer.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=options.get("tokenize_chinese_chars", True),
        strip_accents=options.get("strip_accents"), lowercase=options.get("do_lower_case", True))
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece(prefix="##")
    tokenizer.add_special_tokens([AddedToken(t, special=True) for t in specials.values() if t in _vocab_ids(tokenizer)])
    cls, sep = specials["cls"], specials["sep"]
    for token in (cls, sep):
        if tokenizer.token_to_id(token) is None:
            raise DataError(f"{vocab}: special token {token!r} is not in the vocabulary")
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{cls}:0 $A:0 {sep}:0", pair=f"{cls}:0 $A:0 {sep}:0 $B:1 {sep}:1",
        special_tokens=[(cls, tokenizer.token_to_id(cls)), (sep, tokenizer.token_to_id(sep))])
    return tokenizer


def _vocab_ids(tokenizer: Tokenizer) -> dict[str, int]:
    return tokenizer.get_vocab(with_added_tokens=False)


def _byte_level_bpe(folder: Path, options: dict, processor: str) -> Tokenizer:
    """Byte-level BPE as transformers' RobertaTokenizerFast ("RobertaProcessing": ``<s> A </s></s> B </s>``) or
    GPT2TokenizerFast ("ByteLevel": no special tokens added) build it."""
    tokenizer = Tokenizer(models.BPE.from_file(str(folder / "vocab.json"), str(folder / "merges.txt")))
    prefix_space = bool(options.get("add_prefix_space", False))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=prefix_space)
    tokenizer.decoder = decoders.ByteLevel()
    vocab = _vocab_ids(tokenizer)
    if processor == "RobertaProcessing":
        names = {"bos": "<s>", "eos": "</s>", "unk": "<unk>", "pad": "<pad>", "mask": "<mask>"}
        tokens = [_token(options.get(f"{k}_token", v)) for k, v in names.items()]
        tokenizer.add_special_tokens([AddedToken(t, special=True, lstrip=(k == "mask"))
                                      for k, t in zip(names, tokens) if t in vocab])
        cls, sep = _token(options.get("cls_token", "<s>")), _token(options.get("sep_token", "</s>"))
        for token in (cls, sep):
            if token not in vocab:
                raise DataError(f"{folder / 'vocab.json'}: special token {token!r} is not in the vocabulary")
        tokenizer.post_processor = processors.RobertaProcessing(
            (sep, vocab[sep]), (cls, vocab[cls]), trim_offsets=True, add_prefix_space=prefix_space)
    else:
        eos = _token(options.get("eos_token", "<|endoftext|>"))
        if eos in vocab:
            tokenizer.add_special_tokens([AddedToken(eos, special=True)])
        tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    return tokenizer


def _token(value) -> str:
    # tokenizer_config.json writes special tokens as strings or as {"content": ...} objects
    return value["content"] if isinstance(value, dict) else str(value)


@dataclass(frozen=True)
class SpecialIds:
    """Special token ids of a tokenizer (None where the vocabulary has no such token)."""

    pad: int  # padding id (the eos id when the model has no pad token, as for GPT-2; else 0)
    cls: int | None  # [CLS] / <s>
    sep: int | None  # [SEP] / </s>
    eos: int | None  # end of sequence: config's eos_token_id, else </s> / <|endoftext|> / [SEP]
    bos: int | None  # beginning of sequence: config's bos_token_id, else <s> / <|endoftext|>


_CANDIDATES = {
    "pad": ("[PAD]", "<pad>", "<|padding|>", "<|pad|>"),
    "cls": ("[CLS]", "<s>"),
    "sep": ("[SEP]", "</s>"),
    "eos": ("</s>", "<|endoftext|>", "<|end_of_text|>", "<|im_end|>", "[SEP]"),
    "bos": ("<s>", "<|begin_of_text|>", "<|endoftext|>", "<|im_start|>", "[CLS]"),
}


def special_ids(tokenizer: Tokenizer, config=None) -> SpecialIds:
    """pad/cls/sep/eos/bos ids, from the model config when it has them, else from the vocabulary.

    Args:
        tokenizer: the model's tokenizer.
        config: a ``ModelConfig``, a config.json dict, or None. Its ``pad_token_id`` / ``eos_token_id`` /
            ``bos_token_id`` win over the vocabulary (decoders such as SmolLM2 name their own eos).
    """
    def from_config(key: str):
        value = config.get(key) if isinstance(config, dict) else getattr(config, key, None)
        return value[0] if isinstance(value, (list, tuple)) and value else value

    def from_vocab(kind: str):
        for token in _CANDIDATES[kind]:
            token_id = tokenizer.token_to_id(token)
            if token_id is not None:
                return token_id
        return None

    found = {kind: from_vocab(kind) for kind in _CANDIDATES}
    for kind in ("pad", "eos", "bos"):
        value = from_config(f"{kind}_token_id") if config is not None else None
        if isinstance(value, int) and 0 <= value < tokenizer.get_vocab_size(with_added_tokens=True):
            found[kind] = value
    if found["pad"] is None:
        found["pad"] = found["eos"] if found["eos"] is not None else 0
    return SpecialIds(**found)


def uses_token_type_ids(tokenizer: Tokenizer) -> bool:
    """True for BERT-style post-processors: ``[CLS] A [SEP]`` with the second text of a pair on type id 1.

    False for RoBERTa, GPT-2, and Llama-style templates (``<s> A`` / ``<s> A <s> B:1``): those models have no
    token-type embedding to feed, whatever type ids their template writes.
    """
    processor = json.loads(tokenizer.to_str()).get("post_processor") or {}
    return _bert_style(processor)


def _bert_style(processor: dict) -> bool:
    kind = processor.get("type")
    if kind == "BertProcessing":
        return True
    if kind == "TemplateProcessing":
        single, pair = processor.get("single", []), processor.get("pair", [])
        separator_after_a = bool(single) and "SpecialToken" in single[-1]
        second_type = any(piece.get(name, {}).get("type_id", 0) == 1 for piece in pair
                          for name in ("Sequence", "SpecialToken"))
        return separator_after_a and second_type
    if kind == "Sequence":
        return any(_bert_style(p) for p in processor.get("processors", []))
    return False
