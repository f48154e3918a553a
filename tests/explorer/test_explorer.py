"""The local web explorer (convlens.explorer): browsing, uploads, and what a request may reach.

Two runs: a small real one, built once per session and shared with test_browser (the demo's tiny
plan on synthetic images, ~10 s of CPU; tests/demo_run.py), whose pages read what the real commands
wrote; and a synthetic mined run in ``convlens mine``'s format (tests/mined_run.py: 96-map layers,
class names, class_means.npz), whose pages are checked against the numbers in its files.
"""
from __future__ import annotations

import io
import json
import re
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from convlens.cli import main
from convlens.explorer import MAX_UPLOAD_BYTES, ImageTooLarge, create_app, decode_upload
from convlens.explorer.jobs import JobQueue
from demo_run import pages_run_dir, png_bytes, run_info
from mined_run import make_mined_run


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return pages_run_dir(tmp_path_factory)


@pytest.fixture(scope="module")
def client(tiny_run: Path):
    return create_app(tiny_run).test_client()


@pytest.fixture(scope="module")
def mined(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_mined_run(tmp_path_factory.mktemp("mined"))


@pytest.fixture(scope="module")
def mclient(mined: Path):
    return create_app(mined).test_client()


def mine_data(run: Path) -> dict:
    return json.loads((run / "mine" / "result.json").read_text())["data"]


def page_maps(client, url: str) -> list[int]:
    return [int(m) for m in re.findall(r'data-map="(\d+)"', client.get(url).get_data(as_text=True))]


def wait_for(client, location: str, timeout: float = 240.0) -> dict:
    t0 = time.time()
    while time.time() - t0 < timeout:
        status = client.get(location + "/status").get_json()
        if status["state"] in ("done", "failed"):
            return status
        time.sleep(0.2)
    raise AssertionError(f"analysis {location} did not finish in {timeout} s")


def test_demo_run_every_step_ok(tiny_run: Path) -> None:
    info = run_info(tiny_run)
    steps = json.loads((tiny_run / "demo" / "result.json").read_text())["tables"][0]["rows"]
    assert info["code"] == 0 and not [s for s in steps if s[1] == "failed"], steps
    assert (tiny_run / "report" / "index.html").is_file()


def test_browse_real_run_layer_map_topk(client, tiny_run: Path) -> None:
    home = client.get("/")
    assert home.status_code == 200 and b'href="/layer/conv1"' in home.data
    page = client.get("/layer/conv5")
    assert page.status_code == 200
    maps = re.findall(r'href="(/layer/conv5/map/[^"]+)"', page.get_data(as_text=True))
    mined = json.loads((tiny_run / "mine" / "result.json").read_text())["data"]["layers"]["conv5"]["maps"]
    assert len(maps) == len(mined) >= 1
    # a map mine projected (the demo projects its figure's maps; the others are projected on first view)
    projected = [m for m, entries in mined.items() if entries and "projection" in entries[0]]
    assert projected
    detail = client.get(f"/layer/conv5/map/{projected[0]}").get_data(as_text=True)
    projections = re.findall(r'<img class="proj" src="([^"]+)"', detail)
    patches = re.findall(r'<img class="patch" src="([^"]+)"', detail)
    assert len(projections) == len(patches) == 9
    for src in projections[:2] + patches[:2]:
        r = client.get(src)
        assert r.status_code == 200 and r.data[:8] == b"\x89PNG\r\n\x1a\n"
    assert client.get("/layer/conv9").status_code == 404
    assert client.get("/layer/conv5/map/99999").status_code == 404
    assert "/home/" not in detail and "/tmp/" not in detail  # image names, never absolute paths


def test_evolution_of_a_map(client) -> None:
    first = re.findall(r'href="(/layer/conv1/map/[^"]+)"', client.get("/layer/conv1").get_data(as_text=True))[0]
    detail = client.get(first).get_data(as_text=True)
    assert "Evolution during training" in detail
    for src in re.findall(r'<img class="evo" src="([^"]+)"', detail):
        assert client.get(src).status_code == 200


def test_layer_page_lists_every_map_over_pages(mclient, mined: Path) -> None:
    n = mine_data(mined)["layers"]["features.13"]["num_maps"]
    seen = []
    for page in (1, 2, 3, 4):
        seen += page_maps(mclient, f"/layer/features.13?per=30&page={page}")
    assert sorted(seen) == list(range(n))  # every map once, none beyond
    html = mclient.get("/layer/features.13").get_data(as_text=True)
    imgs = re.findall(r"<img [^>]*>", html.split('id="tiles"')[1])
    assert len(imgs) == 2 * n and all('loading="lazy"' in i for i in imgs)  # projection + patch per map
    assert mclient.get("/layer/features.13?page=99").status_code == 200  # clamped to the last page
    for bad in ("sort=nope", "order=sideways", "page=x"):
        r = mclient.get(f"/layer/features.13?{bad}")
        assert r.status_code == 400 and b"must be" in r.data


@pytest.mark.parametrize("sort", ["value", "classes", "saturation"])
def test_layer_sorts_follow_the_data(mclient, mined: Path, sort: str) -> None:
    maps = mine_data(mined)["layers"]["features.6"]["maps"]

    def key(m: int) -> float:
        entries = maps[str(m)]
        if sort == "value":
            return max(e["score"] for e in entries)  # the pre-clip value: clipped ones do not tie
        if sort == "classes":
            return len({e["class"] for e in entries})
        return sum(e["value"] >= 6.0 for e in entries) / len(entries)  # share at the clip

    for order, sign in (("desc", -1), ("asc", 1)):
        got = page_maps(mclient, f"/layer/features.6?sort={sort}&order={order}&per=600")
        assert sorted(got) == list(range(len(maps)))
        expected = sorted(range(len(maps)), key=lambda m: (sign * key(m), m))
        assert got == expected, (sort, order)
    assert len({key(m) for m in range(len(maps))}) > 2  # the sort is not vacuous


def test_unit_page_beyond_the_first_16(mclient, mined: Path) -> None:
    data = mine_data(mined)
    entries = data["layers"]["features.13"]["maps"]["20"]
    html = mclient.get("/layer/features.13/map/20").get_data(as_text=True)
    assert len(re.findall(r'<img class="proj"', html)) == len(re.findall(r'<img class="patch"', html)) == 9
    assert "Projections (guided)" in html
    for e in entries:
        assert f"{e['value']:.4g}" in html and e["class"] in html
        assert e["score"] == e["value"] or f"pre-clip {e['score']:.4g}" in html
    # the class histogram of the top-9, counted here independently
    counts = Counter(e["class"] for e in entries)
    hist = html.split('id="histogram"')[1].split("</table>")[0]
    rows = re.findall(r'>([^<>]+)</a></td>\s*<td><span class="bar"[^>]*></span> (\d+)</td>', hist)
    assert dict((name, int(n)) for name, n in rows) == dict(counts)
    # which classes drive it: the argmax of the class means (numpy oracle)
    with np.load(mined / "mine" / "class_means.npz") as z:
        means = z["features.13"]
    top_class = int(np.argmax(means[20]))
    drivers = html.split('id="drivers"')[1]
    assert re.findall(r'href="/class/(\d+)"', drivers)[0] == str(top_class)
    # previous/next in map order, neighbours, receptive field drawn from the boxes
    assert 'rel="prev" id="prev" href="/layer/features.13/map/19"' in html
    assert 'rel="next" id="next" href="/layer/features.13/map/21"' in html
    assert re.findall(r'href="/layer/features.13/map/(\d+)"><img', html.split('id="neighbours"')[1])[:2] == ["16", "17"]
    rf = html.split('id="rf"')[1]
    y0, x0, y1, x1 = entries[0]["box"]
    assert f'x="{x0}" y="{y0}" width="{x1 - x0}" height="{y1 - y0}"' in rf


def test_prev_next_follow_the_sort_order(mclient) -> None:
    order = page_maps(mclient, "/layer/features.6?sort=value&per=600")
    m = order[5]
    html = mclient.get(f"/layer/features.6/map/{m}?sort=value&order=desc").get_data(as_text=True)
    assert f'href="/layer/features.6/map/{order[4]}?sort=value&amp;order=desc"' in html
    assert f'href="/layer/features.6/map/{order[6]}?sort=value&amp;order=desc"' in html
    assert "6 of 32" in html


def test_jump_box(mclient) -> None:
    r = mclient.get("/jump?to=features.6:17")
    assert r.status_code == 303 and r.headers["Location"].endswith("/layer/features.6/map/17")
    assert mclient.get("/jump?to=features.6:999").status_code == 404
    r = mclient.get("/jump?to=garbage")
    assert r.status_code == 400 and b"layer:map" in r.data


@pytest.mark.parametrize("by", ["mean", "selectivity"])
def test_class_page_ranks_maps_by_class_means(mclient, mined: Path, by: str) -> None:
    with np.load(mined / "mine" / "class_means.npz") as z:
        a, counts = z["features.3"].astype(np.float64), z["__counts__"]
    c = 2
    if by == "mean":
        score = a[:, c]
    else:
        live = counts > 0
        score = (a[:, c] - a[:, live].mean(1)) / a[:, live].std(1)
    expected = [int(m) for m in np.argsort(-score, kind="stable")[:12]]
    html = mclient.get(f"/class/{c}?by={by}").get_data(as_text=True)
    section = html.split('href="/layer/features.3"')[1].split("<h3>")[0]
    assert [int(m) for m in re.findall(r'data-map="(\d+)"', section)] == expected
    assert mine_data(mined)["class_names"][c] in html
    idx = mclient.get("/classes").get_data(as_text=True)
    assert len(re.findall(r'class="cls" href="/class/\d+"', idx)) == len(counts)
    assert mclient.get("/class/999").status_code == 404


def test_results_and_figures_link_both_ways(mclient) -> None:
    home = mclient.get("/").get_data(as_text=True)
    results = re.findall(r'class="result" href="([^"]+)"', home)
    assert sorted(results) == ["/result/mine", "/result/occlusion/img0"]
    for url in results:
        page = mclient.get(url).get_data(as_text=True)
        figures = re.findall(r'<a href="(/figure/[^"]+)"><img class="fig" src="([^"]+)"', page)
        assert figures
        for fig_page, src in figures:
            assert mclient.get(src).status_code == 200
            back = mclient.get(fig_page).get_data(as_text=True)
            assert f'id="back" href="{url}"' in back
    mine_page = mclient.get("/result/mine").get_data(as_text=True)
    assert 'href="/layer/features.3">all maps of features.3' in mine_page
    assert mclient.get("/figure/../etc/passwd").status_code == 404


def test_every_image_on_the_pages_loads(mclient) -> None:
    for url in ("/layer/features.13?page=1", "/layer/features.3/map/21", "/class/1"):
        html = mclient.get(url).get_data(as_text=True)
        srcs = set(re.findall(r'<img[^>]* src="([^"]+)"', html))
        assert srcs, url
        for src in srcs:
            r = mclient.get(src)
            assert r.status_code == 200 and r.data[:4] == b"\x89PNG", (url, src)


def test_map_metadata_form_reads_the_same(tmp_path: Path, mined: Path, mclient) -> None:
    run = make_mined_run(tmp_path / "meta", meta=True, figure=False)
    other = create_app(run).test_client()
    for url in ("/layer/features.6?sort=value&per=600", "/layer/features.6?sort=classes&per=600"):
        assert page_maps(other, url) == page_maps(mclient, url)


@pytest.mark.parametrize("path", [
    "/file/../config.json", "/file/%2e%2e/%2e%2e/etc/passwd", "/file/..%2f..%2fetc%2fpasswd",
    "/file//etc/passwd", "/file/mine/../../../etc/passwd", "/file/checkpoints/last.pt", "/file/nope.png",
])
def test_no_path_leaves_the_run(client, path: str) -> None:
    r = client.get(path, follow_redirects=True)  # '//' redirects to the merged path first
    assert 400 <= r.status_code < 500, (path, r.status_code)
    assert b"root:" not in r.data
    assert client.get("/").status_code == 200


def test_upload_analysis_has_progress_link_and_keys(client) -> None:
    r = client.post("/analyze", data={"image": (io.BytesIO(png_bytes()), "shoe.txt"), "rule": "auto"},
                    content_type="multipart/form-data")  # the name says .txt: the content decides
    assert r.status_code == 303, r.data[-500:]
    location = r.headers["Location"]
    assert re.fullmatch(r"/analysis/[\w-]{16}", location)
    assert wait_for(client, location)["state"] == "done"
    page = client.get(location).get_data(as_text=True)  # the stable link shows the result
    section = page.split('id="occlusion"')[1].split('<h3>')[0]
    assert section.count("data:image/png;base64,") == 4
    assert section.count('class="colourbar"') == 3 and section.count('class="swatch"') >= 1
    assert all(f'<span class="lbl">conv{i}</span>' in page for i in range(1, 6))
    assert "rule <b>auto</b>" in page and "deconvnet" in page
    r = client.post(location + "/rule", data={"rule": "gradient"})
    assert r.status_code == 303 and r.headers["Location"] != location
    assert wait_for(client, r.headers["Location"])["state"] == "done"
    assert "rule <b>gradient</b>" in client.get(r.headers["Location"]).get_data(as_text=True)
    assert client.get("/analysis/not-a-job").status_code == 404


@pytest.mark.parametrize("payload,code,text", [
    (b"not an image at all", 400, "not an image that can be decoded"),
    (png_bytes()[:60], 400, "not an image that can be decoded"),  # truncated PNG
    (b"", 400, "empty"),
    (b"\x89PNG" + b"0" * (MAX_UPLOAD_BYTES + 10), 413, "larger than"),
])
def test_bad_uploads_get_clear_4xx(client, payload: bytes, code: int, text: str) -> None:
    r = client.post("/analyze", data={"image": (io.BytesIO(payload), "x.png")}, content_type="multipart/form-data")
    body = r.get_data(as_text=True)
    assert r.status_code == code and text in body, body[-400:]
    assert "_io.BytesIO" not in body and " at 0x" not in body
    assert client.post("/analyze", data={}, content_type="multipart/form-data").status_code == 400
    r = client.post("/analyze", data={"image": (io.BytesIO(png_bytes()), "x.png"), "rule": "bogus"},
                    content_type="multipart/form-data")
    assert r.status_code == 400 and b"rule must be one of" in r.data
    assert client.get("/").status_code == 200


def test_decode_upload_refuses_bombs_and_reduces_large_images() -> None:
    buf = io.BytesIO()
    Image.new("1", (6300, 6300)).save(buf, format="PNG")  # 40 MP, a few KB
    with pytest.raises(ImageTooLarge, match="pixels"):
        decode_upload(buf.getvalue())
    assert decode_upload(png_bytes()).size == (40, 48)
    buf = io.BytesIO()
    Image.new("RGB", (3000, 2400), (10, 200, 30)).save(buf, format="JPEG")
    small = decode_upload(buf.getvalue(), target_size=224)
    assert 448 <= min(small.size) < 1200 and small.mode == "RGB"  # reduced early, still >= 2x the input


def test_foreign_host_and_busy_queue(tiny_run: Path) -> None:
    gate = threading.Event()

    def slow_model():
        gate.wait(30)
        raise ValueError("no model in this test")

    app = create_app(tiny_run, model=slow_model, queue=1, keep=2, allowed_hosts=("localhost", "box.lan"))
    c = app.test_client()
    r = c.get("/", headers={"Host": "attacker.example:8765"})
    assert r.status_code == 400 and b"--allow-host attacker.example" in r.data
    assert c.get("/", headers={"Host": "box.lan:8765"}).status_code == 200
    form = {"image": (io.BytesIO(png_bytes()), "a.png")}
    first = c.post("/analyze", data=form, content_type="multipart/form-data")
    assert first.status_code == 303
    busy = c.post("/analyze", data={"image": (io.BytesIO(png_bytes()), "b.png")}, content_type="multipart/form-data")
    assert busy.status_code == 503 and b"busy" in busy.data
    gate.set()
    status = wait_for(c, first.headers["Location"], 30)
    assert status["state"] == "failed" and status["error"] == "no model in this test"
    assert "The analysis failed: no model in this test" in c.get(first.headers["Location"]).get_data(as_text=True)


def test_job_queue_bounds_and_forgets_oldest() -> None:
    q = JobQueue(workers=1, capacity=2, keep=3)
    gate = threading.Event()
    a = q.submit("a", {}, lambda job: gate.wait(10))
    b = q.submit("b", {}, lambda job: 2)
    assert a is not None and b is not None and q.submit("c", {}, lambda job: 3) is None  # both slots taken
    gate.set()
    ids = []
    for name in "defg":
        while (job := q.submit(name, {}, lambda job, n=name: n)) is None:
            time.sleep(0.01)
        ids.append(job.id)
        while not job.done:
            time.sleep(0.01)
    assert q.get(a.id) is None and q.get(ids[-1]).result == "g"  # only the last `keep` are remembered
    with pytest.raises(ValueError, match="workers"):
        JobQueue(workers=2, capacity=1)
    q.shutdown()


def test_serve_and_create_app_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(NotADirectoryError):
        create_app(tmp_path / "missing")
    assert main(["serve", str(tmp_path / "missing")]) == 2
    assert main(["serve", str(tmp_path), "--port", "70000"]) == 2
    assert "--port" in capsys.readouterr().err
    assert main(["serve", str(tmp_path), "--weights", "w.pt"]) == 2
    assert "--arch" in capsys.readouterr().err
    assert main(["serve", str(tmp_path), "--timeout", "0"]) == 2
    no_model = create_app(tmp_path).test_client()
    assert no_model.post("/analyze", data={"image": (io.BytesIO(png_bytes()), "a.png")},
                         content_type="multipart/form-data").status_code == 409
    assert no_model.get("/classes").status_code == 404 and no_model.get("/layer/conv1").status_code == 404
