"""The built book in a real browser: headless Chromium renders the home page and the summary's table."""

import shutil
import subprocess
from pathlib import Path

import pytest

from replicate.book.build import build_book, project_root
from replicate.experiments import report
from replicate.experiments.spec import Claim, Row, TableSpec

ROOT = project_root()
CHROMIUM = Path("/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.is_file(), reason=f"no headless browser: {CHROMIUM} is absent"),
]

SPEC = TableSpec(paper="mod", table="table9", title="Browser check", source="MOD, Table 9", metrics=("AP",),
                 rows=(Row("base", "fcos", paper={"AP": 38.6}), Row("+RFA", "fcos", paper={"AP": 39.4})),
                 claims=(Claim("RFA helps", better="+RFA", worse="base"),))


@pytest.fixture(scope="module")
def html(tmp_path_factory, smoke_root) -> Path:
    """The smoke book built once in a copy of the project, with one table's headline in its results."""
    root = tmp_path_factory.mktemp("browser") / "proj"
    shutil.copytree(ROOT / "book", root / "book", ignore=shutil.ignore_patterns("_build", "executed"))
    shutil.copytree(ROOT / "notebooks", root / "notebooks")
    records = {"base": [{"key": "a", "metrics": {"AP": 0.30}}], "+RFA": [{"key": "b", "metrics": {"AP": 0.31}}]}
    report.save_headline(report.headline(SPEC, records), root / "results", "smoke")
    return build_book(profile="smoke", data_root=smoke_root, root=root).parent


def chromium(page: Path, *args: str, tmp_path: Path) -> str:
    proc = subprocess.run([str(CHROMIUM), *FLAGS, f"--user-data-dir={tmp_path / 'profile'}", *args, page.as_uri()],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def test_home_page_renders_with_its_navigation(html, tmp_path):
    # index.html redirects to intro.html; the virtual-time budget lets the browser follow it
    dom = chromium(html / "index.html", "--virtual-time-budget=3000", "--dump-dom", tmp_path=tmp_path)
    assert "Misalignment in object detection" in dom
    for page in ("executed/summary.html", "papers/mod.html", "papers/tsd.html", "executed/appendix/provenance.html"):
        assert page in dom, f"no link to {page}"


def test_summary_table_renders_and_screenshots(html, tmp_path):
    page = html / "executed" / "summary.html"
    dom = chromium(page, "--dump-dom", tmp_path=tmp_path)
    table = dom[dom.index("<table"):dom.index("</table>")]
    assert "claims holding" in table and "mod:table9" in table and "Browser check" in table
    assert "Traceback" not in dom
    shot = tmp_path / "page.png"
    chromium(page, f"--screenshot={shot}", "--window-size=1280,2000", tmp_path=tmp_path)
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
