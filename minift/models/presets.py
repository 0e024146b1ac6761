"""Model shapes by name: published presets, HF folders, GGUF files, or a bare parameter count.

``resolve_model(name_or_path)`` returns ``(ModelConfig, description)``. Presets are the published
``config.json`` values of the checkpoints (only the shape fields a model is built from); their parameter counts
are checked against the published sizes in ``tests/memory/test_params.py``. ``shape_for_params(n)`` picks a
Llama-3-style decoder of about ``n`` parameters and says which. ``python -m minift.memory`` answers for these;
they are data, so they live with the models.
"""
from __future__ import annotations

import json
from pathlib import Path

from minift.models.config import ModelConfig
from minift.models.errors import ModelLoadError

_LLAMA3 = {"model_type": "llama", "vocab_size": 128256, "hidden_act": "silu", "rms_norm_eps": 1e-5,
           "rope_theta": 500000.0, "max_position_embeddings": 131072, "attention_bias": False, "mlp_bias": False}
_BERT = {"model_type": "bert", "vocab_size": 30522, "hidden_size": 768, "num_hidden_layers": 12,
         "num_attention_heads": 12, "intermediate_size": 3072, "max_position_embeddings": 512, "type_vocab_size": 2,
         "hidden_act": "gelu", "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1}
_ROBERTA = {**_BERT, "model_type": "roberta", "vocab_size": 50265, "max_position_embeddings": 514,
            "type_vocab_size": 1, "pad_token_id": 1, "layer_norm_eps": 1e-5}

PRESETS: dict[str, dict] = {
    # bert-base-uncased (google-bert/bert-base-uncased config.json): 109,482,240 parameters with the pooler.
    "bert-base": dict(_BERT),
    # google-bert/bert-base-uncased under its hub name (the same shape).
    "bert-base-uncased": dict(_BERT),
    # allenai/scibert_scivocab_uncased: BERT-base with its 31,090-token SciVocab; 109,918,464 with the pooler.
    "scibert": {**_BERT, "vocab_size": 31090},
    # FacebookAI/roberta-base: 124,645,632 parameters with the pooler.
    "roberta-base": dict(_ROBERTA),
    # FacebookAI/roberta-large: 355,359,744 parameters with the pooler.
    "roberta-large": {**_ROBERTA, "hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16,
                      "intermediate_size": 4096},
    # openai-community/gpt2: 124,439,808 parameters.
    "gpt2": {"model_type": "gpt2", "vocab_size": 50257, "n_embd": 768, "n_layer": 12, "n_head": 12,
             "n_positions": 1024, "activation_function": "gelu_new"},
    # EleutherAI/gpt-neo-1.3B: 1,315,575,808 parameters.
    "gpt-neo-1.3b": {"model_type": "gpt_neo", "vocab_size": 50257, "hidden_size": 2048, "num_layers": 24,
                     "num_heads": 16, "max_position_embeddings": 2048, "window_size": 256,
                     "attention_types": [[["global", "local"], 12]], "activation_function": "gelu_new",
                     "embed_dropout": 0.0, "resid_dropout": 0.0, "attention_dropout": 0.0},
    # meta-llama/Llama-3.2-1B: 1,235,814,400 parameters (tied embeddings).
    "llama-3.2-1b": {**_LLAMA3, "hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16,
                     "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 64,
                     "tie_word_embeddings": True},
    # meta-llama/Llama-3.2-3B: 3,212,749,824 parameters (tied embeddings).
    "llama-3.2-3b": {**_LLAMA3, "hidden_size": 3072, "intermediate_size": 8192, "num_hidden_layers": 28,
                     "num_attention_heads": 24, "num_key_value_heads": 8, "head_dim": 128,
                     "tie_word_embeddings": True},
    # meta-llama/Meta-Llama-3-8B: 8,030,261,248 parameters.
    "llama-3-8b": {**_LLAMA3, "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
                   "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128,
                   "tie_word_embeddings": False, "max_position_embeddings": 8192},
}


def resolve_model(spec: str) -> tuple[ModelConfig, str]:
    """A ``ModelConfig`` from a preset name, an HF folder (``config.json``), a ``config.json`` file or a ``.gguf``.

    Raises:
        ValueError: the name is neither a preset nor an existing path (the message lists the presets).
    """
    key = spec.lower()
    if key in PRESETS:
        return ModelConfig.from_hf(dict(PRESETS[key])), f"preset {key} (published config.json shape)"
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ValueError(f"{path} has no config.json; pass a Hugging Face model folder, a .gguf file or a "
                             f"preset ({', '.join(PRESETS)})")
        path = path / "config.json"
    if path.is_file() and path.suffix == ".gguf":
        from minift.models.gguf import _reader, gguf_config

        return gguf_config(_reader(path), path), f"GGUF metadata of {path}"
    if path.is_file():
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{path} is not a valid JSON config ({e}); pass a Hugging Face config.json") from e
        try:
            return ModelConfig.from_hf(data), f"config {path}"
        except ModelLoadError as e:
            raise ValueError(f"{path}: {e}") from e
    raise ValueError(f"unknown model {spec!r}: not a preset ({', '.join(PRESETS)}) and no such file or folder; "
                     "pass a preset name, a Hugging Face model folder, a config.json or a .gguf file, "
                     "or use --params N for a typical shape")


_WIDTHS = (512, 768, 1024, 1536, 2048, 2560, 3072, 4096, 5120, 6144, 8192, 12288, 16384)  # common model widths


def shape_for_params(n: float) -> tuple[ModelConfig, str]:
    """A Llama-3-style decoder (128k vocabulary, GQA with 8 KV heads, head_dim 128, SwiGLU with F ≈ 8/3·C
    rounded to 256, a common width with about 110 channels per layer, embeddings tied below 5B) of about ``n``
    parameters.

    Raises:
        ValueError: ``n`` is not a number between 10M and 1T.
    """
    try:
        n = float(n)
    except (TypeError, ValueError):
        raise ValueError(f"--params must be a number such as 3e9, got {n!r}") from None
    if not 1e7 <= n <= 1e12:
        raise ValueError(f"--params {n:g} is outside the range this shape rule covers (1e7 to 1e12 parameters)")
    best = None
    for C in _WIDTHS:
        heads = C // 128 if C >= 1024 else C // 64
        F = round(8 / 3 * C / 256) * 256 or 256
        tied = n < 5e9
        d = {**_LLAMA3, "hidden_size": C, "intermediate_size": F, "num_attention_heads": heads,
             "num_key_value_heads": 8 if heads % 8 == 0 else heads, "head_dim": C // heads,
             "tie_word_embeddings": tied, "num_hidden_layers": max(1, round(C / 110))}
        embed = d["vocab_size"] * C * (1 if tied else 2)
        per_layer = C * C * 2 + 2 * C * d["num_key_value_heads"] * d["head_dim"] + 3 * C * F + 2 * C
        if n <= embed:
            continue
        d["num_hidden_layers"] = max(1, round((n - embed) / per_layer))
        ratio = C / d["num_hidden_layers"]
        total = embed + d["num_hidden_layers"] * per_layer + C
        score = abs(total - n) / n + abs(ratio - 110) / 110 * 0.05
        if best is None or score < best[0]:
            best = (score, d, total)
    if best is None:
        raise ValueError(f"no decoder shape of {n:g} parameters: the 128k-token embeddings alone are larger")
    _, d, total = best
    config = ModelConfig.from_hf(d)
    desc = (f"assumed Llama-3-style decoder for {n:.3g} parameters: {config.num_layers} layers, hidden "
            f"{config.hidden_size}, {config.num_heads} heads ({config.num_kv_heads} KV), MLP "
            f"{config.intermediate_size}, vocabulary {config.vocab_size}, "
            f"{'tied' if config.tie_word_embeddings else 'untied'} embeddings = {total / 1e9:.3g}B parameters")
    return config, desc
