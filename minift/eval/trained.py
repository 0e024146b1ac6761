"""What a training run delivers, as a model again: where its weights are, what the run was, and how to load them.

``python -m minift.train`` writes ``RUN_DIR/best/`` in its final format (``minift.train.checkpoint.save_weights``):

- a PEFT method: a ``minift.peft.save_trainable`` folder (``peft_config.json`` + the trained tensors, the head
  included), loaded onto a fresh base model by ``minift.peft.load_trainable``;
- full fine-tuning: a Hugging Face folder (``config.json`` + ``model.safetensors``) that is the whole model.

:func:`find_trained` accepts the run folder, its ``best/``, or such a weights folder on its own, and reads the run's
saved ``config.json`` when there is one (the base model, the task, the precision the run used).
:func:`load_trained` puts the weights onto a model built from the base checkpoint the way training built it
(``minift.train.build``), so the tokenizer and the head come from the same place as in training. The commands
``python -m minift.eval``, ``minift.generate`` and ``minift.export`` all find and load a run this way.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torch import nn

from minift.train.runfolder import BEST, CONFIG_JSON

PEFT_CONFIG = "peft_config.json"  # minift.peft.io.CONFIG_NAME (not imported: that would import minift.peft early)


class TrainedError(ValueError):
    """A path that does not hold a run's weights, or weights that do not fit the model, with what to do instead."""


@dataclass(frozen=True)
class Trained:
    """The trained weights of a run (or a weights folder on its own)."""

    path: Path  # the weights folder: a run's best/, or a folder given on its own
    kind: str  # "peft" (a save_trainable folder) | "full" (an HF folder: the whole model)
    run: Path | None  # the run folder, when the weights are a run's best/
    config: dict | None  # the run's saved config.json (nested keys), None outside a run

    @property
    def method(self) -> str:
        """The method the weights were trained with: ``lora``, ``adapter``, ``bitfit``, ``prompt`` or ``full``."""
        if self.kind == "full":
            return "full"
        from minift.peft.io import read_spec

        return read_spec(self.path)[0].name

def _run_without_best(path: Path) -> str | None:
    """Why ``path``, a run or experiment folder without ``best/``, holds no weights (None: not such a folder)."""
    seeds = sorted(p.name for p in path.glob("seed-*") if (p / BEST).is_dir())
    if seeds:
        return f"{path} is a --seeds experiment: pass one seed's run, e.g. {path / seeds[0]}"
    if (path / CONFIG_JSON).is_file() and ((path / "metrics.jsonl").is_file() or (path / "checkpoints").is_dir()):
        return (f"{path} is a run folder without best/ weights yet (the run has not validated): wait for its first "
                "evaluation, or evaluate the base model without --adapter")
    return None


def find_trained(path: str | Path) -> Trained:
    """The weights at ``path``: a run folder (its ``best/``), a run's ``best/``, a ``save_trainable`` folder or a
    full fine-tuning HF folder. Raises ``TrainedError`` naming the path and what it expected."""
    from minift.train.flags import saved_config

    path = Path(path).expanduser()
    if not path.is_dir():
        raise TrainedError(f"{path} is not a folder: pass a run folder (runs/...), its best/ folder, or a folder "
                           "written by minift.peft.save_trainable")
    run = None
    if (path / BEST).is_dir():
        run, path = path, path / BEST
    elif path.name == BEST and (path.parent / CONFIG_JSON).is_file():
        run = path.parent
    elif _run_without_best(path):
        raise TrainedError(_run_without_best(path))
    if (path / PEFT_CONFIG).is_file():
        kind = "peft"
    elif (path / "config.json").is_file() and any(path.glob("*.safetensors")):
        kind = "full"
    else:
        raise TrainedError(f"{path} holds no trained weights: expected {PEFT_CONFIG} (a PEFT run's best/) or "
                           "config.json + model.safetensors (a full fine-tuning run's best/)")
    try:
        config = saved_config(str(run)) if run is not None else None
    except ValueError as err:  # TrainConfigError: an unreadable config.json, named
        raise TrainedError(str(err)) from None
    return Trained(path, kind, run, config)


# What a run's config says about how its model was built beyond the method: a 4-bit (QLoRA) base.
BUILD_KEYS = ("quantize", "double_quant")


def build_values(trained: Trained) -> dict:
    """TrainConfig values that build the base model as the run built it, with the weights' own method applied (the
    saved method, its options and ``train_head``, read from the PEFT folder), so that :func:`load_trained` loads
    into the same modules — a QLoRA run's 4-bit base included. Full fine-tuning: method ``full``."""
    from minift.train.config import METHOD_FIELDS

    values = {key: trained.config[key] for key in BUILD_KEYS if trained.config and key in trained.config}
    if trained.kind != "peft":
        return {**values, "method": "full"}
    from minift.peft.io import read_spec

    spec = read_spec(trained.path)[0]
    values.update(method=spec.name, train_head=spec.train_head)
    if spec.name in METHOD_FIELDS:
        values[spec.name] = spec.options
    return values


def load_trained(model: nn.Module, trained: Trained) -> nn.Module:
    """Load ``trained`` onto ``model`` — built as training built it, with :func:`build_values` (the run's head and
    method) — and return it (a ``PromptModel`` wrapper for a soft prompt). Raises ``TrainedError`` when the weights
    do not fit this model."""
    from minift.train.checkpoint import load_weights

    try:
        if trained.kind == "peft":
            from minift.peft import load_trainable

            return load_trainable(model, trained.path)
        return load_weights(model, trained.path)
    except (ValueError, RuntimeError, OSError) as err:  # key / shape mismatches, unreadable files
        raise TrainedError(f"the weights in {trained.path} do not fit this model ({err}); pass the base model the run "
                           "was trained from (--model) and the run's task") from None
