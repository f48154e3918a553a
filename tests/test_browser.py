"""The report and the explorer in a real browser (Debian's chromium driven by Playwright).

Never downloads a browser: uses /usr/bin/chromium, and skips (with the reason) where it or the
playwright package is missing. Screenshots go to ``test-artifacts/`` (gitignored).
"""
from __future__ import annotations

import shutil
import threading
from pathlib import Path

import pytest

from test_explorer import png_bytes, shared_run_dir

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
ARGS = ["--no-sandbox", "--headless=new", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.timeout(900),  # may build the shared demo run (see test_explorer)
    pytest.mark.skipif(not CHROMIUM.exists(), reason="/usr/bin/chromium is missing (apt-get install chromium)"),
]
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright for Python is not installed")

BROKEN_IMAGES = "Array.from(document.images).filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.src)"


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def server_url(tmp_path_factory: pytest.TempPathFactory):
    from werkzeug.serving import make_server

    from convlens.explorer import create_app

    server = make_server("127.0.0.1", 0, create_app(shared_run_dir(tmp_path_factory)), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


def _all_loaded(page) -> None:
    page.wait_for_load_state("load")
    assert page.evaluate(BROKEN_IMAGES) == []


def test_report_opens_from_disk(browser, tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> None:
    from convlens.report import build_report

    index = build_report(shared_run_dir(tmp_path_factory))
    moved = tmp_path / "copied-report"  # the folder alone, elsewhere: still complete
    shutil.copytree(index.parent, moved)
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    page.goto(moved.joinpath("index.html").as_uri())
    _all_loaded(page)
    assert page.locator("img").count() > 10
    assert page.locator("section#mine").count() == 1 and page.locator("svg.chart").count() == 2
    assert all(u.startswith(("file://", "data:")) for u in requests), [u for u in requests if "file:" not in u]
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "report.png"), full_page=True)
    page.close()


def test_explorer_click_map_and_upload(browser, server_url: str, tmp_path: Path) -> None:
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    page.goto(server_url + "/")
    page.click("a.layer >> nth=0")
    _all_loaded(page)
    page.click("a.fmap >> nth=0")
    _all_loaded(page)
    assert page.locator("#projections img.proj").count() == 9
    assert page.locator("#patches img.patch").count() == 9
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "explorer-map.png"), full_page=True)

    upload = tmp_path / "upload.png"
    upload.write_bytes(png_bytes((60, 44)))
    page.goto(server_url + "/")
    page.set_input_files("input[type=file]", str(upload))
    page.click("button[type=submit]")
    page.wait_for_selector("#occlusion img.occ", timeout=60_000)
    _all_loaded(page)
    assert page.locator("#occlusion img.occ").count() == 4
    page.screenshot(path=str(ARTIFACTS / "explorer-upload.png"), full_page=True)

    bad = tmp_path / "bad.png"
    bad.write_bytes(b"this is not a png")
    page.goto(server_url + "/")
    page.set_input_files("input[type=file]", str(bad))
    page.click("button[type=submit]")
    assert "not an image that can be decoded" in page.content()
    page.goto(server_url + "/")  # and the server keeps serving
    assert page.locator("a.layer").count() >= 1
    page.close()
