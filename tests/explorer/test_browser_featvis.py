"""The feature-visualization panel in Chromium: Compute posts past the server's cross-site guard, the
panel fills itself in, and the image is shown at its own size (never downscaled with nearest-neighbour).

A run mined for real with ``--project none`` on zfnet-tiny (see ``test_ondemand.mine``); the
on-demand settings are shrunk to a few steps. Uses Debian's /usr/bin/chromium; never downloads a browser.
"""
from __future__ import annotations

from pathlib import Path

import pytest
from test_browser import ALL_DONE, serve
from test_ondemand import mine

from conftest import CHROMIUM

pytestmark = [
    pytest.mark.browser,
    pytest.mark.timeout(300),
    pytest.mark.skipif(not CHROMIUM.exists(), reason="/usr/bin/chromium is missing (apt-get install chromium)"),
]
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright for Python is not installed")

SIZE = 96
# per image: natural width, displayed width, computed image-rendering
RENDERING = """sel => Array.from(document.querySelectorAll(sel)).map(i => [i.naturalWidth, i.clientWidth,
    getComputedStyle(i).imageRendering])"""


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory):
    from convlens.explorer import create_app, featvis_routes

    saved = dict(featvis_routes.ON_DEMAND)
    featvis_routes.ON_DEMAND.update(steps=4, size=SIZE)
    tmp = tmp_path_factory.mktemp("featvis_browser")
    server, address = serve(create_app(mine(tmp, tmp / "run" / "mine", "none").parent))
    yield address
    server.close()
    featvis_routes.ON_DEMAND.clear()
    featvis_routes.ON_DEMAND.update(saved)


def test_compute_fills_the_panel_with_an_image_at_its_own_size(browser, url: str) -> None:
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(url + "/layer/conv5/map/3")
    assert page.get_attribute("#featvis", "data-state") == "none"
    button = page.locator("#featvis form.fv-compute button")
    assert button.inner_text().startswith("Compute (about ")
    with page.expect_response(lambda r: r.request.method == "POST") as posted:
        button.click()
    assert posted.value.status in (200, 202), posted.value.text()  # not 403: the guard lets the page's POST pass
    page.wait_for_selector("#featvis img.featvis", timeout=60_000)
    page.wait_for_function("() => document.querySelector('#featvis img.featvis').complete")
    assert page.get_attribute("#featvis", "data-state") == "cached"
    (shown,) = page.evaluate(RENDERING, "#featvis img.featvis")
    assert shown[0] == SIZE and shown[1] == SIZE and shown[2] not in ("pixelated", "crisp-edges"), shown
    caption = page.inner_text("#fv-caption")
    assert "Activation" in caption and "the map's strongest mined image" in caption, caption
    assert "4 steps, 96 px" in page.inner_text("#featvis .fv-settings")
    out = Path(__file__).resolve().parents[2] / "test-artifacts"
    out.mkdir(exist_ok=True)
    page.screenshot(path=str(out / "unit_featvis.png"))
    page.reload()  # read from the run's cache, no button
    assert page.locator("#featvis img.featvis").count() == 1 and page.locator("#featvis button").count() == 0
    page.goto(url + "/layer/conv5?view=featvis")
    page.wait_for_function(ALL_DONE, timeout=30_000)
    tiles = page.evaluate(RENDERING, "#featvis-tiles img")
    assert tiles == [[SIZE, SIZE, "auto"]], tiles
    page.close()
