"""Analyses of uploads kept on disk in the run: their addresses survive a restart, the store stays bounded.

Before (issue 23, case 11) the results lived in memory only: a new server on the same run answered
404 for every result URL the old one had handed out.
"""
from __future__ import annotations

import io
import re
import time
from pathlib import Path

import numpy as np
from PIL import Image

from convlens.explorer import create_app
from convlens.explorer.jobs import Job
from convlens.explorer.uploadstore import UploadStore


def png(seed: int, size: tuple[int, int] = (40, 48)) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def upload(client, data: bytes, name: str) -> str:
    r = client.post("/analyze", data={"image": (io.BytesIO(data), name)}, content_type="multipart/form-data")
    assert r.status_code == 303, r.data[-300:]
    location = r.headers["Location"]
    t0 = time.time()
    while client.get(location + "/status").get_json()["state"] not in ("done", "failed"):
        assert time.time() - t0 < 120, "analysis did not finish"
        time.sleep(0.1)
    return location


def images_of(page: str) -> list[str]:
    return re.findall(r'src="(data:image/png;base64,[^"]+)"', page)


def test_result_url_survives_a_restart_and_the_store_is_bounded(tmp_path: Path, tiny_checkpoint: Path) -> None:
    from convlens.nets.loading import load_model

    loaded = load_model(str(tiny_checkpoint))
    run = tmp_path / "run"
    run.mkdir()
    first = create_app(run, model=lambda: loaded, keep_uploads=2).test_client()
    urls = [upload(first, png(i), f"img{i}.png") for i in range(3)]
    before = first.get(urls[-1]).get_data(as_text=True)
    assert "img2.png" in before and len(images_of(before)) >= 5  # input, occlusion maps, projections

    kept = run / "explorer" / "uploads"
    folders = sorted(p.name for p in kept.iterdir() if not p.name.startswith("."))
    assert folders == sorted(u.rsplit("/", 1)[1] for u in urls[1:])  # the newest 2: the oldest was dropped
    assert not list(kept.glob(".tmp-*"))  # written whole, then renamed

    second = create_app(run, model=lambda: loaded, keep_uploads=2).test_client()  # a restarted server
    r = second.get(urls[-1])
    after = r.get_data(as_text=True)
    assert r.status_code == 200 and images_of(after) == images_of(before)  # the same images, byte for byte
    assert second.get(urls[-1] + "/status").get_json()["state"] == "done"
    gone = second.get(urls[0])
    assert gone.status_code == 404 and b"upload the image again" in gone.data
    again = second.post(urls[-1] + "/rule", data={"rule": "gradient"})  # recompute from the kept input
    assert again.status_code == 303
    location = again.headers["Location"]
    while second.get(location + "/status").get_json()["state"] not in ("done", "failed"):
        time.sleep(0.1)
    assert "rule <b>gradient</b>" in second.get(location).get_data(as_text=True)
    assert len([p for p in kept.iterdir() if not p.name.startswith(".")]) == 2


def test_failed_analyses_are_kept_and_damaged_ones_ignored(tmp_path: Path) -> None:
    def broken():
        raise ValueError("no model in this test")

    run = tmp_path / "run"
    run.mkdir()
    url = upload(create_app(run, model=broken).test_client(), png(0), "a.png")
    again = create_app(run, model=broken).test_client()
    assert "The analysis failed: no model in this test" in again.get(url).get_data(as_text=True)
    (run / "explorer" / "uploads" / url.rsplit("/", 1)[1] / "analysis.json").write_text("{not json")
    assert again.get(url).status_code == 404  # a damaged record is not shown (and not a 500)
    assert again.get("/analysis/..%2F..%2Fetc").status_code == 404


def test_store_bounds_bytes_and_input_size(tmp_path: Path) -> None:
    store = UploadStore(tmp_path / "uploads", keep=10, max_bytes=8 * 2**20)  # about 2 of these
    for i in range(4):
        job = Job(f"j{i}", {"image": Image.new("RGB", (3000, 2000), (i, 2 * i, 3 * i)), "rule": "auto"})
        job.state, job.error = "failed", "test"
        job.result = None
        big = np.random.default_rng(i).integers(0, 256, (900, 900, 3), dtype=np.uint8)
        job.params["image"] = Image.fromarray(big).resize((1500, 1200))
        assert store.save(job) is not None
        time.sleep(0.01)
    kept = store.kept()
    total = sum(f.stat().st_size for p in kept for f in p.iterdir())
    assert len(kept) == 2 and total <= 8 * 2**20 and kept[-1].name == job.id  # oldest dropped, newest kept
    with Image.open(kept[-1] / "input.png") as im:
        assert min(im.size) == 1024  # kept at twice the upload target, not at full size


def test_read_only_run_keeps_analyses_in_memory(tmp_path: Path) -> None:
    store = UploadStore(tmp_path / "file-not-folder" / "uploads")
    (tmp_path / "file-not-folder").write_text("x")
    job = Job("a", {"rule": "auto"})
    job.state = "failed"
    assert store.save(job) is None and store.off is not None and "cannot be written" in store.off
