from pathlib import Path

import pytest

from replicate.data import synth

pytest_plugins = ["slurm_cluster"]


@pytest.fixture(scope="session")
def smoke_root(tmp_path_factory) -> Path:
    """The smoke profile generated once per test session (about a second)."""
    root = tmp_path_factory.mktemp("smoke")
    synth.generate("smoke", root, seed=0, progress=False)
    return root


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module: deterministic reductions, and no OpenMP oversubscription
    when the 2 cores are shared. Modules opt in with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
