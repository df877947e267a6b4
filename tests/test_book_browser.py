"""The built book in a real browser: headless Chromium renders the home page and the summary's table."""

import subprocess
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.is_file(), reason=f"no headless browser: {CHROMIUM} is absent"),
]


@pytest.fixture(scope="module")
def html(smoke_book) -> Path:
    """The smoke book's HTML (built once per session, see conftest)."""
    return smoke_book / "book" / "_build" / "html"


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
    assert "within noise" in table and "do not hold" in table and "retinanet_conf:table1" in table
    assert "Traceback" not in dom
    shot = tmp_path / "page.png"
    chromium(page, f"--screenshot={shot}", "--window-size=1280,2000", tmp_path=tmp_path)
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000


def test_provenance_page_names_the_rows_each_run_serves(html, tmp_path):
    dom = chromium(html / "executed" / "appendix" / "provenance.html", "--dump-dom", tmp_path=tmp_path)
    runs = dom[dom.index("<table"):dom.index("</table>")]
    assert "table rows" in runs and "retinanet_conf:" in runs and "Traceback" not in dom
    assert "bd-sidebar-secondary" not in dom  # the page gives its tables the Contents sidebar's width
