"""The report and the explorer in a real browser (Debian's chromium driven by Playwright).

Never downloads a browser: uses /usr/bin/chromium, and skips (with the reason) where it or the
playwright package is missing. Screenshots go to ``test-artifacts/`` (gitignored).
"""
from __future__ import annotations

import dataclasses
import re
import shutil
import threading
from pathlib import Path

import pytest

from conftest import CHROMIUM
from demo_run import pages_run_dir, png_bytes
from mined_run import make_mined_run

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="/usr/bin/chromium is missing (apt-get install chromium)"),
]
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright for Python is not installed")

# lazy images are switched to eager first, so that every image of the page is fetched and checked
LOAD_ALL = "() => { for (const i of document.images) { i.loading = 'eager'; } }"
ALL_DONE = "() => Array.from(document.images).every(i => i.complete)"
BROKEN_IMAGES = "Array.from(document.images).filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.src)"


def serve(app):
    """``app`` under waitress in a thread (the production server); yields its URL."""
    from convlens.explorer.server import ServerLimits, make_server

    server = make_server(app, "127.0.0.1", 0, ServerLimits(threads=4, timeout=30))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    return server, f"http://127.0.0.1:{server.effective_port}"


@pytest.fixture(scope="module")
def server_url(tmp_path_factory: pytest.TempPathFactory):
    from convlens.explorer import create_app

    server, url = serve(create_app(pages_run_dir(tmp_path_factory)))
    yield url
    server.close()


@pytest.fixture(scope="module")
def torchvision_run(tmp_path_factory: pytest.TempPathFactory):
    """A synthetic mined run of mobilenet_v2's layers, served with a random-weight mobilenet_v2
    state_dict at a 64 px input (a torchvision model loaded from its weights file, as users do)."""
    import torch
    import torchvision

    from convlens.explorer import create_app
    from convlens.images.data import Preprocessing
    from convlens.nets.loading import load_model

    base = tmp_path_factory.mktemp("tv")
    run = make_mined_run(base / "run", input_size=64)
    torch.manual_seed(0)
    torch.save(torchvision.models.mobilenet_v2().state_dict(), base / "mobilenet_v2.pt")

    def model():
        loaded = load_model("torchvision:mobilenet_v2", weights=base / "mobilenet_v2.pt")
        pre = loaded.preprocessing
        return dataclasses.replace(loaded, preprocessing=Preprocessing(72, 64, pre.mean, pre.std))

    server, url = serve(create_app(run, model=model, model_label="torchvision:mobilenet_v2 (random weights)"))
    yield url
    server.close()


def _all_loaded(page) -> None:
    page.wait_for_load_state("load")
    page.evaluate(LOAD_ALL)
    page.wait_for_function(ALL_DONE, timeout=30_000)
    assert page.evaluate(BROKEN_IMAGES) == []


def _shot(page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / name), full_page=True)


def test_report_opens_from_disk(browser, tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> None:
    from convlens.report import build_report

    index = build_report(pages_run_dir(tmp_path_factory))
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
    _shot(page, "report.png")
    page.close()


def test_explorer_click_map_and_upload(browser, server_url: str, tmp_path: Path) -> None:
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    page.goto(server_url + "/")
    page.click("a.layer >> nth=0")
    _all_loaded(page)
    page.click("a.fmap >> nth=0")
    # a map the demo's mine did not project is projected on this first view (the page fills itself in)
    page.locator("#projections img.proj").nth(8).wait_for(timeout=120_000)
    _all_loaded(page)
    assert page.locator("#projections img.proj").count() == 9
    assert page.locator("#patches img.patch").count() == 9
    _shot(page, "explorer-map.png")

    upload = tmp_path / "upload.png"
    upload.write_bytes(png_bytes((60, 44)))
    page.goto(server_url + "/")
    page.set_input_files("input[type=file]", str(upload))
    page.click("#upload button[type=submit]")
    page.wait_for_selector("#occlusion img.occ", timeout=120_000)
    _all_loaded(page)
    assert page.locator("#occlusion img.occ").count() == 4
    _shot(page, "explorer-upload.png")

    bad = tmp_path / "bad.png"
    bad.write_bytes(b"this is not a png")
    page.goto(server_url + "/")
    page.set_input_files("input[type=file]", str(bad))
    page.click("#upload button[type=submit]")
    assert "not an image that can be decoded" in page.content()
    page.goto(server_url + "/")  # and the server keeps serving
    assert page.locator("a.layer").count() >= 1
    page.close()


def test_explorer_walk_layer_unit_keyboard_class(browser, torchvision_run: str) -> None:
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    page.goto(torchvision_run + "/")
    _all_loaded(page)
    page.click("a.layer >> text=features.13")
    _all_loaded(page)
    assert page.locator("#tiles a.fmap").count() == 96
    _shot(page, "explorer-layer.png")
    page.click('#tiles a.fmap[data-map="20"]')  # a map beyond the first 16
    _all_loaded(page)
    assert page.url.endswith("/layer/features.13/map/20")
    assert page.locator("#projections img.proj").count() == 9 and page.locator("#drivers tr").count() >= 3
    _shot(page, "explorer-unit.png")
    page.keyboard.press("j")  # next map by keyboard
    page.wait_for_url(re.compile(r".*/map/21$"))
    page.keyboard.press("ArrowLeft")
    page.wait_for_url(re.compile(r".*/map/20$"))
    _all_loaded(page)
    name = page.locator("#patches a.cls").first.inner_text()
    page.locator("#patches a.cls").first.click()  # the class of its top image
    _all_loaded(page)
    assert "/class/" in page.url and name in page.locator("h2").inner_text()
    _shot(page, "explorer-class.png")
    page.click(".classmaps a.fmap >> nth=0")  # back to a unit
    _all_loaded(page)
    assert re.search(r"/layer/[\w.]+/map/\d+$", page.url) and page.locator("#patches img.patch").count() == 9
    page.fill("form.jump input", "features.6:17")
    page.press("form.jump input", "Enter")
    page.wait_for_url(re.compile(r".*/layer/features.6/map/17$"))
    assert all(u.startswith(torchvision_run) for u in requests), [u for u in requests if torchvision_run not in u]
    page.close()


def test_explorer_upload_on_a_torchvision_model(browser, torchvision_run: str, tmp_path: Path) -> None:
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    upload = tmp_path / "upload.png"
    upload.write_bytes(png_bytes((96, 80)))
    page.goto(torchvision_run + "/")
    page.set_input_files("input[type=file]", str(upload))
    page.select_option("#upload select[name=rule]", "guided")
    page.click("#upload button[type=submit]")
    page.wait_for_selector("#job-progress", timeout=30_000)  # the progress state while it computes
    page.wait_for_selector("#occlusion img.occ", timeout=240_000)
    _all_loaded(page)
    assert re.search(r"/analysis/[\w-]+$", page.url)
    assert page.locator("#occlusion img.occ").count() == 4 and page.locator(".colourbar").count() == 3
    assert page.locator("table.labelkey tr").count() >= 1
    layers = page.locator(".layerproj .lbl").all_inner_texts()
    assert layers == ["features.3", "features.6", "features.13"]
    assert page.locator("#projections img.proj").count() == 12
    _shot(page, "explorer-upload-torchvision.png")
    link = page.url
    page.goto(torchvision_run + "/")
    page.goto(link)  # the result can be linked to
    assert page.locator("#occlusion img.occ").count() == 4
    page.close()
