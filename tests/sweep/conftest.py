"""Fixtures of the sweep tests: tiny weightless models and tasks (sweepkit.py), one torch thread (tiny matrices
on a shared 2-core machine run faster without thread hand-offs)."""
import pytest
import sweepkit
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def assets(tmp_path):
    """(models: name → folder, tasks: name → file: spec) under tmp_path."""
    return sweepkit.tiny_models(tmp_path / "models"), sweepkit.tiny_tasks(tmp_path / "tasks")
