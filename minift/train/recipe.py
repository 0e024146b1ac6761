"""One training run, read top to bottom (torchtune's recipe ``setup()`` / ``train()``, nanoGPT's ``train.py``):

- ``setup()`` builds the device, model, data, batch plan, optimizer, schedule and GradScaler, and restores a
  checkpoint when resuming;
- ``train()`` is the loop: per optimizer step, ``step.backward_window`` then ``step.optimizer_step``; then, when
  due, a training-log line, a validation (saving the best weights when they improve) and a checkpoint — plain
  method calls;
- ``finish()`` reloads the best weights from their folder, evaluates them on test and writes ``summary.json``.

The run folder is described in ``runfolder.py``. Under ``torchrun`` every process runs the recipe on its share of
each batch, with a whole copy of the model (``--shard ddp``) or 1/N of it (``--shard fsdp``, ``fsdp.py``); every
process evaluates a share of the evaluation data (``evalspread.py``), process 0 computes the metrics and writes the
folder, and collectives keep the processes' decisions (stop, improved) the same.
"""
from __future__ import annotations

import contextlib
import math
import signal
import time
from dataclasses import asdict

import torch

from minift.optim import build_optimizer, build_scheduler
from minift.peft.io import saved_names
from minift.precision import frozen_in_compute_dtype, uses_grad_scaler
from minift.train import disk, distributed, runfolder
from minift.train.batching import BatchPlan, eval_batches
from minift.train.build import build, check_same_training_data, pick_device, seed_everything
from minift.train.checkpoint import CheckpointLoadError, adopt, load_checkpoint, save_checkpoint
from minift.train.compile import compile_blocks, compile_seconds
from minift.train.config import TrainConfig
from minift.train.dryrun import dry_run, param_counts
from minift.train.evalspread import answers_spread, evaluate_spread
from minift.train.flags import check_resumable, saved_config
from minift.train.fsdp import local_param_bytes
from minift.train.interrupt import Interrupted, StopRequest, exit_status, immediate_stops
from minift.train.loopstate import LoopState, total_steps
from minift.train.oom import out_of_memory_message
from minift.train.step import WindowStats, backward_window, optimizer_step, optimizer_steps
from minift.train.stops import TrainingStopped, interrupted_message, nan_message, stopped_outside_loop
from minift.train.weights import load_weights, save_weights


