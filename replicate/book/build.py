"""Build the book: execute its notebooks with papermill, refuse to publish failures, render HTML.

The book's table of contents (``book/_toc.yml``) is the list of notebooks: a page
``executed/<path>`` is the executed copy of ``notebooks/<path>.ipynb``. Notebooks run in parallel
(``jobs``); a failing notebook does not stop the others, keeps its executed copy (with papermill's
error banner) for inspection, and makes the build fail with the notebook, the cell and the error.
Pages that summarise the others (notebook metadata ``{"replicate": {"stage": 1}}``: the summary page,
the provenance appendix) run after every stage-0 notebook has finished. Jupyter Book 1 renders with
execution off, so it never runs code itself.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import nbformat
import yaml

from ..errors import ReplicateError
from ..profiles import DEFAULT as DEFAULT_PROFILE

KERNEL_NAME = "replicate"
EXECUTED = "executed"
RESULTS = "results"


@dataclass
class NotebookRun:
    source: Path
    output: Path
    error: str | None = None
    seconds: float = 0.0


def project_root() -> Path:
    """The checkout holding ``book/`` and ``notebooks/`` (the package is installed editable)."""
    root = Path(__file__).resolve().parents[2]
    if not (root / "book" / "_toc.yml").is_file():
        raise ReplicateError(f"{root}: no book/_toc.yml here; run from a checkout of the project")
    return root


def _toc_files(node) -> list[str]:
    files = []
    if isinstance(node, dict):
        if "file" in node:
            files.append(str(node["file"]))
        for value in node.values():
            files.extend(_toc_files(value))
    elif isinstance(node, list):
        for item in node:
            files.extend(_toc_files(item))
    return files


def book_notebooks(root: Path) -> list[tuple[Path, Path]]:
    """``(source notebook, executed copy)`` for every ``executed/`` page of the TOC."""
    toc_path = root / "book" / "_toc.yml"
    try:
        toc = yaml.safe_load(toc_path.read_text())
    except yaml.YAMLError as exc:
        raise ReplicateError(f"{toc_path}: malformed YAML: {exc}") from None
    pairs = []
    for entry in _toc_files(toc):
        entry = entry.removesuffix(".ipynb")
        if not entry.startswith(f"{EXECUTED}/"):
            continue
        rel = entry[len(EXECUTED) + 1:]
        source = root / "notebooks" / f"{rel}.ipynb"
        if not source.is_file():
            raise ReplicateError(f"{toc_path}: page {entry} has no notebook {source}")
        pairs.append((source, root / "book" / f"{entry}.ipynb"))
    return pairs


def ensure_kernel() -> None:
    """Install the ``replicate`` kernelspec into this environment if it is missing (papermill pins it)."""
    from jupyter_client.kernelspec import KernelSpecManager

    os.environ.setdefault("JUPYTER_PREFER_ENV_PATH", "1")
    if KERNEL_NAME not in KernelSpecManager().find_kernel_specs():
        from ipykernel.kernelspec import install

        install(kernel_name=KERNEL_NAME, display_name=KERNEL_NAME, prefix=sys.prefix)


def notebook_parameters(source: Path, wanted: dict) -> dict:
    """The subset of ``wanted`` that the notebook's ``parameters`` cell declares."""
    import papermill as pm

    declared = pm.inspect_notebook(str(source))
    return {k: v for k, v in wanted.items() if k in declared}


def execution_stage(source: Path) -> int:
    """The notebook's ``metadata.replicate.stage`` (0 unless set): stages run in increasing order."""
    nb = nbformat.read(source, as_version=4)
    stage = nb.metadata.get("replicate", {}).get("stage", 0)
    if not isinstance(stage, int) or isinstance(stage, bool) or stage < 0:
        raise ReplicateError(f"{source}: metadata.replicate.stage must be a non-negative integer, got {stage!r}")
    return stage


