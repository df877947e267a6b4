"""The book: its notebook list, clean notebooks, failures that stop the build, an end-to-end smoke build."""

import shutil
from pathlib import Path

import nbformat
import papermill as pm
import pytest

from replicate.book.build import (book_notebooks, build_book, ensure_kernel, execute_all, execution_stage,
                                  failed_in_output, project_root)
from replicate.errors import ReplicateError

ROOT = project_root()


def test_every_notebook_is_in_the_book_and_stored_clean():
    listed = {src for src, _ in book_notebooks(ROOT)}
    on_disk = set((ROOT / "notebooks").rglob("*.ipynb"))
    assert listed == on_disk
    for path in on_disk:
        nb = nbformat.read(path, as_version=4)
        assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), f"{path} has outputs"
        params = pm.inspect_notebook(str(path))
        assert {"profile", "data_root"} <= set(params), f"{path} lacks profile/data_root parameters"


def _mini_project(tmp_path: Path, notebooks: dict[str, str]) -> Path:
    root = tmp_path / "proj"
    (root / "book").mkdir(parents=True)
    shutil.copy(ROOT / "book" / "_config.yml", root / "book")
    (root / "book" / "intro.md").write_text("# Test book\n")
    chapters = "\n".join(f"      - file: executed/{name}" for name in notebooks)
    (root / "book" / "_toc.yml").write_text(f"format: jb-book\nroot: intro\nparts:\n  - caption: T\n    chapters:\n{chapters}\n")
    for name, source in notebooks.items():
        nb = nbformat.v4.new_notebook()
        params = nbformat.v4.new_code_cell('profile: str = "synthetic"\ndata_root: str = ""')
        params.metadata["tags"] = ["parameters"]
        nb.cells = [params, nbformat.v4.new_code_cell(source)]
        nb.metadata["kernelspec"] = {"name": "replicate", "display_name": "replicate", "language": "python"}
        path = root / "notebooks" / f"{name}.ipynb"
        path.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, path)
    return root


def test_failing_notebook_fails_the_build_and_others_still_run(tmp_path, smoke_root):
    root = _mini_project(tmp_path, {"good": "print('fine', profile)", "bad": "1 / 0"})
    with pytest.raises(ReplicateError) as exc:
        build_book(profile="smoke", data_root=smoke_root, root=root)
    message = str(exc.value)
    assert "bad.ipynb" in message and "ZeroDivisionError" in message and "good.ipynb" not in message
    good = root / "book" / "executed" / "good.ipynb"
    bad = root / "book" / "executed" / "bad.ipynb"
    assert not failed_in_output(good) and failed_in_output(bad)
    outputs = [o for c in nbformat.read(good, 4).cells for o in c.get("outputs", [])]
    assert any("fine smoke" in o.get("text", "") for o in outputs)
    assert not (root / "book" / "_build").exists()


def test_summary_stage_runs_after_the_tables(tmp_path, smoke_root):
    """Stage-1 pages (summary, appendix) read what the stage-0 table notebooks wrote, even run in parallel."""
    root = _mini_project(tmp_path, {
        "summary": "from pathlib import Path\nprint('found', Path('table.txt').read_text())",
        "table": "import time\nfrom pathlib import Path\ntime.sleep(2)\nPath('table.txt').write_text('42')",
    })
    summary = root / "notebooks" / "summary.ipynb"
    nb = nbformat.read(summary, 4)
    nb.metadata["replicate"] = {"stage": 1}
    nbformat.write(nb, summary)
    assert execution_stage(summary) == 1 and execution_stage(root / "notebooks" / "table.ipynb") == 0
    ensure_kernel()
    runs = execute_all(book_notebooks(root), {"profile": "smoke", "data_root": str(smoke_root)}, root, jobs=2)
    assert [r.error for r in runs] == [None, None]
    outputs = [o for c in nbformat.read(root / "book" / "executed" / "summary.ipynb", 4).cells
               for o in c.get("outputs", [])]
    assert any("found 42" in o.get("text", "") for o in outputs)


@pytest.mark.parametrize("profile, run_missing, expected", [("smoke", None, True), ("synthetic", None, False),
                                                            ("smoke", False, False)])
def test_table_notebooks_train_missing_runs_only_on_smoke_by_default(tmp_path, monkeypatch, profile, run_missing,
                                                                    expected):
    root = _mini_project(tmp_path, {"table": "print('run_missing', run_missing)"})
    nb_path = root / "notebooks" / "table.ipynb"
    nb = nbformat.read(nb_path, 4)
    nb.cells[0].source += "\nrun_missing: bool = True"
    nbformat.write(nb, nb_path)
    seen = {}

    def fake_execute_all(pairs, parameters, cwd, jobs):
        seen.update(parameters)
        return []

    import replicate.book.build as build
    import replicate.data.profiles as profiles

    monkeypatch.setattr(build, "execute_all", fake_execute_all)
    monkeypatch.setattr(build, "build_html", lambda book: book / "index.html")
    monkeypatch.setattr(profiles, "ensure_data", lambda cfg: None)  # no dataset is generated
    build_book(profile=profile, data_root=tmp_path / "data", root=root, run_missing=run_missing)
    assert seen["run_missing"] is expected and seen["profile"] == profile


