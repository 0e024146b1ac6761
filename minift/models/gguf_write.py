"""Write a minift causal LM as a llama.cpp GGUF file: the inverse of ``gguf.py``.

What llama.cpp's ``convert_hf_to_gguf.py`` writes for a Llama-style model, driven by the family's ``GGUFSpec``
(``registry.py``; no family is named here):

- metadata: ``general.architecture`` (the spec's ``arch``), ``general.file_type``, ``general.quantization_version``
  and the ``<arch>.*`` keys of :data:`CONFIG_KEYS` (the ones ``gguf.py`` reads back), ``<arch>.attention.key_length``
  / ``value_length`` when ``head_dim`` is not ``hidden_size / num_heads``, and linear RoPE scaling; Llama 3 RoPE
  scaling is stored, as llama.cpp does, as per-frequency divisors in a ``rope_freqs.weight`` tensor;
- the tokenizer: ``tokenizer.ggml.*`` and ``tokenizer.chat_template``, copied from the source GGUF
  (:func:`vocab_from_gguf`) or built from a byte-level BPE ``tokenizers.Tokenizer`` (:func:`vocab_from_tokenizer`:
  model ``gpt2``, the ``pre`` name ``gguf.py`` maps back to the same split, tokens padded to the model's vocabulary
  with ``[PAD<i>]`` as llama.cpp does, token types, merges, special ids, ``add_bos_token``);
- the tensors under llama.cpp names (the spec's ``tensors`` table read backwards), Q/K rows permuted when the spec
  says so (:func:`minift.models.gguf.permute_qk`), a tied LM head left out. As convert_hf_to_gguf.py: 1-D tensors
  and norms stay F32; the rest is F32, F16 or Q8_0 (``--dtype``), a row that Q8_0's 32-value blocks do not divide
  falling back to F16.

The model must be plain (a LoRA merged and swapped back to ``nn.Linear``, see ``minift.export``): any state key the
family's table does not name is an error listing the keys. The file is written to a temporary name and renamed.
"""
from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from minift.models.gguf import _CONTROL, _LLAMA3_SPLIT, _PRE_TOKENIZERS, _USER_DEFINED, _gguf, _reader, permute_qk
from minift.models.rope import rope_inv_freq, rope_type_of
from minift.models.task_model import TaskModel

DTYPES = ("f32", "f16", "q8_0")  # --dtype of python -m minift.export --format gguf
_NORMAL, _UNUSED = 1, 5  # tokenizer.ggml.token_type values (llama.cpp's llama_token_type)

# ModelConfig field → ``<arch>.`` metadata key, as convert_hf_to_gguf.py writes them for a Llama-style model (and
# gguf.gguf_config reads them back).
CONFIG_KEYS = {
    "max_position_embeddings": "context_length",
    "hidden_size": "embedding_length",
    "num_layers": "block_count",
    "intermediate_size": "feed_forward_length",
    "num_heads": "attention.head_count",
    "num_kv_heads": "attention.head_count_kv",
    "layer_norm_eps": "attention.layer_norm_rms_epsilon",
    "rope_theta": "rope.freq_base",
    "vocab_size": "vocab_size",
    "head_dim": "rope.dimension_count",
}


class GGUFWriteError(ValueError):
    """A model or tokenizer that cannot be written as a GGUF file, with what to do instead."""


# --- the tokenizer -------------------------------------------------------------------------------------------------
# A vocabulary is the list of metadata fields to write: (key, value, GGUFValueType, array item type or None).

def vocab_from_gguf(path: str | Path) -> list[tuple]:
    """Every ``tokenizer.*`` field of a GGUF file (``tokenizer.ggml.*``, ``tokenizer.chat_template``), as stored."""
    gguf = _gguf()
    fields = []
    for key, field in _reader(path).fields.items():
        if key.startswith("tokenizer."):
            vtype = field.types[0]
            item = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
            fields.append((key, field.contents(), vtype, item))
    if not any(key == "tokenizer.ggml.tokens" for key, *_ in fields):
        raise GGUFWriteError(f"{path} holds no tokenizer (tokenizer.ggml.tokens); nothing to copy into the export")
    return fields


