"""Export what a run trained: a GGUF file for llama.cpp-based tools, a Hugging Face folder, or a peft adapter.

The run's weights are loaded as ``python -m minift.eval`` loads them (:mod:`minift.eval.trained`: the run's saved
config gives the base model and the task, hence the head), in fp32, then written by the one writer of each format:

- ``gguf``: ``minift.models.gguf_write.write_gguf`` — a causal LM only, LoRA merged in fp32 (``LoRALinear.merge``;
  a QLoRA base dequantised) and swapped back to plain linears (``minift.peft.export.plain_linears``), then cast to
  ``--dtype``; the tokenizer is the source GGUF's, copied, or the HF folder's byte-level BPE, with the chat
  template the run used;
- ``hf``: ``minift.peft.save_merged`` (LoRA merged; BitFit as it is) or ``minift.models.save_pretrained`` (full
  fine-tuning), plus the base model's tokenizer files, so the folder loads on its own in minift and transformers;
- ``peft``: ``minift.peft.export_peft`` (LoRA, decoder soft prompts), for ``PeftModel.from_pretrained``.

Bottleneck adapters and soft prompts add computation the base architecture lacks, so they have no merged form:
``gguf`` and ``hf`` refuse them with the way out. Nothing is overwritten without ``overwrite=True``; every output is
assembled under a temporary name beside it and renamed into place.
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from minift.eval.cli import UsageError
from minift.eval.trained import Trained, build_values, find_trained, load_trained

FORMATS = ("gguf", "hf", "peft")
# The tokenizer files of an HF folder, copied into an exported one (those the base model has).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                   "vocab.txt", "vocab.json", "merges.txt", "tokenizer.model", "chat_template.jinja",
                   "generation_config.json")


def default_out(trained: Trained, fmt: str, dtype: str) -> Path:
    """``RUN_DIR/export/model-<dtype>.gguf``, ``RUN_DIR/export/hf`` or ``RUN_DIR/export/peft``."""
    root = (trained.run or trained.path.parent) / "export"
    return root / (f"model-{dtype}.gguf" if fmt == "gguf" else fmt)


@dataclass
class LoadedRun:
    """A run's model as it was trained, ready to be written."""

    model: nn.Module  # fp32, CPU, eval mode, with the run's weights (its PEFT modules unmerged)
    tokenizer: object  # tokenizers.Tokenizer
    task: object  # minift.data Task (its kind decides the head and the chat template)
    model_path: Path  # the base checkpoint (or preset / config of --init random)
    tokenizer_path: Path  # where the tokenizer (and its chat template) came from: --tokenizer or the checkpoint
    config: object  # the run's TrainConfig, with the weights' own method (trained.build_values)
    name: str  # the run folder's name


def load_run(trained: Trained) -> LoadedRun:
    """The run's model as ``minift.train.build`` built it (same base, head, tokenizer), its weights loaded, in fp32."""
    from minift.train.build import build_model, build_task, load_run_tokenizer, resolve_model_path
    from minift.train.config import TrainConfig

    if trained.config is None:
        raise UsageError(f"--run {trained.path}: a weights folder outside a run folder; pass the run folder (its "
                         "config.json names the base model and the task)")
    saved = {key: value for key, value in trained.config.items() if key not in ("resume", "seeds", "output_dir")}
    config = TrainConfig(**{**saved, **build_values(trained), "precision": "fp32", "device": "cpu",
                            "gradient_checkpointing": False})
    task = build_task(config)
    path = resolve_model_path(config)
    tokenizer = load_run_tokenizer(config, path, task)
    model = build_model(config, task, path, tokenizer, torch.device("cpu"))
    source = Path(config.tokenizer).expanduser() if getattr(config, "tokenizer", None) else path
    return LoadedRun(load_trained(model, trained).eval(), tokenizer, task, path, source, config,
                     (trained.run or trained.path).name)


def _unmergeable(model: nn.Module) -> str | None:
    """Why the model has no merged form (adapters, soft prompts), or None."""
    from minift.peft.apply import find_peft_spec

    spec = find_peft_spec(model)
    if spec is not None and spec.name in ("adapter", "prompt"):
        what = "bottleneck adapters add layers" if spec.name == "adapter" else "a soft prompt adds input vectors"
        return (f"{what} the base architecture lacks, so a {spec.name} run cannot be merged into plain weights; "
                "export --format peft (soft prompts of decoders), or use the run's best/ with minift itself")
    return None


def chat_template(run: LoadedRun, special) -> str | None:
    """The chat template the run used, for the export: ``--chat-template`` of an SFT run, else the checkpoint's own
    (the plain template only when an SFT run trained with it). None when there is none, or when it cannot be
    compiled here (no Jinja2, or a broken template): the export then carries the checkpoint's own as it is."""
    from minift.data.chat import PLAIN_TEMPLATE, load_chat_template
    from minift.data.errors import DataError

    override = run.config.chat_template
    try:
        source = load_chat_template(run.tokenizer_path, run.tokenizer, special, override).source
    except DataError:
        return None
    return None if source == PLAIN_TEMPLATE and override is None and run.task.kind != "sft" else source