def execute_notebook(run: NotebookRun, parameters: dict, cwd: Path) -> NotebookRun:
    import time

    import papermill as pm

    run.output.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    try:
        pm.execute_notebook(
            str(run.source), str(run.output), parameters=notebook_parameters(run.source, parameters),
            kernel_name=KERNEL_NAME, cwd=str(cwd), progress_bar=False,
        )
    except pm.PapermillExecutionError as exc:
        run.error = f"cell {exc.exec_count}: {exc.ename}: {exc.evalue}"
    except Exception as exc:  # kernel death, timeouts: still one notebook's failure, reported with the rest
        run.error = f"{type(exc).__name__}: {exc}"
    run.seconds = time.perf_counter() - start
    return run


SMOKE_BANNER = ("```{warning}\nBuilt from the **{profile}** profile: a plumbing check of the code path, not "
                "evidence. Its runs train for seconds on a few images; no number on this page means anything. "
                "The book's evidence is built with `make book` (the `proxy` profile).\n```")


def _relative(value, root: Path):
    """A parameter value with this machine's checkout path replaced by ``.`` (no absolute paths on a page)."""
    return value.replace(str(root), ".") if isinstance(value, str) else value


def present(path: Path, source: Path, root: Path, profile: str) -> None:
    """Turn an executed notebook into a report page, in place.

    Code cells get ``hide-input`` (a toggle shows the source); the parameters cell and papermill's injected
    parameters are removed from the page, and the stderr output of every cell (warnings, run logs) is moved
    out of the page into a collapsed "How this page was made" section at the end, with the parameters (no
    absolute machine paths) and the papermill command that remakes the page. A page built from a profile
    that is not evidence (``smoke``) opens with a warning banner.
    """
    from .. import profiles

    nb = nbformat.read(path, as_version=4)
    params: dict = {}
    logs: list[str] = []
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        tags = set(cell.metadata.get("tags", []))
        if tags & {"parameters", "injected-parameters"}:
            tags.add("remove-cell")
        else:
            tags.add("hide-input")
        cell.metadata["tags"] = sorted(tags)
        kept = []
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream" and out.get("name") == "stderr":
                logs.append(out.get("text", ""))
            else:
                kept.append(out)
        cell["outputs"] = kept
    params = {k: _relative(v, root) for k, v in nb.metadata.get("papermill", {}).get("parameters", {}).items()}
    command = "papermill " + str(source.relative_to(root)) + " out.ipynb " + " ".join(
        f"-p {k} {v!s}" for k, v in params.items() if v not in ("", None))
    lines = ["<details><summary>How this page was made</summary>", "",
             f"Executed from `{source.relative_to(root)}` with papermill (`replicate book --profile {profile}`). "
             "To remake this page alone:", "", "```bash", command, "```", "", "Parameters:", "", "```python",
             *(f"{k} = {v!r}" for k, v in params.items()), "```"]
    if logs:
        lines += ["", "Log of the page's execution (warnings, runs launched):", "", "```text",
                  "".join(_relative(text, root) for text in logs).rstrip(), "```"]
    lines += ["", "</details>"]
    nb.cells.append(nbformat.v4.new_markdown_cell("\n".join(lines)))
    if profile in profiles.PROFILES and not profiles.get(profile).evidence:
        nb.cells.insert(0, nbformat.v4.new_markdown_cell(SMOKE_BANNER.replace("{profile}", profile)))
    nbformat.write(nb, path)


def failed_in_output(path: Path) -> bool:
    """Papermill marks a notebook that raised with ``metadata.papermill.exception``; JB1 would render it silently."""
    nb = nbformat.read(path, as_version=4)
    return bool(nb.metadata.get("papermill", {}).get("exception"))


@contextmanager
def kernel_threads(jobs: int) -> Iterator[None]:
    """``OMP_NUM_THREADS`` = cores / ``jobs`` for the kernels started meanwhile (they inherit it), unless set.

    Kernels in parallel then share the cores instead of oversubscribing them: two kernels training with
    all cores each made smoke runs several times slower.
    """
    if "OMP_NUM_THREADS" in os.environ:
        yield
        return
    os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // max(1, jobs)))
    try:
        yield
    finally:
        del os.environ["OMP_NUM_THREADS"]