def pre_tokenizer_name(pre_tokenizer: dict | None) -> str:
    """The ``tokenizer.ggml.pre`` that ``gguf.py`` (and llama.cpp) split text with as this byte-level
    pre-tokenizer (a ``tokenizer.json`` ``pre_tokenizer`` object) does: GPT-2's regex (``gpt2``), GPT-2's with each
    digit alone (``smollm``), or Llama 3's split (``llama3``)."""
    pre = pre_tokenizer or {}
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    digits = bool(steps) and steps[0].get("type") == "Digits" and bool(steps[0].get("individual_digits"))
    steps = steps[1:] if digits else steps
    kinds = [step.get("type") for step in steps]
    prefix = any(step.get("add_prefix_space") for step in steps if step.get("type") == "ByteLevel")
    split = None
    if kinds == ["ByteLevel"] and steps[0].get("use_regex", True):
        split = "gpt2"
    elif (kinds == ["Split", "ByteLevel"] and (steps[0].get("pattern") or {}).get("Regex") == _LLAMA3_SPLIT
          and not steps[1].get("use_regex", True)):
        split = "llama3"
    name = next((n for n, sig in _PRE_TOKENIZERS.items() if sig == (split, digits) and n != "default"), None)
    if name is None or prefix:
        raise GGUFWriteError(f"this tokenizer's pre-tokenizer ({json.dumps(pre)[:200]}) has no llama.cpp name that "
                             "minift reads back the same way (it knows GPT-2's, SmolLM's and Llama 3's splits, without "
                             "add_prefix_space); export --format hf instead")
    return name


def _special_id(value) -> int | None:
    if isinstance(value, (list, tuple)):
        value = value[0] if value else None
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else None


def vocab_from_tokenizer(tokenizer, config, chat_template: str | None = None) -> list[tuple]:
    """The ``tokenizer.*`` fields of a byte-level BPE ``tokenizers.Tokenizer`` (GPT-2, SmolLM, Llama 3, Qwen2 style),
    as convert_hf_to_gguf.py's ``_set_vocab_gpt2`` writes them.

    Args:
        tokenizer: the model's ``tokenizers.Tokenizer``.
        config: its ``ModelConfig`` (vocabulary size; bos / eos / pad ids).
        chat_template: written as ``tokenizer.chat_template`` when given.
    """
    gguf = _gguf()
    V = gguf.GGUFValueType
    data = json.loads(tokenizer.to_str())
    model = data.get("model") or {}
    if model.get("type") != "BPE" or model.get("byte_fallback"):
        kind = f"{model.get('type')!r}{' with byte fallback (SentencePiece)' if model.get('byte_fallback') else ''}"
        raise GGUFWriteError(f"minift writes GGUF tokenizers for byte-level BPE vocabularies only; this one is {kind}: "
                             "export --format hf, or convert with llama.cpp's convert_hf_to_gguf.py")
    pre = pre_tokenizer_name(data.get("pre_tokenizer"))
    vocab = tokenizer.get_vocab(with_added_tokens=True)
    if max(vocab.values()) >= config.vocab_size:
        raise GGUFWriteError(f"the tokenizer has ids up to {max(vocab.values())} but the model only "
                             f"{config.vocab_size} embeddings: they do not belong together")
    by_id = {i: token for token, i in vocab.items()}
    added = {item["id"]: item for item in data.get("added_tokens") or []}
    tokens, types = [], []
    for i in range(config.vocab_size):  # ids the tokenizer lacks are padding rows, as llama.cpp writes them
        tokens.append(by_id.get(i, f"[PAD{i}]"))
        kind = _NORMAL if i in by_id else _UNUSED
        if i in added:
            kind = _CONTROL if added[i].get("special") else _USER_DEFINED
        types.append(kind)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges") or []]
    processor = data.get("post_processor") or {}
    single = (processor.get("single") or []) if processor.get("type") == "TemplateProcessing" else []
    fields = [("tokenizer.ggml.model", "gpt2", V.STRING, None), ("tokenizer.ggml.pre", pre, V.STRING, None),
              ("tokenizer.ggml.tokens", tokens, V.ARRAY, V.STRING), ("tokenizer.ggml.token_type", types, V.ARRAY,
                                                                     V.INT32)]
    if merges:
        fields.append(("tokenizer.ggml.merges", merges, V.ARRAY, V.STRING))
    unk = vocab.get(model["unk_token"]) if model.get("unk_token") else None
    for key, value in (("bos", config.bos_token_id), ("eos", config.eos_token_id), ("unknown", unk),
                       ("padding", config.pad_token_id)):
        if _special_id(value) is not None:
            fields.append((f"tokenizer.ggml.{key}_token_id", _special_id(value), V.UINT32, None))
    fields.append(("tokenizer.ggml.add_bos_token", bool(single) and "SpecialToken" in single[0], V.BOOL, None))
    if chat_template:
        fields.append(("tokenizer.chat_template", chat_template, V.STRING, None))
    return fields