def _gguf_vocab(run: LoadedRun) -> list:
    """The tokenizer fields: the source GGUF's, copied, or built from the byte-level BPE tokenizer; the run's chat
    template in either."""
    from minift.data.tokenizer import special_ids
    from minift.models.gguf_write import vocab_from_gguf, vocab_from_tokenizer

    template = chat_template(run, special_ids(run.tokenizer, run.model.config))
    if run.tokenizer_path.suffix != ".gguf":
        return vocab_from_tokenizer(run.tokenizer, run.model.config, template)
    from gguf import GGUFValueType

    fields = vocab_from_gguf(run.tokenizer_path)  # its own chat template included; the run's replaces it
    if template is None:
        return fields
    return [f for f in fields if f[0] != "tokenizer.chat_template"] + [
        ("tokenizer.chat_template", template, GGUFValueType.STRING, None)]


def write_gguf_export(run: LoadedRun, out: Path, dtype: str) -> None:
    """LoRA merged in fp32 and swapped back to plain linears (a 4-bit QLoRA base dequantised, its update added in
    fp32, as ``save_merged`` does), then ``write_gguf``."""
    from minift.models.gguf_write import check_writable, write_gguf
    from minift.peft.export import plain_linears
    from minift.peft.lora import LoRALinear

    model = run.model
    for module in model.modules():
        if isinstance(module, LoRALinear):
            module.merge()  # the delta in fp32 into fp32 weights (load_run loads fp32); 4-bit layers merge below
    with torch.no_grad(), plain_linears(model):
        check_writable(model)  # before the vocabulary: the model's reason comes first
        write_gguf(model, out, _gguf_vocab(run), dtype, run.name)


def write_hf_export(run: LoadedRun, out: Path) -> None:
    """``save_merged`` / ``save_pretrained``, then the tokenizer files (from a GGUF: minift's rebuilt
    ``tokenizer.json``) and a ``tokenizer_config.json`` with the chat template the run used."""
    from minift.data.tokenizer import special_ids
    from minift.models import save_pretrained
    from minift.peft import save_merged
    from minift.peft.apply import find_peft_spec

    if find_peft_spec(run.model) is not None:
        save_merged(run.model, out)
    else:
        save_pretrained(run.model, out)
    special = special_ids(run.tokenizer, run.model.config)
    settings = {"tokenizer_class": "PreTrainedTokenizerFast"}
    if run.tokenizer_path.is_dir():
        for name in TOKENIZER_FILES:
            if (run.tokenizer_path / name).is_file():
                shutil.copy2(run.tokenizer_path / name, out / name)
        if (out / "tokenizer_config.json").is_file():
            settings = json.loads((out / "tokenizer_config.json").read_text(encoding="utf-8"))
    else:
        run.tokenizer.save(str(out / "tokenizer.json"))
        settings.update({f"{key}_token": run.tokenizer.id_to_token(getattr(special, key))
                         for key in ("bos", "eos", "pad") if getattr(special, key) is not None})
    template = chat_template(run, special)
    if template:  # the one the run used (an SFT run's --chat-template), where transformers and minift read it
        settings["chat_template"] = template
        (out / "chat_template.jinja").unlink(missing_ok=True)
    if template or not run.tokenizer_path.is_dir():
        (out / "tokenizer_config.json").write_text(json.dumps(settings, indent=2) + "\n", encoding="utf-8")


def _claim(out: Path, overwrite: bool) -> Path:
    """A temporary path beside ``out`` to assemble the export in; ``out`` must not exist unless ``overwrite``."""
    if out.exists() and not overwrite:
        raise UsageError(f"{out} already exists: pass --out elsewhere, or --overwrite to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    return out.with_name(f".{out.name}.tmp-{os.getpid()}")


def _put(tmp: Path, out: Path) -> None:
    if out.is_dir():
        shutil.rmtree(out)
    elif out.exists():
        out.unlink()
    os.replace(tmp, out)


def export_run(run: str | Path, fmt: str, dtype: str = "f16", out: str | Path | None = None,
               overwrite: bool = False) -> Path:
    """Export the weights of the run at ``run`` (``RUN_DIR`` or ``RUN_DIR/best``) as ``fmt`` (gguf | hf | peft).

    Args:
        dtype: GGUF only: "f16", "q8_0" or "f32" for the 2-D weights.
        out: the file (gguf) or folder (hf, peft); default :func:`default_out`.
        overwrite: replace an existing ``out``.
    Returns:
        The path written.
    """
    from minift.models.gguf_write import DTYPES

    if fmt not in FORMATS:
        raise UsageError(f"--format {fmt!r} is not one of {', '.join(FORMATS)}")
    if dtype not in DTYPES:
        raise UsageError(f"--dtype {dtype!r} is not one of {', '.join(DTYPES)} (GGUF only)")
    trained = find_trained(run)
    out = Path(out) if out is not None else default_out(trained, fmt, dtype)
    tmp = _claim(out, overwrite)
    run = load_run(trained)
    reason = _unmergeable(run.model) if fmt in ("gguf", "hf") else None
    if reason:
        raise UsageError(f"--format {fmt}: {reason}")
    if fmt == "peft" and trained.kind != "peft":
        raise UsageError("--format peft: a full fine-tuning run has no adapter; export --format hf or gguf")
    try:
        if fmt == "gguf":
            write_gguf_export(run, tmp, dtype)
        elif fmt == "hf":
            write_hf_export(run, tmp)
        else:
            from minift.peft import export_peft

            try:
                export_peft(run.model, tmp, base_model_name_or_path=str(run.model_path))
            except ValueError as err:  # BitFit and adapters have no peft form minift writes
                raise UsageError(f"--format peft: {err}") from None
        _put(tmp, out)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise
    return out
