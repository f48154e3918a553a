"""Feature visualizations in the explorer: the unit page's panel, the job, the run's cache, the layer tiles.

The run is mined for real (``convlens mine --project none`` on zfnet-tiny, 8 random images; see
``test_ondemand.mine``), so the panel's ratio is checked against the run's own ``topk.pt``. The
on-demand settings are shrunk to a few steps to keep the tests fast.
"""
from __future__ import annotations

import io
import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image
from test_ondemand import fresh_copy, mine

from mined_run import make_mined_run

JSON = {"Accept": "application/json"}
UNIT = "/layer/conv5/map/3"


@pytest.fixture(scope="module")
def mined(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("featvis_routes")
    return mine(tmp, tmp / "run" / "mine", "none").parent


@pytest.fixture()
def cheap(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    from convlens.explorer import featvis_routes

    monkeypatch.setitem(featvis_routes.ON_DEMAND, "steps", 3)
    monkeypatch.setitem(featvis_routes.ON_DEMAND, "size", 40)
    return featvis_routes.ON_DEMAND


@pytest.fixture()
def renders(monkeypatch: pytest.MonkeyPatch) -> list[list[int]]:
    """Counts the calls of the library's renderer (the units each call was asked for)."""
    import convlens.featvis.store as store

    calls: list[list[int]] = []
    real = store.render_to_dir

    def spy(model: Any, layer: str, units: Any, out: Any, **kw: Any) -> Any:
        calls.append(list(units))
        return real(model, layer, units, out, **kw)

    monkeypatch.setattr(store, "render_to_dir", spy)
    return calls


def wait_done(client: Any, url: str, timeout: float = 120.0) -> dict[str, Any]:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        d = client.get(url).get_json()
        if d["state"] not in ("queued", "running"):
            return d
        time.sleep(0.1)
    raise AssertionError(f"{url} still running after {timeout} s")


def test_compute_poll_serve_then_read_the_cache(mined: Path, tmp_path: Path, cheap: dict[str, Any],
                                                renders: list[list[int]]) -> None:
    from convlens.explorer import create_app

    root = fresh_copy(mined, tmp_path / "run")
    app = create_app(root)
    client, fv = app.test_client(), app.extensions["convlens_featvis"]
    page = client.get(UNIT).get_data(as_text=True)
    assert 'id="featvis"' in page and 'data-state="none"' in page and "Compute (about" in page
    assert "3 steps, 40 px" in page and renders == []  # a page view never computes
    r = client.post(UNIT + "/featvis", headers=JSON)
    assert r.status_code == 202 and r.get_json()["state"] in ("queued", "running"), r.get_json()
    d = wait_done(client, UNIT + "/featvis")
    assert d["state"] == "cached", d
    assert renders == [[3]] and fv.computed == 1
    rec = d["record"]
    # the cached PNG, served from the run, at the on-demand size
    png = client.get(rec["urls"][0])
    assert png.status_code == 200 and png.mimetype == "image/png"
    assert Image.open(io.BytesIO(png.data)).size == (40, 40)
    assert (root / "mine" / "featvis" / "conv5" / "unit_3.png").is_file()
    # the sanity ratio against the run's own mining: peak / the map's top-1 in topk.pt
    top1 = float(torch.load(root / "mine" / "topk.pt", weights_only=True)["conv5"]["values"][3, 0])
    assert top1 > 0 and rec["top1"] == pytest.approx(top1)
    assert rec["ratio"][0] == pytest.approx(rec["peak"][0] / top1)
    assert f"{rec['ratio'][0]:.2f}" in d["html"] and rec["urls"][0] in d["html"]
    # the second view, the second post and a new server read the cache: no recompute
    again = client.get(UNIT).get_data(as_text=True)
    assert 'data-state="cached"' in again and rec["urls"][0] in again and "Compute (about" not in again
    assert client.post(UNIT + "/featvis", headers=JSON).get_json()["state"] == "cached"
    fresh = create_app(root).test_client()
    assert rec["urls"][0] in fresh.get(UNIT).get_data(as_text=True)
    assert fresh.get(UNIT + "/featvis").get_json()["record"] == rec
    assert renders == [[3]] and fv.computed == 1


def test_one_job_per_unit_at_a_time(mined: Path, tmp_path: Path, cheap: dict[str, Any],
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import convlens.featvis.store as store
    from convlens.explorer import create_app

    gate, calls = threading.Event(), []
    real = store.render_to_dir

    def slow(*args: Any, **kw: Any) -> Any:
        calls.append(args[2])
        assert gate.wait(60)
        return real(*args, **kw)

    monkeypatch.setattr(store, "render_to_dir", slow)
    app = create_app(fresh_copy(mined, tmp_path / "run"))
    client = app.test_client()
    first = client.post(UNIT + "/featvis", headers=JSON).get_json()
    second = client.post(UNIT + "/featvis", headers=JSON).get_json()
    other = client.post("/layer/conv5/map/4/featvis", headers=JSON).get_json()
    assert first["job"]["id"] == second["job"]["id"] != other["job"]["id"]
    page = client.get(UNIT).get_data(as_text=True)
    assert 'data-state="' in page and "Computing, " in page and "Compute (about" not in page
    gate.set()
    assert wait_done(client, UNIT + "/featvis")["state"] == "cached"
    assert wait_done(client, "/layer/conv5/map/4/featvis")["state"] == "cached"
    assert calls == [[3], [4]]


def test_plain_form_post_redirects_and_cross_site_post_is_refused(mined: Path, tmp_path: Path,
                                                                   cheap: dict[str, Any]) -> None:
    from convlens.explorer import create_app

    client = create_app(fresh_copy(mined, tmp_path / "run")).test_client()
    evil = client.post(UNIT + "/featvis", headers={"Origin": "http://evil.example", **JSON})
    assert evil.status_code == 403
    assert client.get(UNIT + "/featvis").get_json()["state"] == "none"  # nothing was queued
    r = client.post(UNIT + "/featvis", headers={"Origin": "http://localhost", "Accept": "text/html"})
    assert r.status_code == 303 and r.headers["Location"].endswith(UNIT)
    assert wait_done(client, UNIT + "/featvis")["state"] == "cached"


def test_a_failed_job_says_why_and_offers_the_button_again(mined: Path, tmp_path: Path, cheap: dict[str, Any],
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    import convlens.featvis.store as store
    from convlens.explorer import create_app

    def broken(*args: Any, **kw: Any) -> Any:
        raise ValueError("units must be below 8, got 3; pick another map")

    monkeypatch.setattr(store, "render_to_dir", broken)
    client = create_app(fresh_copy(mined, tmp_path / "run")).test_client()
    client.post(UNIT + "/featvis", headers=JSON)
    d = wait_done(client, UNIT + "/featvis")
    assert d["state"] == "failed" and "units must be below 8" in d["job"]["error"]
    assert 'id="fv-error"' in d["html"] and "Compute (about" in d["html"]


def test_layer_tiles_show_the_cache_and_never_compute(mined: Path, tmp_path: Path, cheap: dict[str, Any],
                                                      renders: list[list[int]]) -> None:
    from convlens.explorer import create_app

    app = create_app(fresh_copy(mined, tmp_path / "run"))
    client = app.test_client()
    plain = client.get("/layer/conv5").get_data(as_text=True)
    assert "0 of 12 maps have a cached feature visualization" in plain and 'id="featvis-tiles"' not in plain
    assert 'id="featvis-tiles"' in client.get("/layer/conv5?view=featvis").get_data(as_text=True)
    for m in (3, 5):
        client.post(f"/layer/conv5/map/{m}/featvis", headers=JSON)
        assert wait_done(client, f"/layer/conv5/map/{m}/featvis")["state"] == "cached"
    plain = client.get("/layer/conv5?sort=value&order=desc").get_data(as_text=True)
    assert "2 of 12 maps have a cached feature visualization" in plain
    assert 'href="/layer/conv5?sort=value&amp;order=desc&amp;view=featvis"' in plain
    tiles = client.get("/layer/conv5?view=featvis").get_data(as_text=True)
    block = tiles[tiles.index('id="featvis-tiles"'):]
    block = block[:block.index("</div>")]
    assert block.count("<img") == 2
    assert 'href="/layer/conv5/map/3"' in block and 'src="/file/mine/featvis/conv5/unit_5.png"' in block
    assert "conv2" not in block and renders == [[3], [5]]


def test_cli_results_in_the_run_are_shown_best_first(mined: Path, tmp_path: Path, cheap: dict[str, Any],
                                                     renders: list[list[int]]) -> None:
    """A ``convlens featvis --out RUN/featvis`` result (more steps) is shown instead of recomputing."""
    from convlens.cli import main
    from convlens.explorer import create_app

    root = fresh_copy(mined, tmp_path / "run")
    ck = mined.parent / "tiny.pt"
    assert main(["featvis", "--checkpoint", str(ck), "--layer", "conv5", "--units", "3", "--steps", "5",
                 "--size", "32", "--run", str(root / "mine"), "--out", str(root / "featvis")]) == 0
    renders.clear()
    client = create_app(root).test_client()
    d = client.post(UNIT + "/featvis", headers=JSON).get_json()
    assert d["state"] == "cached" and d["record"]["urls"] == ["/file/featvis/conv5/unit_3.png"]
    assert "5 steps, 32 px" in d["html"] and renders == []


def test_a_run_without_a_model_offers_no_button(tmp_path: Path) -> None:
    from convlens.explorer import create_app

    client = create_app(make_mined_run(tmp_path / "run", {"features.3": 4})).test_client()
    page = client.get("/layer/features.3/map/2").get_data(as_text=True)
    assert 'data-state="unavailable"' in page and "Compute (about" not in page
    r = client.post("/layer/features.3/map/2/featvis", headers=JSON)
    assert r.status_code == 409 and "--checkpoint" in r.get_json()["error"]
    assert client.get("/layer/features.3/map/99/featvis").status_code == 404
    assert client.get("/layer/nope/map/2/featvis").status_code == 404


def test_report_shows_the_explorers_cache(mined: Path, tmp_path: Path, cheap: dict[str, Any]) -> None:
    from convlens.explorer import create_app
    from convlens.report import build_report

    root = fresh_copy(mined, tmp_path / "run")
    client = create_app(root).test_client()
    client.post(UNIT + "/featvis", headers=JSON)
    rec = wait_done(client, UNIT + "/featvis")["record"]
    html = build_report(root).read_text()
    assert '<section id="featvis"' in html and "Feature visualizations cached in mine/featvis" in html
    assert 'src="assets/mine/featvis/conv5/unit_3.png"' in html
    assert (root / "report/assets/mine/featvis/conv5/unit_3.png").is_file()
    assert f"{rec['ratio'][0]:.2f}x the mined top-1" in html
    json.dumps(rec)  # the record is plain JSON


def test_finished_jobs_are_forgotten_beyond_the_limit(mined: Path, tmp_path: Path, cheap: dict[str, Any],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from convlens.explorer import create_app, featvis_routes

    monkeypatch.setattr(featvis_routes, "MAX_KEPT", 1)
    app = create_app(fresh_copy(mined, tmp_path / "run"))
    client, fv = app.test_client(), app.extensions["convlens_featvis"]
    for m in (1, 2, 3):
        client.post(f"/layer/conv2/map/{m}/featvis", headers=JSON)
        assert wait_done(client, f"/layer/conv2/map/{m}/featvis")["state"] == "cached"
    assert fv.computed == 3 and list(fv._jobs) == [("conv2", 3)]  # the finished ones dropped, oldest first