def test_toc_page_without_notebook_is_an_error(tmp_path):
    root = _mini_project(tmp_path, {"gone": "pass"})
    (root / "notebooks" / "gone.ipynb").unlink()
    with pytest.raises(ReplicateError, match="has no notebook"):
        book_notebooks(root)


@pytest.mark.slow
def test_book_builds_on_smoke(smoke_book):
    root = smoke_book
    assert (root / "book" / "_build" / "html" / "index.html").is_file()
    html = root / "book" / "_build" / "html"
    card = (html / "executed" / "dataset" / "card.html").read_text()
    assert "bars-20" in card and "<table" in card and card.count("<img") >= 2
    assert "Traceback" not in card
    summary = (html / "executed" / "summary.html").read_text()
    assert "claims holding" in summary and "<table" in summary and "Traceback" not in summary
    assert "Which claims reproduced" in summary and "plumbing check" in summary  # the smoke banner
    # smoke runs do not learn (AP below the floor), so their claims are not checked
    assert "claims checked yet" in summary and "did not learn" in summary
    calibration = (html / "executed" / "benchmark" / "calibration.html").read_text()
    assert "Is the benchmark a fair proxy?" in calibration and "Spearman" in calibration
    assert "<table" in calibration and "<img" in calibration and "Traceback" not in calibration
    assert "positives per object" in calibration  # the assignment statistic runs on any profile
    provenance = (html / "executed" / "appendix" / "provenance.html").read_text()
    assert "table rows" in provenance and "train min" in provenance  # the runs, and the rows each serves
    assert "baseline ms" in provenance and "speed-up" in provenance
    assert "Traceback" not in provenance
    assert "Checking a number" in provenance and "replicate verify " in provenance
    for paper in ("mod", "aligndet", "retinanet_conf", "salt", "tsd"):
        assert (html / "papers" / f"{paper}.html").is_file()
    for page in ("intro", "table1", "figure4", "table2", "table3", "table4", "table5", "table6", "code_variants"):
        text = (html / "executed" / "retinanet_conf" / f"{page}.html").read_text()
        assert "<table" in text and "<img" in text and "Traceback" not in text, page
        # a report page: code hidden behind a toggle, parameters and logs in the collapsed section
        assert "How this page was made" in text and "plumbing check" in text and str(root) not in text, page
        assert "tag_hide-input" in text and "injected-parameters" not in text, page
    table2 = (html / "executed" / "retinanet_conf" / "table2.html").read_text()
    assert "(reference)" in table2 and "overflow-x: auto" in table2  # effects first, tables that fit
    assert "retinanet_conf:table5" in summary
    for page in ("figure1", "table1", "table2", "table3", "table4", "table5", "table6", "table7", "figure4",
                 "code_variants"):
        text = (html / "executed" / "mod" / f"{page}.html").read_text()
        assert "<img" in text and "Traceback" not in text, page  # figures draw only from a trained run
        assert "<table" in text or page in ("figure1", "figure4"), page
    for page in ("table1", "table2", "table3", "table4", "table5", "table6", "table7", "figure4"):
        text = (html / "executed" / "aligndet" / f"{page}.html").read_text()
        assert "<img" in text and "<table" in text and "Traceback" not in text, page
    assert "aligndet:table6" in summary and "aligndet:table1" in summary
    for page in ("table1", "table2", "table3", "table4", "table5", "figure8", "figure9", "figure10", "code_variants"):
        text = (html / "executed" / "salt" / f"{page}.html").read_text()
        assert "<img" in text and "<table" in text and "Traceback" not in text, page
    assert "salt:table1" in summary and "salt:table4" in summary
    for page in ("table1", "table2", "table3", "table4", "table5", "table6", "table7", "code_variants"):
        text = (html / "executed" / "tsd" / f"{page}.html").read_text()
        assert "<img" in text and "<table" in text and "Traceback" not in text, page
    assert "tsd:table3" in summary and "tsd:table5_large" in summary and "tsd:table7" in summary
    assert "mask_AP" in (html / "executed" / "tsd" / "table7.html").read_text()
    table3 = (html / "executed" / "mod" / "table3.html").read_text()
    # smoke runs do not learn: Table 3's statistics read no seed, and the verdict says why
    assert "mod:table2" in summary and "not checked: no seed where both FCOS and FCOS+RFA learned" in table3
