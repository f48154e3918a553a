"""What people see on the explorer's pages, in Chromium: image scaling, projections on demand, numbers.

Small synthetic runs only: one from :mod:`mined_run` (tiles of 16 px, upscaled, and some of 200 px,
downscaled), and one mined for real with ``--project none`` on zfnet-tiny (see
``test_explorer_ondemand``). Uses Debian's /usr/bin/chromium; never downloads a browser.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_browser import ALL_DONE, serve
from test_ondemand import mine

from conftest import CHROMIUM
from mined_run import make_mined_run

pytestmark = [
    pytest.mark.browser,
    pytest.mark.timeout(300),
    pytest.mark.skipif(not CHROMIUM.exists(), reason="/usr/bin/chromium is missing (apt-get install chromium)"),
]
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright for Python is not installed")

# per image: natural width, displayed width, computed image-rendering
RENDERING = """() => Array.from(document.images).map(i => [i.naturalWidth, i.clientWidth,
    getComputedStyle(i).imageRendering, i.className, i.src])"""


@pytest.fixture(scope="module")
def synthetic_url(tmp_path_factory: pytest.TempPathFactory):
    from convlens.explorer import create_app

    run = make_mined_run(tmp_path_factory.mktemp("pages") / "run", {"features.3": 12, "features.6": 8})
    big = np.random.default_rng(1).integers(0, 256, (200, 200, 3), dtype=np.uint8)
    for r in range(9):  # map 0 of features.3: tiles larger than shown (downscaled)
        for kind in ("proj", "patch"):
            Image.fromarray(big).save(run / "mine" / "units" / "features.3" / f"0_{r}_{kind}.png")
    server, url = serve(create_app(run))
    yield url
    server.close()


@pytest.fixture(scope="module")
def lazy_url(tmp_path_factory: pytest.TempPathFactory):
    from convlens.explorer import create_app

    tmp = tmp_path_factory.mktemp("lazy")
    server, url = serve(create_app(mine(tmp, tmp / "run" / "mine", "none").parent))
    yield url
    server.close()


def _images(page) -> list:
    page.wait_for_load_state("load")
    page.wait_for_function(ALL_DONE, timeout=30_000)
    return page.evaluate(RENDERING)


@pytest.mark.parametrize("path", ["/layer/features.3", "/layer/features.3/map/0", "/layer/features.3/map/5",
                                  "/class/0"])
def test_no_image_is_downscaled_with_nearest_neighbour(browser, synthetic_url: str, path: str) -> None:
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(synthetic_url + path)
    shown = [x for x in _images(page) if x[0] > 0]
    assert shown, path
    down = [x for x in shown if x[0] > x[1]]
    up = [x for x in shown if x[0] < x[1]]
    assert all(x[2] not in ("pixelated", "crisp-edges") for x in down), down[:3]
    assert all(x[2] == "pixelated" for x in up), up[:3]  # tiny maps enlarged stay crisp
    if path.endswith("/map/0"):
        assert len(down) >= 18  # the 200 px tiles were checked
    page.close()


def test_unit_page_links_the_full_size_pair(browser, synthetic_url: str) -> None:
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(synthetic_url + "/layer/features.3/map/0")
    page.click("#projections figure:nth-child(2) a")
    page.wait_for_load_state("load")
    assert page.url.endswith("/layer/features.3/map/0/unit/1")
    pair = _images(page)
    assert len(pair) == 2 and all(nat == shown == 200 for nat, shown, *_ in pair), pair
    page.close()


def test_unit_page_of_a_run_mined_without_projections_loads_its_images(browser, lazy_url: str) -> None:
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(lazy_url + "/layer/conv5/map/2")
    page.wait_for_selector("#projected", timeout=60_000)
    imgs = _images(page)
    proj = [x for x in imgs if x[3] == "proj"]
    patch = [x for x in imgs if x[3] == "patch"]
    assert len(proj) == len(patch) == 4 and all(x[0] > 0 for x in proj + patch), imgs
    assert "Projected on this first view" in page.inner_text("#projected")
    page.reload()
    assert page.locator("#projecting").count() == 0 and len([x for x in _images(page) if x[3] == "proj"]) == 4
    page.close()


def test_numbers_saturation_sort_and_upload_fields(browser, lazy_url: str) -> None:
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(lazy_url + "/layer/conv5")
    caps = page.locator("a.fmap .cap.muted").all_inner_texts()
    assert caps and all(c.endswith("sat 0%") for c in caps), caps[:4]  # conv5 of zfnet-tiny does not clip
    page.goto(lazy_url + "/layer/conv5?sort=saturation")
    assert "cannot order them" in page.inner_text("#unordered")
    page.goto(lazy_url + "/")
    window, stride = page.locator("input[name=window]"), page.locator("input[name=stride]")
    assert window.get_attribute("max") == "32" and window.get_attribute("placeholder") == "8"
    assert stride.get_attribute("placeholder") == "4"
    for c in range(2):
        page.goto(f"{lazy_url}/class/{c}")
        assert "nan" not in page.inner_text("main").lower()
    page.close()


def test_screenshots_of_a_layer_and_a_unit_page(browser, lazy_url: str) -> None:
    out = Path(__file__).resolve().parents[2] / "test-artifacts"
    out.mkdir(exist_ok=True)
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(lazy_url + "/layer/conv5/map/4")
    page.wait_for_selector("#projected", timeout=60_000)
    _images(page)
    page.screenshot(path=str(out / "unit_on_demand.png"))
    page.goto(lazy_url + "/layer/conv5")
    _images(page)
    page.screenshot(path=str(out / "layer_on_demand.png"))
    assert (out / "unit_on_demand.png").stat().st_size > 0
    page.close()
