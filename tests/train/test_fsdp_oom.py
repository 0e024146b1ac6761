"""The out-of-memory message under torchrun suggests ``--shard fsdp`` with its per-GPU estimated peak when that
estimate fits the GPU (and not when it does not, or when the run is sharded already)."""
from dataclasses import replace

from minift.memory.estimate import Setup, estimate, usable
from minift.models.presets import resolve_model
from minift.peft.config import Method
from minift.train.oom import GIB, fsdp_line


def test_fsdp_is_suggested_when_its_per_gpu_peak_fits():
    config = resolve_model("llama-3.2-1b")[0]
    setup = Setup(precision="bf16", max_length=512, gpus=4, shard="ddp")
    ddp, fsdp = (estimate(config, Method("full"), replace(setup, shard=s)).peak for s in ("ddp", "fsdp"))
    assert fsdp < ddp
    gpu = int((fsdp + 0.75 * GIB) / 0.95) + 1  # just enough for the FSDP peak (estimate.usable's rule)
    assert usable(gpu) >= fsdp and usable(gpu) < ddp
    [line] = fsdp_line(config, Method("full"), setup, gpu)
    assert "--shard fsdp" in line and "4 processes" in line and f"{fsdp / GIB:.2f} GiB per GPU" in line
    assert "--gpus 4 --shard fsdp" in line
    assert fsdp_line(config, Method("full"), setup, gpu - 2 * 1024**2) == []  # 2 MiB short
    assert fsdp_line(config, Method("full"), replace(setup, shard="fsdp"), gpu) == []  # sharded already
    assert fsdp_line(config, Method("full"), replace(setup, gpus=1), gpu) == []  # one process: nothing to shard
