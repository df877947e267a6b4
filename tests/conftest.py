import os
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


# Tests that need a system service or program which `.ci/run` installs: under CI=true a skip of one of them
# is a failure (the set-up is broken), not a quiet pass.
NEEDS_SYSTEM = {"slurm_cluster": "SLURM", "test_book_browser.py": "Chromium"}


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if os.environ.get("CI") != "true" or not report.skipped:
        return
    needs = [what for name, what in NEEDS_SYSTEM.items() if name in item.fixturenames or item.path.name == name]
    if needs:
        reason = report.longrepr[-1] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"CI=true: a test that needs {needs[0]} was skipped ({reason}); .ci/run installs it"