def execute_all(pairs: list[tuple[Path, Path]], parameters: dict, cwd: Path, jobs: int) -> list[NotebookRun]:
    """Execute the notebooks stage by stage (see :func:`execution_stage`), ``jobs`` at a time within one."""
    stages: dict[int, list[NotebookRun]] = {}
    for src, out in pairs:
        stages.setdefault(execution_stage(src), []).append(NotebookRun(src, out))
    done = []
    with kernel_threads(jobs), ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        for stage in sorted(stages):
            done += list(pool.map(lambda r: execute_notebook(r, parameters, cwd), stages[stage]))
    for run in done:
        print(f"  {'FAILED' if run.error else 'ok':6} {run.source.relative_to(cwd)}  ({run.seconds:.1f} s)", flush=True)
    return done


def build_html(book_dir: Path) -> Path:
    exe = Path(sys.executable).with_name("jupyter-book")
    cmd = [str(exe), "build", str(book_dir), "--keep-going"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-25:])
        raise ReplicateError(f"jupyter-book build {book_dir} failed (exit {proc.returncode}):\n{tail}")
    return book_dir / "_build" / "html" / "index.html"


def build_book(profile: str = DEFAULT_PROFILE, data_root: str | os.PathLike | None = None, jobs: int = 2,
               only: list[str] | None = None, root: Path | None = None, executor: str | None = None,
               seeds: int | None = None, run_missing: bool | None = None) -> Path:
    """Execute every book notebook for ``profile`` and build the HTML book; returns its index.html.

    ``root`` is the folder holding ``book/`` and ``notebooks/`` (default: this checkout); run results
    live in ``root/results``. ``executor`` (where missing runs are launched) and ``seeds`` (runs per
    table row) reach the notebooks that declare them; ``None`` keeps the notebooks' defaults.
    ``run_missing``: whether table notebooks train the runs the store lacks; by default
    (:func:`replicate.profiles.trains_missing_by_default`) only on
    ``smoke`` (seconds per run), while on the other profiles the book shows what the store holds (the
    ``proxy`` records are committed) and marks the rest missing: produce them with ``replicate sweep``.
    """
    from ..data.profiles import data_config, ensure_data

    root = Path(root) if root is not None else project_root()
    cfg = data_config(profile, data_root if data_root is not None else root / "data" / profile)
    print(f"preparing {profile} data in {cfg.root}", flush=True)
    ensure_data(cfg)
    pairs = book_notebooks(root)
    if only:
        pairs = [p for p in pairs if any(s in str(p[0]) for s in only)]
    ensure_kernel()
    from ..experiments.sweep import plan
    from ..profiles import PROFILES, trains_missing_by_default

    if run_missing is None:
        run_missing = trains_missing_by_default(profile)
    runs_plan = plan(profile, seeds or PROFILES[profile].seeds, results_dir=root / RESULTS)
    print(runs_plan.describe(profile), flush=True)
    if runs_plan.missing and not run_missing:
        print(f"missing runs are not trained by this build (shown as missing); produce them with `replicate sweep "
              f"PAPER --profile {profile}` or build with --run-missing", flush=True)
    print(f"executing {len(pairs)} notebook(s) with profile {profile}, {jobs} at a time", flush=True)
    parameters = {"profile": profile, "data_root": str(cfg.root.resolve()), "results_dir": str(root / RESULTS)}
    parameters.update({k: v for k, v in {"executor": executor, "seeds": seeds}.items() if v is not None})
    parameters["run_missing"] = run_missing
    runs = execute_all(pairs, parameters, root, jobs)
    failed = [r for r in runs if r.error or failed_in_output(r.output)]
    for r in runs:
        if r not in failed:
            present(r.output, r.source, root, profile)
    if failed:
        lines = [f"{r.source.relative_to(root)}: {r.error or 'papermill marked it failed'} (executed copy: {r.output})"
                 for r in failed]
        raise ReplicateError(f"{len(failed)} notebook(s) failed; the book was not built:\n  " + "\n  ".join(lines))
    return build_html(root / "book")