# --- the model -----------------------------------------------------------------------------------------------------

def check_writable(model: TaskModel) -> None:
    """Raise ``GGUFWriteError`` unless ``model`` is a causal LM llama.cpp runs as minift does (family, head,
    attention span, RoPE scaling)."""
    if not isinstance(model, TaskModel):
        raise GGUFWriteError(f"write_gguf takes a plain minift TaskModel (LoRA merged), got {type(model).__name__}")
    family, config = model.family, model.config
    if family.gguf is None:
        raise GGUFWriteError(f"llama.cpp has no GGUF architecture minift writes for {config.model_type!r} models; "
                             "export --format hf instead")
    if model.head_kind != "causal-lm":
        raise GGUFWriteError(f"a GGUF file holds a language model; this model has a {model.head_kind!r} head. Export "
                             "--format hf (or peft) for a task head")
    if config.attention_layers and "local" in config.attention_layers:
        raise GGUFWriteError(f"this model attends to a sliding window of {config.window_size} tokens on some layers; "
                             f"llama.cpp's {family.gguf.arch!r} architecture would attend to everything, so the GGUF "
                             "model would differ. Export --format hf instead")
    rope_type = rope_type_of(config.rope_scaling)
    if rope_type not in ("default", "linear", "llama3"):
        raise GGUFWriteError(f"RoPE scaling {rope_type!r} has no GGUF form minift writes (default, linear, llama3)")


def _metadata(writer, model: TaskModel) -> None:
    config, arch = model.config, model.family.gguf.arch
    for name, key in CONFIG_KEYS.items():
        value = getattr(config, name)
        if isinstance(value, float):
            writer.add_float32(f"{arch}.{key}", value)
        else:
            writer.add_uint32(f"{arch}.{key}", int(value))
    if config.head_dim * config.num_heads != config.hidden_size:
        writer.add_uint32(f"{arch}.attention.key_length", config.head_dim)
        writer.add_uint32(f"{arch}.attention.value_length", config.head_dim)
    if rope_type_of(config.rope_scaling) == "linear":
        writer.add_string(f"{arch}.rope.scaling.type", "linear")
        writer.add_float32(f"{arch}.rope.scaling.factor", float(config.rope_scaling["factor"]))


def _rope_freqs(model: TaskModel) -> torch.Tensor | None:
    """llama.cpp's ``rope_freqs.weight`` for Llama 3 RoPE scaling: the divisors of the base inverse frequencies."""
    config = model.config
    if rope_type_of(config.rope_scaling) != "llama3":
        return None
    base = rope_inv_freq(config.head_dim, config.rope_theta)
    return base / rope_inv_freq(config.head_dim, config.rope_theta, config.rope_scaling,
                                config.max_position_embeddings)


