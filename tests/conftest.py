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


@pytest.fixture(scope="session")
def smoke_book(tmp_path_factory, smoke_root) -> Path:
    """The whole book built once per test session on the smoke profile, in a copy of the project (its
    table notebooks train their smoke runs there); returns that copy's root."""
    import shutil

    from replicate.book.build import build_book, project_root

    root = tmp_path_factory.mktemp("book") / "proj"
    shutil.copytree(project_root() / "book", root / "book", ignore=shutil.ignore_patterns("_build", "executed"))
    shutil.copytree(project_root() / "notebooks", root / "notebooks")
    build_book(profile="smoke", data_root=smoke_root, root=root)
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
