"""Load llama.cpp GGUF files: dequantized weights as a ``TaskModel`` and the tokenizer from the metadata.

GGUF (https://github.com/ggml-org/ggml/blob/master/docs/gguf.md) stores the config as ``<arch>.*`` metadata,
the tokenizer as ``tokenizer.ggml.*`` metadata and the tensors under llama.cpp names, possibly quantized.  We
read it with the ``gguf`` package (an optional dependency: ``pip install "minift[gguf]"``), dequantize with
``gguf.quants.dequantize``, rename with the table of the family whose ``GGUFSpec.arch`` is the file's
``general.architecture`` and, for LLaMA-architecture files (``GGUFSpec.permute_qk``), undo the permutation
llama.cpp's ``convert_hf_to_gguf.py`` applies to the Q and K projections (it interleaves the two rotary halves
of each head; HF keeps them as halves).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from minift.models.config import ModelConfig
from minift.models.errors import CheckpointError, ConfigError, ModelLoadError
from minift.models.registry import HEAD_KINDS, Family, families, gguf_family
from minift.models.task_model import TaskModel

# tokenizer.ggml.pre → how llama.cpp splits text before byte-level BPE (llama-vocab.cpp's regex_exprs).
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_PRE_TOKENIZERS = {
    **dict.fromkeys(("default", "gpt2", "gpt-2", "mpt", "olmo", "jais"), ("gpt2", False)),
    **dict.fromkeys(("smollm", "starcoder", "refact", "command-r", "codeshell", "exaone"), ("gpt2", True)),
    **dict.fromkeys(("llama3", "llama-v3", "llama-bpe", "smaug-bpe", "dbrx", "falcon3"), ("llama3", False)),
}
_CONTROL, _USER_DEFINED = 3, 4  # tokenizer.ggml.token_type values (llama.cpp's llama_token_type)


def _gguf():
    try:
        import gguf
    except ImportError as e:
        raise ModelLoadError('reading .gguf files needs the optional "gguf" package: pip install "minift[gguf]"') from e
    return gguf


def _reader(path: str | Path):
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"GGUF file {path} does not exist")
    gguf = _gguf()
    try:
        return gguf.GGUFReader(str(path))
    except Exception as e:  # the reader raises ValueError/struct errors/IndexError on bad files
        raise CheckpointError(f"cannot read {path} as GGUF ({type(e).__name__}: {e}); the file is truncated or "
                              "not a GGUF file: download it again") from e


def _meta(reader, key: str, default: Any = None) -> Any:
    """The value of metadata ``key`` (scalars as Python numbers/str, arrays as lists), or ``default``."""
    field = reader.fields.get(key)
    return default if field is None else field.contents()


def gguf_config(reader, path: str | Path = "<gguf>") -> ModelConfig:
    """The ``ModelConfig`` of a GGUF file, from its ``<arch>.*`` and ``tokenizer.ggml.*`` metadata."""
    arch = _meta(reader, "general.architecture")
    family = gguf_family(arch)
    if family is None:
        known = [fam.gguf.arch for fam in families() if fam.gguf is not None]
        raise ConfigError(f"{path}: GGUF architecture {arch!r} is not supported; minift reads {known} GGUF files "
                          "(convert other models from their HF folder)")

    def need(key: str):
        value = _meta(reader, f"{arch}.{key}")
        if value is None:
            raise ConfigError(f"{path}: GGUF metadata lacks '{arch}.{key}'; the file is incomplete")
        return value

    names = {t.name for t in reader.tensors}
    num_heads = int(need("attention.head_count"))
    hidden = int(need("embedding_length"))
    values = {  # ModelConfig fields, from the metadata keys llama.cpp writes for every architecture
        "vocab_size": int(_tensor(reader, "token_embd.weight").shape[-1]),  # GGUF lists the innermost dim first
        "hidden_size": hidden,
        "intermediate_size": int(need("feed_forward_length")),
        "num_layers": int(need("block_count")),
        "num_heads": num_heads,
        "num_kv_heads": int(_meta(reader, f"{arch}.attention.head_count_kv", num_heads)),
        "head_dim": int(_meta(reader, f"{arch}.attention.key_length", hidden // num_heads)),
        "max_position_embeddings": int(_meta(reader, f"{arch}.context_length", 2048)),
        "layer_norm_eps": float(_meta(reader, f"{arch}.attention.layer_norm_rms_epsilon", 1e-5)),
        "attention_bias": "blk.0.attn_q.bias" in names,
        "mlp_bias": "blk.0.ffn_up.bias" in names,
    }
    d = {family.config_keys[name][0]: value for name, value in values.items() if name in family.config_keys}
    d.update({"model_type": family.model_type, "architectures": [family.heads["causal-lm"].hf_class],
              "vocab_size": values["vocab_size"], "tie_word_embeddings": "output.weight" not in names,
              "rope_theta": float(_meta(reader, f"{arch}.rope.freq_base", 10000.0))})
    scaling = _meta(reader, f"{arch}.rope.scaling.type")
    if scaling not in (None, "none"):
        if scaling != "linear":
            raise ConfigError(f"{path}: GGUF rope scaling {scaling!r} is not supported (only 'linear')")
        d["rope_scaling"] = {"type": "linear", "factor": float(need("rope.scaling.factor"))}
    for key in ("bos", "eos", "padding"):
        value = _meta(reader, f"tokenizer.ggml.{key}_token_id")
        if value is not None:
            d[{"padding": "pad"}.get(key, key) + "_token_id"] = int(value)
    return ModelConfig.from_hf(d)


def _tensor(reader, name: str):
    for t in reader.tensors:
        if t.name == name:
            return t
    raise CheckpointError(f"GGUF has no tensor {name!r}; the file is incomplete or not a model minift reads")


def _hf_name(name: str, family: Family) -> str | None:
    """llama.cpp tensor name → HF key by the family's table, or None when the table lacks it."""
    base, _, param = name.rpartition(".")
    match = re.fullmatch(r"blk\.(\d+)\.(\w+)", base)
    key = f"blk.{{i}}.{match.group(2)}" if match else base
    tensors = family.gguf.tensors
    if key not in tensors:
        return None
    return tensors[key].format(i=match.group(1) if match else "") + "." + param


