"""SIGTERM at random moments, each followed by ``--resume``, ends bit-identical on CPU to one uninterrupted run: the
final trainable weights, the best weights, the summary's metrics and the training log line by line (times aside);
no half-written checkpoint or ``.tmp`` leftover survives.

The moments are drawn (seeded) from where a run spends its time — loading the model, a forward/backward window, an
optimizer update, a checkpoint's file writes, an evaluation or the final test — at a random count of that event,
plus timers at a random delay; each sends one SIGTERM (checkpoint at the next step boundary, exit 143) or two (stop
at once). Drawing the moment by event rather than by clock keeps every start interrupted however loaded the machine
is: each start trains at most a few of the run's 32 steps, so the 12 draws interrupt 12 starts."""
import json
import os
import random
import signal
import threading
import time

import torch
from badkit import leftovers
from safetensors.torch import load_file

from minift.train import build, recipe, savestate
from minift.train.checkpoint import find_checkpoint, read_checkpoint

SEED = 14
# Where the SIGTERMs land, in a seeded order: (site, the largest count of that event to draw from).
SITES = [("write", 12)] * 4 + [("update", 2)] * 2 + [("window", 2)] * 2 + [("load", 1), ("evaluate", 1)] + \
        [("timer", 0)] * 2
HOOKS = {"write": (savestate, "atomic_write_bytes"), "update": (recipe, "optimizer_step"),
         "window": (recipe, "backward_window"), "load": (build, "load_pretrained"),
         "evaluate": (recipe, "evaluate_spread")}


def _args(assets, out):  # 32 steps of 2 examples, a checkpoint after every step, evaluation every 8 steps
    return assets.args(out, "--batch-size", "2", "--save-every-steps", "1", "--eval-every", "8", "--epochs", "2",
                       "--log-every", "1")


def _log(run) -> list:
    volatile = ("time", "samples_per_s", "tokens_per_s")
    return [{k: v for k, v in json.loads(line).items() if k not in volatile}
            for line in (run / "metrics.jsonl").read_text().splitlines()]


class Killer:
    """Sends SIGTERM to this process (once, or twice: the second stops at once) at the n-th event of one site."""

    def __init__(self, monkeypatch):
        self.site, self.at, self.count, self.double = None, 0, 0, False
        for site, (module, name) in HOOKS.items():
            monkeypatch.setattr(module, name, self.hook(site, getattr(module, name)))

    def hook(self, site, real):
        def hooked(*args, **kwargs):
            if site == self.site:
                self.count += 1
                if self.count == self.at:
                    self.signal()
            return real(*args, **kwargs)

        return hooked

    def signal(self):
        os.kill(os.getpid(), signal.SIGTERM)
        if self.double:
            time.sleep(0.002)  # the first one is handled before the second arrives
            os.kill(os.getpid(), signal.SIGTERM)

    def arm(self, rng: random.Random, site: str, most: int, double: bool, step_time: float):
        self.site, self.count, self.double = site, 0, double
        self.at = rng.randint(1, most) if most else 0
        return threading.Timer(rng.uniform(0.0, 3.0) * step_time, self.signal) if site == "timer" else None


def test_sigterm_at_random_moments_then_resume_is_bit_identical(assets, cli, tmp_path, monkeypatch, quiet_signals):
    started = time.time()
    straight = tmp_path / "straight"
    assert cli(_args(assets, straight))[0] == 0
    step_time = (time.time() - started) / 32  # set-up and evaluations included: generous
    rng, run = random.Random(SEED), tmp_path / "run"
    sites = rng.sample(SITES, len(SITES))
    doubles = rng.sample([True, False] * (len(SITES) // 2), len(SITES))  # half of them stop at once
    killer, outcomes = Killer(monkeypatch), []
    for (site, most), double in zip([*sites, (None, 0)], [*doubles, False]):
        timer = killer.arm(rng, site, most, double, step_time)
        if timer is not None:
            timer.start()
        try:
            find_checkpoint(run)
            argv = ["--resume", run]
        except ValueError:  # stopped before its first checkpoint: start again
            argv = [*_args(assets, run), "--overwrite"]
        status, err = cli(argv)
        if timer is not None:
            timer.cancel()
        outcomes.append((site, killer.at, killer.double, status))
        assert status in (0, 143) and "Traceback" not in err, err
        if status == 0:
            break
        if (run / "checkpoints").exists():  # whatever was cut short, the newest checkpoint reads
            read_checkpoint(find_checkpoint(run))
    assert outcomes[-1][-1] == 0 and sum(o[-1] == 143 for o in outcomes) >= 10, outcomes
    assert leftovers(run) == []

    a, b = (load_file(find_checkpoint(r) / "trainable.safetensors") for r in (run, straight))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    a, b = (load_file(r / "best" / "model.safetensors") for r in (run, straight))
    assert all(torch.equal(a[k], b[k]) for k in a)
    summaries = [json.loads((r / "summary.json").read_text()) for r in (run, straight)]
    for key in ("test", "best_validation", "best_step", "steps", "stopped"):
        assert summaries[0][key] == summaries[1][key], key
    assert _log(run) == _log(straight)
    print(f"{sum(o[-1] == 143 for o in outcomes)} interrupted starts {outcomes}, {time.time() - started:.0f} s")
