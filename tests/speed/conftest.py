"""Fixtures of the speed tests: a tiny command-line run (kit.cli_assets) as in tests/train."""
import kit
import pytest


@pytest.fixture
def run_config(tmp_path):
    """``run_config(name="run", **overrides) -> TrainConfig``: a LoRA run on ``kit.cli_assets`` (48 training
    examples, batch 8, two optimizer steps by default; the model's dropout ``dropout``) in ``tmp_path / name``."""
    from minift.train.config import TrainConfig

    def make(name="run", dropout=0.1, **overrides):
        assets = tmp_path / f"assets-{dropout}"
        if not assets.exists():
            kit.cli_assets(assets, n_train=48, n_test=16, dropout=dropout)
        task = f"file:{assets / 'train.csv'},{assets / 'dev.csv'},{assets / 'test.csv'}"
        values = {"task": task, "model": str(assets / "model"), "method": "lora", "batch_size": 8, "max_length": 32,
                  "epochs": 1, "max_steps": 2, "log_every": 1, "output_dir": str(tmp_path / name), "plot": False,
                  "device": "cpu", **overrides}
        return TrainConfig(**values)

    return make
