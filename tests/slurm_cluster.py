"""The ``slurm_cluster`` fixture: a single-node SLURM cluster for the integration tests.

Started once per test session with ``slurm/local-cluster.sh start`` (seconds when the packages are
installed, ~15 s when apt-get has to install them). The test is skipped, with the script's reason,
only where SLURM cannot run here (exit status 3: not root, packages missing and not installable);
any other failure of the script fails the test with its log tail. ``SLURM_CONF`` is exported for the
session so that submitit's sbatch/squeue/scontrol calls (and the jobs, which inherit the
environment) find the cluster. At the end the cluster is stopped if this session started it and no
other live test session (a lease file per process under the state dir) still uses it.
"""

from __future__ import annotations

import dataclasses
import fcntl
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "slurm" / "local-cluster.sh"
STATE_DIR = Path(os.environ.get("REPLICATE_SLURM_DIR", "/tmp/replicate-slurm"))
STARTED_MARKER = STATE_DIR / "run" / "started-by-tests"


@dataclasses.dataclass(frozen=True)
class SlurmCluster:
    partition: str
    env: dict[str, str]  # variables the SLURM clients need (SLURM_CONF)
    state_dir: Path

    def run(self, *args: str, timeout: float = 30) -> subprocess.CompletedProcess:
        """A SLURM client command (``scontrol``, ``squeue``, ...) against this cluster."""
        return subprocess.run(list(args), capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, **self.env})


def _script(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout)


@contextmanager
def _leases() -> Iterator[Path]:
    (STATE_DIR / "leases").mkdir(parents=True, exist_ok=True)
    with open(STATE_DIR / "leases.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield STATE_DIR / "leases"


def _live_leases(folder: Path) -> list[Path]:
    live = []
    for lease in folder.iterdir():
        try:
            os.kill(int(lease.name), 0)
            live.append(lease)
        except (ValueError, ProcessLookupError):
            lease.unlink(missing_ok=True)  # a crashed session's lease
        except PermissionError:
            live.append(lease)
    return live


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[SlurmCluster]:
    if os.name != "posix" or not SCRIPT.is_file():
        pytest.skip("SLURM tests need Linux and slurm/local-cluster.sh")
    with _leases() as leases:
        was_up = _script("status", timeout=60).returncode == 0
        if not was_up:
            result = _script("start")
            if result.returncode == 3:
                reason = result.stderr.strip().splitlines()[-1] if result.stderr.strip() else "unknown"
                print(f"\nslurm_cluster: {reason}")
                pytest.skip(f"SLURM cannot start here: {reason}")
            if result.returncode != 0:
                pytest.fail(f"slurm/local-cluster.sh start failed (rc={result.returncode}):\n"
                            f"{result.stderr[-4000:]}", pytrace=False)
            STARTED_MARKER.parent.mkdir(parents=True, exist_ok=True)
            STARTED_MARKER.touch()
        (leases / str(os.getpid())).touch()
    env = {"SLURM_CONF": str(STATE_DIR / "etc" / "slurm.conf")}
    saved = os.environ.get("SLURM_CONF")
    os.environ.update(env)  # submitit calls sbatch & co. with the process environment
    try:
        yield SlurmCluster(partition="debug", env=env, state_dir=STATE_DIR)
    finally:
        if saved is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = saved
        with _leases() as leases:
            (leases / str(os.getpid())).unlink(missing_ok=True)
            if STARTED_MARKER.exists() and not _live_leases(leases):
                result = _script("stop", timeout=120)
                STARTED_MARKER.unlink(missing_ok=True)
                if result.returncode != 0:
                    print(f"\nslurm_cluster: stop failed:\n{result.stderr[-2000:]}")