class Recipe:
    """``Recipe(config, progress).run()`` trains, selects the best weights on validation, tests them and returns
    the summary. ``progress`` (optional) receives every log record (``progress.RunProgress``)."""

    def __init__(self, config: TrainConfig, progress=None):
        self.config, self.progress = config, progress
        self.started = time.time()

    def run(self) -> dict:
        """Set up, train and test. A signal while setting up or testing stops at once (nothing to save then); in
        the loop the first one checkpoints at the next step (``interrupt.py``)."""
        with immediate_stops():
            try:
                self.setup()
            except BaseException as err:
                self.release(failed=True)
                if isinstance(err, Interrupted):
                    raise stopped_outside_loop(err.signum, "set-up", getattr(self, "folder", None), {}) from None
                raise
            try:
                self.train()
                return self.finish()
            except Interrupted as err:  # during the final test (the loop turns its own into TrainingStopped)
                raise stopped_outside_loop(err.signum, "test", self.folder, self.summary()) from None
            finally:
                self.release(failed=False)

    def release(self, failed: bool) -> None:
        if getattr(self, "folder", None) is not None:
            self.folder.release(failed)

    def say(self, text: str) -> None:
        """A note for the user (process 0, with a display)."""
        if self.main and self.progress is not None:
            self.progress.console.print(f"[yellow]note:[/yellow] {text}", markup=True, highlight=False)

    # --- setup -------------------------------------------------------------------------------------------------

    def setup(self) -> None:
        """Build everything; the run folder is checked first and written only once everything else has worked."""
        c = self.config
        self.device = pick_device(c.device)
        distributed.init(self.device)
        self.main = distributed.is_main()
        self.shard = distributed.shard_mode(c.shard)
        self.folder = runfolder.claim(c)
        self.out = self.folder.path
        seed_everything(c.seed)
        saved = saved_config(c.resume) if c.resume else None
        if saved is not None:  # the run's own config decides; raised limits or new evaluation settings are recorded
            check_resumable(saved, c)

        built = build(c, self.device)
        self.task, self.model_path, self.tokenizer, self.model, self.data = (built.task, built.model_path,
                                                                             built.tokenizer, built.model, built.data)
        if saved is not None and saved.get("max_length", c.max_length) != c.max_length:
            check_same_training_data(c, saved["max_length"], built)
        self.plan = BatchPlan([len(f["input_ids"]) for f in self.data.train],
                              lambda idx: self.data.collate([self.data.train[i] for i in idx]), c.batch_size, c.seed,
                              c.group_by_length, distributed.rank(), distributed.world_size())
        self.val_batches = eval_batches(self.data.val, self.data.collate, c.eval_batch_size)
        self.total_steps = total_steps(len(self.plan), c)

        if self.shard != "fsdp":  # frozen weights in the autocast dtype once (FSDP's policy gathers them so itself)
            frozen_in_compute_dtype(self.model, c.precision, skip=saved_names(self.model))
        if c.compile:  # each block, after the PEFT method and before DDP / FSDP (compile.py)
            compile_blocks(self.model, device=self.device)
        # DDP, FSDP (self.model sharded in place: the optimizer then holds the shards) or the model itself
        self.trained = distributed.wrap(self.model, self.device, self.shard, c.precision)
        self.param_bytes = distributed.gather_objects(local_param_bytes(self.model))  # per process
        self.optimizer = build_optimizer(self.model, c.learning_rate, c.weight_decay, c.betas, c.eps)
        self.scheduler = build_scheduler(self.optimizer, c.schedule, c.warmup, self.total_steps)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=uses_grad_scaler(c.precision))
        self.state, restored = LoopState(), None
        if c.resume:
            restored = load_checkpoint(c.resume, self.model, self.optimizer, self.scheduler, self.scaler,
                                       c.batch_size, (saved or {}).get("batch_size"))
            self.state = LoopState.from_dict(restored.loop)
        self.state.global_batch = c.batch_size * distributed.world_size()
        self.saved_step = self.state.step if restored is not None else None  # the step of the newest checkpoint
        self.folder.open(c, saved, self.state.step)  # set-up worked: the first write into the run folder
        if restored is not None and restored.skipped:
            self.say(f"{'; '.join(restored.skipped)}: resumed from {restored.folder} instead")
        if restored is not None and self.main and self.folder.resumed_here:
            adopt(restored.folder)

    # --- the loop ----------------------------------------------------------------------------------------------

    def train(self) -> LoopState:
        """Train until the epochs or ``max_steps`` are done, early stopping triggers, the loss is NaN or a signal
        (Ctrl-C, SIGTERM, SIGHUP) asks to stop; a second signal raises ``TrainingStopped`` at once."""
        c, state = self.config, self.state
        self._decide_resumed_stop()
        self.stats = WindowStats(self.device)
        if state.log_window:  # resumed between two log lines: the next line averages the same steps
            self.stats.loss.fill_(state.log_window[0])
            self.stats.targets, self.stats.examples, self.stats.tokens = state.log_window[1:]
        self.last_log, self.last_save = time.perf_counter(), time.monotonic()
        self.finite_step = state.step  # the last step whose loss was seen finite (a checkpoint's always was)
        self.trained.train()
        if self.progress is not None and self.main:
            self.progress.start(self.total_steps, f"{self.task.name} · {c.method} · seed {c.seed}", state.step)
        try:
            with StopRequest() as self.interrupt:
                while state.epoch < c.epochs and not state.stopped:
                    self.train_epoch()
                if state.stopped != "nan":
                    self.checkpoint()  # the end of training is always resumable (e.g. a crash in the final test)
        except torch.cuda.OutOfMemoryError:
            raise MemoryError(out_of_memory_message(self.model, c, self.device)) from None
        except Interrupted as err:
            raise TrainingStopped(interrupted_message(err.signum, self.out, state.step, at_once=True),
                                  self.summary(), exit_status(err.signum)) from None
        finally:
            if self.progress is not None and self.main:
                with contextlib.suppress(OSError):  # a terminal closed by SIGHUP
                    self.progress.stop()
        self.count_skipped()
        return state

    def _decide_resumed_stop(self) -> None:
        """A resumed run's stop is decided again by this run's limits: the same limit stops at once (a finished run
        does no extra step), a raised one trains on."""
        c, state = self.config, self.state
        if state.stopped in ("max_steps", "early_stopping"):
            state.stopped = ""
        if c.max_steps and state.step >= c.max_steps:
            state.stopped = "max_steps"
        elif c.early_stopping and state.bad_evals >= c.early_stopping:
            state.stopped = "early_stopping"

    def train_epoch(self) -> None:
        """The optimizer steps of the current epoch from the current position, until the epoch ends or a stop."""
        c, state = self.config, self.state
        batches = self.plan.epoch(state.epoch)
        if state.micro >= len(batches):  # else nothing would train and the epoch loop would never end
            raise CheckpointLoadError(
                f"the resumed position (epoch {state.epoch}, micro-batch {state.micro}) is past this epoch's "
                f"{len(batches)} micro-batches: the data, batch size or number of processes differ from the run "
                "that wrote the checkpoint; resume with the run's own config")
        for start in range(state.micro, len(batches), c.grad_accum):
            # The last window of an epoch may be shorter; an empty shard is a zero-weight stand-in batch (DDP).
            window = [(self.plan.collate(idx or [0]), bool(idx)) for idx in batches[start:start + c.grad_accum]]
            summed = backward_window(self.trained, window, self.task.kind, c.precision, self.device, self.scaler)
            self.stats.add(summed, window, self.task.kind)
            optimizer_step(self.model, self.optimizer, self.scheduler, self.scaler, c.clip)
            state.step += 1
            state.micro = start + len(window)
            if state.micro >= len(batches):  # the epoch is done: the position moves to the next one
                state.epoch, state.micro = state.epoch + 1, 0
            self.after_step()
            if state.stopped:
                return

    def after_step(self) -> None:
        """What follows an optimizer step when it is due: the log line, validation and a checkpoint, a stop asked by
        a signal. A NaN/inf loss stops the run first, so a broken model is never evaluated or checkpointed; it is
        looked for at step 1 too, where it says that the data, the weights or the precision are at fault."""
        c, state = self.config, self.state
        epoch_ended = state.micro == 0
        finishing = bool(c.max_steps) and state.step >= c.max_steps
        validate = (c.eval_every and state.step % c.eval_every == 0) or (epoch_ended and c.eval_each_epoch)
        log = state.step % c.log_every == 0 or state.step == self.total_steps
        if (log or validate or finishing or state.step == 1) and self.loss_went_bad():
            return
        if log:
            self.log_training()
        if validate or finishing:
            if self.validate("epoch" if epoch_ended else "step"):
                state.stopped = "early_stopping"
            elif finishing:
                state.stopped = "max_steps"
            self.checkpoint()  # after the stop is decided, so that resuming a finished run does not train on
        if state.stopped:
            return
        minutes = c.save_every_minutes
        timed = self.main and minutes > 0 and time.monotonic() - self.last_save >= 60 * minutes
        stop, save = self.interrupt.poll(timed)  # process 0's clock and any process's signal, agreed by all
        save = save or (c.save_every_steps > 0 and state.step % c.save_every_steps == 0)
        if (stop or save) and not self.loss_went_bad():
            self.checkpoint()
            if stop:
                state.stopped = "interrupted"

    def loss_went_bad(self) -> bool:
        """Whether any process's loss was NaN/inf since training started (a host sync); then the run stops."""
        if self.stats.loss_is_bad():
            self.state.stopped = "nan"
            return True
        self.finite_step = self.state.step
        return False

    def count_skipped(self) -> None:
        """fp16 steps the GradScaler skipped: the loop's steps the optimizer did not make (its own count)."""
        if self.scaler.is_enabled():
            self.state.skipped_steps = self.state.step - optimizer_steps(self.optimizer)

    def log_training(self) -> None:
        loss, examples, tokens = self.stats.take()
        elapsed, world = time.perf_counter() - self.last_log, distributed.world_size()
        self.count_skipped()
        self.log({"type": "train", "step": self.state.step, "epoch": self.state.epoch,
                  "total_steps": self.total_steps, "loss": loss, "lr": self.scheduler.get_last_lr()[0],
                  "samples_per_s": examples * world / elapsed, "tokens_per_s": tokens * world / elapsed,
                  "skipped_steps": self.state.skipped_steps,
                  **({"compile_s": round(compile_seconds(), 2)} if self.config.compile else {})})
        self.last_log = time.perf_counter()

    def log(self, record: dict) -> None:
        """Append a record to metrics.jsonl and show it (process 0)."""
        if not self.main:
            return
        record = {**record, "time": round(time.time() - self.started, 3)}
        runfolder.append_log(self.out, record)
        if self.progress is not None:
            self.progress.record(record)

    def validate(self, reason: str) -> bool:
        """Evaluate on validation (metrics on process 0), remember and save the best weights; True when early
        stopping says stop."""
        c, state = self.config, self.state
        metrics = self.val_metrics()
        value = metrics.get(self.task.main_metric)
        # NaN (e.g. Pearson's r of constant predictions) never improves: stored as the best, nothing would beat it.
        # --best-tie latest: an evaluation that ties the best so far becomes the best (earliest: it does not).
        improved = value is not None and math.isfinite(value) and (
            self.task.better(value, state.best_metric) or (c.best_tie == "latest" and value == state.best_metric))
        if metrics:
            record = {"type": "eval", "step": state.step, "epoch": state.epoch, "reason": reason, **metrics}
            state.history.append(record)
            self.log(record)
        if distributed.from_main(improved):  # process 0 evaluated: every process agrees on "improved"
            state.best_metric, state.best_step, state.bad_evals = value, state.step, 0
            self.save_best()
        else:
            state.bad_evals += 1
        return bool(c.early_stopping) and state.bad_evals >= c.early_stopping

    def save_best(self) -> None:
        """Write the current weights as the run's best, in their final format (every process: FSDP gathers them)."""
        save_weights(self.model, self.out / runfolder.BEST)

    def val_metrics(self) -> dict:
        """The task's metrics on the validation batches (on process 0; every process evaluates a share)."""
        return evaluate_spread(self.model, self.task, self.val_batches, self.tokenizer, self.data.special.eos,
                               self.config.precision, self.device)

    def checkpoint(self) -> None:
        """Save a checkpoint of this step (once), with the training-log sums so that the log goes on as it would."""
        if self.saved_step == self.state.step:
            return
        stats = self.stats
        self.state.log_window = [stats.loss.item(), stats.targets, stats.examples, stats.tokens]
        save_checkpoint(self.out / runfolder.CHECKPOINTS, self.model, self.optimizer, self.scheduler,
                        self.scaler if self.scaler.is_enabled() else None, asdict(self.state),
                        keep=disk.keep(self.config.save))
        self.saved_step, self.last_save = self.state.step, time.monotonic()

    # --- the end -----------------------------------------------------------------------------------------------

    def finish(self) -> dict:
        """Test the best weights (reloaded from their folder), write ``summary.json`` and the curves; return the
        summary (under torchrun every process returns process 0's). Raises ``TrainingStopped`` after Ctrl-C or a
        NaN loss."""
        c, state = self.config, self.state
        summary = self.summary()
        best = self.out / runfolder.BEST
        if state.stopped == "interrupted":
            signum = self.interrupt.signum or signal.SIGINT  # None on a process that was not signalled itself
            raise TrainingStopped(interrupted_message(signum, self.out, state.step, at_once=False), summary,
                                  exit_status(signum))
        if state.stopped == "nan":
            if self.main:
                runfolder.write_summary(self.out, summary)
            raise TrainingStopped(nan_message(c, self.out, state.step, self.finite_step), summary)
        if state.best_step < 0:  # no validation ran (or none was finite): the final weights are the run's result
            self.save_best()
        distributed.barrier()  # best/ is complete before any process reads it
        load_weights(self.model, best)  # every process (its copy, or its shard)
        test = evaluate_spread(self.model, self.task, eval_batches(self.data.test, self.data.collate,
                                                                   c.eval_batch_size),
                               self.tokenizer, self.data.special.eos, c.precision, self.device)
        samples = answers_spread(self.model, self.data.prompts, self.tokenizer, self.data.special.eos, c.precision,
                                 self.device, batch_size=c.eval_batch_size,
                                 pad_id=self.data.special.pad) if self.data.prompts else []
        if self.main:
            summary["test"] = test
            summary.update(test)  # final test metrics by name at the top level (e.g. "accuracy")
            if self.data.prompts:  # SFT --sample-answers: what the best weights answer
                runfolder.write_samples(self.out, samples)
            summary["wall_time_s"] = round(time.time() - self.started, 1)
            runfolder.write_summary(self.out, summary)
            disk.finish(self.out, c.save, runfolder.CHECKPOINTS, runfolder.BEST)  # --save: what stays
        if distributed.world_size() > 1:  # every process returns process 0's summary
            distributed.barrier()
            summary = runfolder.read_summary(self.out)
        if self.main and c.plot:
            from minift.plots import plot_run

            plot_run(self.out, missing_ok=True)
        return summary

    def summary(self) -> dict:
        c, state, model = self.config, self.state, self.model
        return {"task": self.task.name, "method": c.method, "seed": c.seed, "model": str(self.model_path),
                "main_metric": self.task.main_metric, "validation": self.data.val_source,
                "best_validation": state.best_metric, "best_step": state.best_step, "steps": state.step,
                "skipped_steps": state.skipped_steps, "stopped": state.stopped or "completed",
                "train_examples": len(self.data.train), "test_examples": len(self.data.test),
                **param_counts(model), "init": c.init, "best_tie": c.best_tie, "save": c.save,
                "processes": distributed.world_size(), "shard": self.shard, "precision": c.precision,
                "compile_s": round(compile_seconds(), 2) if c.compile else None,
                "param_bytes_per_process": self.param_bytes, "output_dir": str(self.out)}


def train_one(config: TrainConfig, progress=None) -> dict:
    """Train, select the best weights on validation data, evaluate them on test; return the summary.

    Raises:
        TrainingStopped: NaN loss, or Ctrl-C / SIGTERM / SIGHUP (the folder holds the last good checkpoint).
        minift.models.ModelLoadError / minift.data.DataError / TrainSetupError: bad model, data or options.

    ``config.dry_run``: set up and count only (``dryrun.py``), no training and no test.
    """
    if config.dry_run:
        return dry_run(config)
    return Recipe(config, progress).run()
