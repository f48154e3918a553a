"""The unit page's whole range in Chromium: every range image loads, at the size it is shown (the
server resizes it; the browser never downscales it, and never with nearest-neighbour), at 1x and 2x
device pixel ratios. Uses Debian's /usr/bin/chromium; never downloads a browser."""
from __future__ import annotations

from pathlib import Path

import pytest
from test_browser import ALL_DONE, LOAD_ALL, serve

from conftest import CHROMIUM
from mined_run import make_ranged_run

pytestmark = [
    pytest.mark.browser,
    pytest.mark.timeout(300),
    pytest.mark.skipif(not CHROMIUM.exists(), reason="/usr/bin/chromium is missing (apt-get install chromium)"),
]
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright for Python is not installed")

RANGE_IMAGES = """() => Array.from(document.querySelectorAll('img.rangeimg')).map(i => [i.naturalWidth,
    i.naturalHeight, i.clientWidth, i.complete, getComputedStyle(i).imageRendering, i.currentSrc])"""


@pytest.fixture(scope="module")
def ranged_url(tmp_path_factory: pytest.TempPathFactory):
    from convlens.explorer import create_app

    server, url = serve(create_app(make_ranged_run(tmp_path_factory.mktemp("ranged_browser"))))
    yield url
    server.close()


@pytest.mark.parametrize("scale", [1, 2])
def test_range_images_load_at_their_displayed_size(browser, ranged_url: str, scale: int, tmp_path: Path) -> None:
    page = browser.new_page(viewport={"width": 1280, "height": 900}, device_scale_factor=scale)
    try:
        page.goto(f"{ranged_url}/layer/conv5/map/1")
        page.evaluate(LOAD_ALL)
        page.wait_for_function(ALL_DONE, timeout=30_000)
        images = page.evaluate(RANGE_IMAGES)
        assert len(images) == 45
        for nw, nh, cw, done, rendering, src in images:
            assert done and nw > 0 and cw == 64, src
            # the 1x/2x candidate made for this screen (the route renders s px: test_unitrange), so its
            # density-corrected size is exactly the displayed one: nothing is scaled in the browser
            assert f"s={64 * scale}" in src and nw == nh == 64, (src, nw, scale)
            assert rendering != "pixelated", src
        assert page.locator("#range-histogram svg rect.hbar").count() == 32
        assert "Label:" in page.inner_text("#unit-label")
        page.screenshot(path=str(tmp_path / "unit.png"), full_page=True)
    finally:
        page.close()