def gguf_tensors(model: TaskModel) -> Iterator[tuple[str, torch.Tensor]]:
    """(llama.cpp name, fp32 CPU tensor in GGUF layout) for every tensor of ``model``, by the family's table.

    Raises:
        GGUFWriteError: state keys the table does not name (e.g. unmerged LoRA matrices), listed.
    """
    spec, config = model.family.gguf, model.config
    # "model.layers.{i}.self_attn.q_proj" → a pattern with the block index as a group, then weight or bias
    table = [(re.compile(re.escape(hf).replace(r"\{i\}", r"(\d+)") + r"\.(weight|bias)$"), name)
             for name, hf in spec.tensors.items()]
    tied = {model.head_spec.key + ".weight"} if model.is_tied else set()
    found, unknown = [], []
    for key, tensor in model.state_dict().items():
        if key in tied:
            continue
        match = next(((m, name) for pattern, name in table if (m := pattern.fullmatch(key))), None)
        if match is None:
            unknown.append(key)
            continue
        m, name = match
        base = name.format(i=m.group(1)) if m.re.groups == 2 else name
        found.append((f"{base}.{m.group(m.re.groups)}", base, tensor))
    if unknown:
        raise GGUFWriteError(f"model tensors with no llama.cpp name in the {spec.arch!r} table: {unknown[:10]}; merge "
                             "LoRA and swap its layers back to nn.Linear first (minift.export does), or export "
                             "--format hf")
    factors = _rope_freqs(model)
    if factors is not None:
        yield "rope_freqs.weight", factors
    for name, base, tensor in found:
        t = tensor.detach().to("cpu", torch.float32)
        if spec.permute_qk and base.endswith("attn_q"):
            t = permute_qk(t, config.num_heads)
        elif spec.permute_qk and base.endswith("attn_k"):
            t = permute_qk(t, config.num_kv_heads)
        yield name, t


def _encoded(name: str, tensor: torch.Tensor, dtype: str) -> tuple[np.ndarray, Any]:
    """(array, raw GGML type) of a tensor in the file's ``dtype``, by convert_hf_to_gguf.py's rules."""
    gguf = _gguf()
    Q = gguf.GGMLQuantizationType
    array = tensor.numpy()
    if array.ndim <= 1 or name.endswith("_norm.weight") or dtype == "f32":
        return array, Q.F32
    if dtype == "q8_0":
        try:
            return gguf.quants.quantize(array, Q.Q8_0), Q.Q8_0
        except gguf.QuantError:  # rows not a multiple of 32 values: F16, as convert_hf_to_gguf.py falls back
            pass
    return array.astype(np.float16), Q.F16


def write_gguf(model: TaskModel, path: str | Path, vocab: list[tuple], dtype: str = "f16",
               name: str | None = None) -> Path:
    """Write ``model`` (a plain causal-LM ``TaskModel``) and ``vocab`` as a llama.cpp GGUF file.

    Args:
        model: a decoder of a family with a ``GGUFSpec``, causal-LM head, no PEFT layers (merge LoRA first).
        path: the ``.gguf`` file; written to a temporary name beside it, then renamed.
        vocab: the tokenizer fields, from :func:`vocab_from_gguf` or :func:`vocab_from_tokenizer`.
        dtype: "f32", "f16" or "q8_0" for the 2-D weights (1-D tensors and norms stay F32).
        name: ``general.name``.

    Returns:
        The path written.
    """
    if dtype not in DTYPES:
        raise GGUFWriteError(f"GGUF dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    check_writable(model)
    gguf = _gguf()
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    file_type = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                 "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[dtype]
    writer = gguf.GGUFWriter(str(tmp), model.family.gguf.arch)
    try:
        writer.add_type(gguf.GGUFType.MODEL)
        writer.add_name(name or path.stem)
        _metadata(writer, model)
        writer.add_file_type(file_type)
        for key, value, vtype, item in vocab:
            writer.add_key_value(key, value, vtype, sub_type=item)
        with torch.no_grad():
            for tensor_name, tensor in gguf_tensors(model):
                array, raw = _encoded(tensor_name, tensor, dtype)
                writer.add_tensor(tensor_name, array, raw_dtype=raw)
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(tmp, path)
    except BaseException:
        writer.close()
        tmp.unlink(missing_ok=True)
        raise
    return path
