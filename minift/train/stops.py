"""How a run that ends early says so: what happened, what was kept (only files that exist), how to go on."""
from __future__ import annotations

from pathlib import Path

from minift.train.checkpoint import find_checkpoint, weights_folder
from minift.train.interrupt import exit_status, signal_name


class TrainingStopped(RuntimeError):
    """The run ended early on purpose (NaN loss, Ctrl-C, SIGTERM, SIGHUP); the message says what was kept and how
    to go on; ``exit_code`` is the command's exit status (128 + the signal's number after a signal, 1 after NaN)."""

    def __init__(self, message: str, summary: dict, exit_code: int = 1):
        super().__init__(message)
        self.summary = summary
        self.exit_code = exit_code


def last_checkpoint(out: Path | None) -> Path | None:
    """The checkpoint ``--resume out`` would start from, if there is one."""
    if out is None:
        return None
    try:
        found = find_checkpoint(out)
    except ValueError:
        return None
    return found if found.is_dir() else None


def interrupted_message(signum: int, out: Path, step: int, at_once: bool) -> str:
    """After a signal in the loop: the first one checkpointed this step; a second one (``at_once``) stopped
    mid-step, and the newest complete checkpoint is what is left."""
    name, checkpoint = signal_name(signum), last_checkpoint(out)
    if not at_once:
        return (f"{name}: stopped at step {step}, checkpoint saved in {checkpoint}; continue with "
                f"`python -m minift.train --resume {out}`")
    kept = (f"the last complete checkpoint is {checkpoint}; continue with `python -m minift.train --resume {out}`"
            if checkpoint is not None else f"no checkpoint had been written yet: start the run again (--overwrite "
                                           f"reuses {out})")
    return f"a second {name} stopped the run at once, after step {step}: {kept}"


def stopped_outside_loop(signum: int, phase: str, folder, summary: dict) -> TrainingStopped:
    """A signal while setting up (nothing trained, nothing written) or during the final test (training is done)."""
    name = signal_name(signum)
    if phase == "set-up":
        where = f"; {folder.path} was not written to" if folder is not None and folder.path.exists() else ""
        message = f"{name} during set-up: stopped before training{where}"
    else:
        message = (f"{name} during the final test: the training is done and checkpointed; `python -m minift.train "
                   f"--resume {folder.path}` runs the test again")
    return TrainingStopped(message, {**summary, "stopped": "interrupted"}, exit_status(signum))


def nan_message(config, out: Path, step: int, finite_step: int) -> str:
    """Why the loss became NaN/inf, as far as can be told: at step 1 the first forward pass — before any update —
    was already non-finite, so the learning rate cannot be the cause (the weights and labels were checked finite at
    the start: the precision or the data are left); later, the updates are the likely cause."""
    if step <= 1:
        cause = ("the training loss was NaN/inf at step 1, in the first forward pass before any update, so --lr is "
                 "not the cause; the model's weights and the labels were checked and are finite. ")
        cause += (f"--precision {config.precision} may overflow with this model: try --precision fp32"
                  if config.precision != "fp32" else
                  "Look at the first training batch (inputs that are all padding, extreme values in the model's "
                  "weights) and try another --model")
    else:
        cause = (f"the training loss became NaN/inf between step {finite_step} and step {step} (it was finite "
                 f"until step {finite_step}): the updates diverged. Start again with a lower --lr (this run: "
                 f"{config.learning_rate:g})" + (", with --clip 1.0" if not config.clip else "")
                 + (" or with --precision bf16 / fp32" if config.precision == "fp16" else ""))
    kept = []
    checkpoint = last_checkpoint(out)
    if checkpoint is not None:
        kept.append(f"the last good checkpoint is {checkpoint}")
    best = weights_folder(out / "best")
    if best.is_dir():
        kept.append(f"the best weights so far are in {best}")
    kept_text = "; ".join(kept) if kept else "no checkpoint had been written before it"
    return f"{cause}. The NaN state was not saved; {kept_text}"