def unpermute_qk(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """Undo ``convert_hf_to_gguf.py``'s ``permute``: per head, rows ``(2, hs/2)`` were stored as ``(hs/2, 2)``.

    Args:
        w: (n_head * hs, in) weight or (n_head * hs,) bias as stored in the GGUF.
        n_head: heads of this projection (``num_kv_heads`` for K).

    Returns:
        the HF layout, same shape.
    """
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def permute_qk(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """llama.cpp's ``permute`` (HF → GGUF layout), the inverse of :func:`unpermute_qk`; used to write GGUFs."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_tensors(reader, config: ModelConfig):
    """Every tensor of the GGUF as ``(HF key, fp32 tensor)``, one at a time: dequantized, renamed and un-permuted.

    Raises:
        CheckpointError: a tensor name not in the family's ``GGUFSpec.tensors`` (nor its ``skip``), listing them
            (after the known tensors).
    """
    gguf = _gguf()
    family = gguf_family(_meta(reader, "general.architecture"))
    spec = family.gguf
    unknown = []
    for t in reader.tensors:
        if any(re.search(p, t.name) for p in spec.skip):
            continue
        key = _hf_name(t.name, family)
        if key is None:
            unknown.append(t.name)
            continue
        shape = tuple(int(n) for n in reversed(t.shape))  # GGUF lists dims innermost first
        try:
            # a plain ndarray view: numpy's memmap subclass makes dequantize's many small slices slow
            array = gguf.quants.dequantize(np.asarray(t.data), t.tensor_type)
        except NotImplementedError as e:
            raise CheckpointError(f"tensor {t.name} uses quantization {t.tensor_type.name}, which the installed "
                                  f"gguf package cannot dequantize ({e}); upgrade gguf or use another file") from e
        array = np.ascontiguousarray(array, dtype=np.float32).reshape(shape)
        if not array.flags.writeable:  # an F32 tensor is a view of the read-only memory map
            array = array.copy()
        tensor = torch.from_numpy(array)
        if spec.permute_qk and key.endswith(("q_proj.weight", "q_proj.bias")):
            tensor = unpermute_qk(tensor, config.num_heads)
        elif spec.permute_qk and key.endswith(("k_proj.weight", "k_proj.bias")):
            tensor = unpermute_qk(tensor, config.num_kv_heads)
        yield key, tensor
    if unknown:
        raise CheckpointError(f"GGUF tensors not in minift's {spec.arch} table: {unknown[:20]}; the file holds "
                              "tensors this architecture does not have")


def read_gguf_state(reader, config: ModelConfig, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """Every tensor of the GGUF (``gguf_tensors``) in ``dtype``, by HF key."""
    return {key: tensor.to(dtype) for key, tensor in gguf_tensors(reader, config)}


def _rope_freq_factors(reader) -> torch.Tensor | None:
    """llama3-style rope frequency factors (``rope_freqs.weight``): inv_freq is divided by them."""
    for t in reader.tensors:
        if t.name == "rope_freqs.weight":
            return torch.tensor(np.asarray(_gguf().quants.dequantize(t.data, t.tensor_type), dtype=np.float32))
    return None


def load_gguf(path: str | Path, dtype: torch.dtype | str | None = None, device: str | torch.device | None = None,
              head: str | None = None, num_labels: int | None = None, quantize=None) -> TaskModel:
    """Load a GGUF of a supported architecture as a minift ``TaskModel`` (weights dequantized to ``dtype``).

    Args:
        path: the ``.gguf`` file.
        dtype: parameter dtype (None → float32).
        device: where the weights go (None → cpu).
        head: None / "causal-lm" (the default), "classification" or "regression" (a fresh ``score``).
        num_labels: outputs of a classification head.
        quantize: None, "nf4" or a ``minift.quant.NF4Config``: the block linears become NF4 layers, each quantised
            from its dequantized fp32 tensor as soon as it is read (``load_pretrained``).

    Returns:
        The model in eval mode, with ``fresh_keys`` and ``skipped_keys`` recorded like ``load_pretrained``.
    """
    from minift.models.load import assign_state, build_model, configure_labels, resolve_dtype, state_quantizer

    dtype = resolve_dtype(dtype)
    device = torch.device(device if device is not None else "cpu")
    if head is not None and head not in HEAD_KINDS:
        raise ModelLoadError(f"unknown head {head!r}; use one of {', '.join(HEAD_KINDS)} or None")
    reader = _reader(path)
    config = gguf_config(reader, path)
    family = gguf_family(_meta(reader, "general.architecture"))
    head = head if head is not None else family.default_head
    config = configure_labels(config, head, num_labels)
    with torch.device("meta"):
        model = build_model(config, family, head)
    quantizer = state_quantizer(model, quantize, dtype)
    expected = {k: v.shape for k, v in model.state_dict().items()}
    tied = {model.head_spec.key + ".weight"} if model.is_tied else set()  # shares the embedding, filled below
    state, loaded, skipped, mis_shaped = {}, set(), [], []
    for key, tensor in gguf_tensors(reader, config):
        if key not in expected or key in tied:
            skipped.append(key)  # the LM head of a GGUF loaded with another head, or tied
        elif tuple(tensor.shape) != tuple(expected[key]):
            mis_shaped.append(f"{key}: file {tuple(tensor.shape)} vs model {tuple(expected[key])}")
        elif quantizer is not None and quantizer.quantizes(key):
            state.update(quantizer.convert(key, tensor.to(device)))  # the fp32 tensor is dropped here
        else:
            state[key] = tensor.to(device=device, dtype=dtype)
        loaded.add(key)
    head_prefix = model.head_spec.key + "." if model.head_spec else None
    fresh = [k for k in expected if k not in loaded and k not in tied and head_prefix and k.startswith(head_prefix)]
    missing = sorted(k for k in expected if k not in loaded and k not in fresh and k not in tied)
    if missing or mis_shaped:
        raise CheckpointError(f"{path} does not match its own metadata: missing {missing[:20]}, "
                              f"mis-shaped {mis_shaped[:20]}; the file is damaged or uses an unsupported layout")
    if quantizer is not None:
        model = quantizer.finish(model)
    model = assign_state(model, state, fresh, skipped, dtype, device)
    factors = _rope_freq_factors(reader)
    if factors is not None:
        rotary = model.backbone.rotary_emb
        rotary.inv_freq = rotary.inv_freq / factors
    return model


def load_gguf_tokenizer(path: str | Path):
    """A ``tokenizers.Tokenizer`` rebuilt from the GGUF's ``tokenizer.ggml.*`` metadata.

    Supports byte-level BPE (``tokenizer.ggml.model == "gpt2"``: GPT-2, SmolLM, Llama 3, ...) with the
    pre-tokenizer split llama.cpp uses for ``tokenizer.ggml.pre``, and SentencePiece BPE (``"llama"``: Llama 2,
    TinyLlama, Mistral, ...) with merges recovered from the token scores and byte fallback.  Control tokens
    become special tokens, user-defined tokens added tokens; BOS is prepended when
    ``tokenizer.ggml.add_bos_token`` says so (llama.cpp's default: yes for SentencePiece, no for byte-level).
    """
    from tokenizers import AddedToken, processors

    reader = _reader(path)
    kind = _meta(reader, "tokenizer.ggml.model")
    tokens = _meta(reader, "tokenizer.ggml.tokens")
    if kind not in ("gpt2", "llama"):
        raise ModelLoadError(f"{path}: GGUF tokenizer model {kind!r} is not supported; minift rebuilds byte-level "
                             "BPE ('gpt2') and SentencePiece BPE ('llama') tokenizers. Load the tokenizer.json of "
                             "the original HF model instead")
    if not tokens:
        raise ModelLoadError(f"{path}: GGUF metadata lacks tokenizer.ggml.tokens; no tokenizer to build")
    tokenizer = _byte_level_bpe(reader, path, tokens) if kind == "gpt2" else _sentencepiece_bpe(reader, path, tokens)
    types = _meta(reader, "tokenizer.ggml.token_type") or [1] * len(tokens)
    tokenizer.add_special_tokens([AddedToken(tok, special=True, normalized=False)
                                  for tok, kind in zip(tokens, types) if kind == _CONTROL])
    tokenizer.add_tokens([AddedToken(tok, special=False, normalized=False)
                          for tok, kind in zip(tokens, types) if kind == _USER_DEFINED])
    bos = _meta(reader, "tokenizer.ggml.bos_token_id")
    if _meta(reader, "tokenizer.ggml.add_bos_token", kind == "llama") and bos is not None:
        bos_token = tokens[int(bos)]
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{bos_token} $A", pair=f"{bos_token} $A {bos_token} $B:1", special_tokens=[(bos_token, int(bos))])
    elif kind == "gpt2":
        tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    return tokenizer


def _byte_level_bpe(reader, path, tokens: list[str]):
    """GPT-2-style BPE: byte-level alphabet, merges from the file, llama.cpp's split for ``tokenizer.ggml.pre``."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    pre = _meta(reader, "tokenizer.ggml.pre", "default")
    if pre not in _PRE_TOKENIZERS:
        raise ModelLoadError(f"{path}: GGUF pre-tokenizer {pre!r} is not supported (known: "
                             f"{sorted(_PRE_TOKENIZERS)}); load the tokenizer.json of the original HF model instead")
    merges = _meta(reader, "tokenizer.ggml.merges")
    if merges is None:
        raise ModelLoadError(f"{path}: GGUF metadata lacks tokenizer.ggml.merges; no BPE tokenizer to build")
    bpe = models.BPE(vocab={tok: i for i, tok in enumerate(tokens)},
                     merges=[tuple(m.split(" ", 1)) for m in merges], fuse_unk=False)
    tokenizer = Tokenizer(bpe)
    split, digits = _PRE_TOKENIZERS[pre]
    steps = [pre_tokenizers.Digits(individual_digits=True)] if digits else []
    if split == "llama3":
        steps += [pre_tokenizers.Split(Regex(_LLAMA3_SPLIT), behavior="isolated"),
                  pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
    else:  # ByteLevel's own regex is GPT-2's split
        steps.append(pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(steps)
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


def _sentencepiece_bpe(reader, path, tokens: list[str]):
    """SentencePiece BPE: "▁" for spaces, byte fallback (<0x..> tokens), merges recovered from the scores.

    SentencePiece applies the merge whose result has the highest score; a BPE merge list ordered by that score
    (ties: longer left, then longer right piece first, as transformers' ``generate_merges``) reproduces it.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    scores = _meta(reader, "tokenizer.ggml.scores")
    if scores is None or len(scores) != len(tokens):
        raise ModelLoadError(f"{path}: a SentencePiece GGUF needs tokenizer.ggml.scores for each token")
    vocab = {tok: i for i, tok in enumerate(tokens)}
    merges = []
    for piece, score in zip(tokens, scores):
        local = [(piece[:i], piece[i:], score) for i in range(1, len(piece))
                 if piece[:i] in vocab and piece[i:] in vocab]
        merges += sorted(local, key=lambda m: (vocab[m[0]], vocab[m[1]]))
    merges.sort(key=lambda m: (m[2], len(m[0]), len(m[1])), reverse=True)
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[(left, right) for left, right, _ in merges],
                                     fuse_unk=True, byte_fallback=True))
    prefix = bool(_meta(reader, "tokenizer.ggml.add_space_prefix", True))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first" if prefix else "never",
                                                       split=False)
    steps = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    tokenizer.decoder = decoders.Sequence(steps + ([decoders.Strip(content=" ", left=1)] if prefix else []))
    return tokenizer
