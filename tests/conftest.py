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
