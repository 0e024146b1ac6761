"""Fixtures of the training tests (tiny models and batches come from tests/kit.py)."""
import kit
import pytest

NO_DROPOUT = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}


@pytest.fixture
def bert(tiny):
    """``bert(head="classification", **kwargs)``: a tiny minift BERT (2 layers, width 32, vocab 100, no dropout)."""
    def make(head="classification", **kwargs):
        return tiny("bert", head, **{**NO_DROPOUT, **kwargs}).load()

    return make


@pytest.fixture
def llama(tiny):
    """A tiny minift Llama with its causal-LM head."""
    return tiny("llama", "causal-lm").load()


@pytest.fixture
def train_config(tmp_path):
    """Factory ``train_config(name="run", *, n_train=64, dropout=0.1, **overrides) -> TrainConfig``: a small full
    fine-tuning run on ``kit.cli_assets`` (made once per test): batch 8 × 2 accumulated, so 64 training examples
    are 8 micro-batches and 4 optimizer steps per epoch; the run folder is ``tmp_path / name``."""
    from minift.train.config import TrainConfig

    def make(name="run", *, n_train=64, dropout=0.1, **overrides):
        assets = tmp_path / "assets"
        if not assets.exists():
            kit.cli_assets(assets, n_train=n_train, n_test=16, dropout=dropout)
        task = f"file:{assets / 'train.csv'},{assets / 'dev.csv'},{assets / 'test.csv'}"
        values = {"task": task, "model": str(assets / "model"), "method": "full", "batch_size": 8, "grad_accum": 2,
                  "lr": 1e-3, "max_length": 32, "epochs": 2, "log_every": 1, "output_dir": str(tmp_path / name),
                  "plot": False, "device": "cpu", **overrides}
        return TrainConfig(**values)

    return make
