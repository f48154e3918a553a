"""Projections on demand (a run mined with ``--project none``), saturation, and numbers on the explorer's pages.

The run is mined for real by ``convlens mine`` on zfnet-tiny and 8 random images (a second time
with ``--project all`` as the oracle: a map projected on demand must give the same PNGs).
"""
from __future__ import annotations

import io
import json
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import make_image_folder
from mined_run import make_mined_run

LAYERS = "conv2,conv5"


def mine(tmp: Path, out: Path, project: str) -> Path:
    from convlens.cli import main
    from convlens.images.data import dataset_preprocessing
    from convlens.nets.checkpoint import save_checkpoint
    from convlens.nets.convnet import build_model

    folder = tmp / "images"
    if not folder.exists():
        make_image_folder(folder)
    ck = tmp / "tiny.pt"
    if not ck.exists():
        model = build_model("zfnet-tiny", num_classes=2, init="kaiming", seed=0)
        save_checkpoint(ck, model, preprocessing=dataset_preprocessing(str(folder), crop=32), class_names=["a", "b"],
                        epoch=1)
    assert main(["mine", "--checkpoint", str(ck), "--dataset", str(folder), "--split", "train", "--k", "4",
                 "--layers", LAYERS, "--project", project, "--workers", "0", "--device", "cpu",
                 "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("ondemand")
    return {"none": mine(tmp, tmp / "lazy" / "mine", "none").parent,
            "all": mine(tmp, tmp / "full" / "mine", "all").parent}


def fresh_copy(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_mine_project_none_records_the_source_and_every_map(runs: dict[str, Path]) -> None:
    result = json.loads((runs["none"] / "mine" / "result.json").read_text())
    source = result["params"]["source"]
    assert Path(source["checkpoint"]).is_absolute() and Path(source["dataset"]).is_absolute(), source
    assert result["params"]["project"] == "none" and result["figures"] == []
    for layer, info in result["data"]["layers"].items():
        assert len(info["maps"]) == info["num_maps"] > 0, layer
        assert all("projection" not in e for m in info["maps"].values() for e in m), layer
    assert not (runs["none"] / "mine" / "units" / "conv5").exists() or \
        not list((runs["none"] / "mine" / "units" / "conv5").glob("*.png"))


def test_first_view_projects_as_mine_would_then_reads_the_run(runs: dict[str, Path], tmp_path: Path) -> None:
    from convlens.explorer import create_app

    root = fresh_copy(runs["none"], tmp_path / "run")
    app = create_app(root)
    client, projector = app.test_client(), app.extensions["convlens"].projector
    page = client.get("/layer/conv5/map/3").get_data(as_text=True)
    assert 'id="projecting"' in page and 'data-slot="proj-0"' in page
    first = client.get("/layer/conv5/map/3/projections")
    assert first.status_code == 200, first.get_data(as_text=True)
    d = first.get_json()
    assert d["computed"] is True and len(d["entries"]) == 4 and projector.computed == 1
    for e in d["entries"]:
        for url in (e["projection"], e["patch"]):
            r = client.get(url)
            assert r.status_code == 200 and Image.open(io.BytesIO(r.data)).size[0] > 0
    # the oracle: mine --project all wrote the same PNGs (same function, same place)
    made = root / "mine" / "units" / "conv5"
    oracle = runs["all"] / "mine" / "units" / "conv5"
    pngs = sorted(made.glob("3_*.png"))
    assert len(pngs) == 16  # per entry: the displayed pair and the full-size pair
    for p in pngs:
        assert np.array_equal(np.asarray(Image.open(p)), np.asarray(Image.open(oracle / p.name))), p.name
    second = client.get("/layer/conv5/map/3/projections").get_json()
    assert second["computed"] is False and projector.computed == 1
    assert [e["projection"] for e in second["entries"]] == [e["projection"] for e in d["entries"]]
    again = client.get("/layer/conv5/map/3").get_data(as_text=True)
    assert 'id="projecting"' not in again and again.count('class="proj"') == 4
    layer_page = client.get("/layer/conv5").get_data(as_text=True)
    assert d["entries"][0]["projection"] in layer_page and "not projected" in layer_page  # map 3 has its thumb now
    pair = client.get("/layer/conv5/map/3/unit/0").get_data(as_text=True)
    assert d["entries"][0]["projection"] in pair and d["entries"][0]["patch"] in pair
    assert projector.computed == 1


def test_concurrent_first_views_compute_once(runs: dict[str, Path], tmp_path: Path) -> None:
    from convlens.explorer import create_app

    app = create_app(fresh_copy(runs["none"], tmp_path / "run"))
    projector = app.extensions["convlens"].projector
    answers: list[dict] = []
    start = threading.Barrier(4)

    def view() -> None:
        client = app.test_client()
        start.wait()
        answers.append(client.get("/layer/conv2/map/1/projections").get_json())

    threads = [threading.Thread(target=view) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert len(answers) == 4 and projector.computed == 1
    assert sum(a["computed"] for a in answers) == 1
    assert len({json.dumps(a["entries"]) for a in answers}) == 1


def test_a_run_without_a_record_says_so(tmp_path: Path) -> None:
    from convlens.explorer import create_app

    run = make_mined_run(tmp_path / "run", {"features.3": 4})
    doc = json.loads((run / "mine" / "result.json").read_text())
    for e in doc["data"]["layers"]["features.3"]["maps"]["2"]:
        del e["projection"], e["patch"]
    (run / "mine" / "result.json").write_text(json.dumps(doc))
    client = create_app(run).test_client()
    page = client.get("/layer/features.3/map/2").get_data(as_text=True)
    assert 'id="projecting"' not in page  # nothing to compute them with: no promise on the page
    r = client.get("/layer/features.3/map/2/projections")
    assert r.status_code == 409 and "does not record the model" in r.get_json()["error"]


def _entries(values: list[float], images: list[str]) -> list:
    from convlens.explorer.runindex import Entry

    return [Entry(r, v, v, img, None, None, None, None, None) for r, (v, img) in enumerate(zip(values, images,
                                                                                                 strict=True))]


def test_saturation_share_counts_the_clip_or_true_ties_only() -> None:
    from convlens.explorer.runindex import saturation_share

    distinct = [f"img{i}" for i in range(9)]
    falling = [9.0 - i * 0.5 for i in range(9)]
    assert saturation_share(_entries(falling, distinct), None) == 0.0  # the top is not tied with itself
    tied = [5.0, 5.0, 4.0, 3.0, 2.0, 1.0, 1.0, 0.5, 0.1]
    assert saturation_share(_entries(tied, distinct), None) == pytest.approx(2 / 9)
    assert saturation_share(_entries(tied, ["same", "same", *distinct[2:]]), None) == 0.0  # one image twice
    clipped = [6.0, 6.0, 6.0, 5.0, 4.0, 3.0, 2.0, 1.0, 0.5]
    assert saturation_share(_entries(clipped, distinct), 6.0) == pytest.approx(3 / 9)
    assert saturation_share(_entries(falling, distinct), 6.0) == pytest.approx(7 / 9)  # 9.0, 8.5, .. 6.0
    assert saturation_share([], None) == 0.0
    assert saturation_share(_entries([0.0] * 9, distinct), None) == 0.0  # a dead map: ties at 0 are not saturation


def test_unclipped_layer_shows_no_saturation_and_the_sort_says_so(runs: dict[str, Path]) -> None:
    from convlens.explorer import create_app

    client = create_app(runs["none"]).test_client()
    mined = client.application.extensions["convlens"].mined()
    sats = [mi.saturation for mi in mined.layers["conv5"].maps]
    assert len(sats) > 1 and all(s == 0.0 for s in sats)
    page = client.get("/layer/conv5").get_data(as_text=True)
    assert "sat 0%" in page and "sat 11%" not in page and 'id="unordered"' not in page
    by_sat = client.get("/layer/conv5?sort=saturation").get_data(as_text=True)
    assert 'id="unordered"' in by_sat and "cannot order them" in by_sat
    by_value = client.get("/layer/conv5?sort=value").get_data(as_text=True)
    assert 'id="unordered"' not in by_value


def test_classes_without_images_are_not_linked_and_no_page_shows_nan(tmp_path: Path) -> None:
    from convlens.explorer import create_app

    run = make_mined_run(tmp_path / "run", {"features.3": 6, "features.6": 8})
    path = run / "mine" / "class_means.npz"
    with np.load(path) as z:
        arrays = {k: np.array(z[k]) for k in z.files}
    arrays["__counts__"][[2, 5]] = 0
    for k in ("features.3", "features.6"):
        arrays[k][:, [2, 5]] = np.nan  # what mining writes for a class without images
    np.savez(path, **arrays)
    client = create_app(run).test_client()
    listing = client.get("/classes").get_data(as_text=True)
    assert 'href="/class/2"' not in listing and 'href="/class/5"' not in listing and 'href="/class/3"' in listing
    assert "6 of 8" in listing
    start = client.get("/").get_data(as_text=True)
    assert "6 of the 8 classes" in start and "each of the 8" not in start
    for c in range(8):
        for by in ("mean", "selectivity"):
            page = client.get(f"/class/{c}?by={by}").get_data(as_text=True)
            assert "nan" not in page.lower(), (c, by)
            assert ("No image of this class was mined" in page) == (c in (2, 5)), c
    for m in range(6):
        assert "nan" not in client.get(f"/layer/features.3/map/{m}").get_data(as_text=True).lower()


def test_upload_form_offers_the_occluder_and_passes_it(runs: dict[str, Path], tmp_path: Path) -> None:
    import time

    from convlens.explorer import create_app

    client = create_app(fresh_copy(runs["none"], tmp_path / "run")).test_client()
    start = client.get("/").get_data(as_text=True)
    assert 'name="window"' in start and 'name="stride"' in start and 'max="32"' in start  # the 32 px input
    assert "(the model this run was mined with)" in start
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(buf, "PNG")
    r = client.post("/analyze", data={"image": (io.BytesIO(buf.getvalue()), "x.png"), "rule": "auto",
                                      "window": "12", "stride": "5"}, content_type="multipart/form-data")
    assert r.status_code == 303, r.get_data(as_text=True)
    job_url = r.headers["Location"]
    for _ in range(600):
        status = client.get(job_url + "/status").get_json()
        if status["state"] in ("done", "failed"):
            break
        time.sleep(0.1)
    assert status["state"] == "done", status
    assert "occluder 12x12 px, stride 5 px" in client.get(job_url).get_data(as_text=True)
    bad = client.post("/analyze", data={"image": (io.BytesIO(buf.getvalue()), "x.png"), "window": "-3"},
                      content_type="multipart/form-data")
    assert bad.status_code == 400 and "occlusion window" in bad.get_data(as_text=True)


def test_occluder_grid_bounds() -> None:
    from convlens.explorer.compute import occluder_grid

    assert occluder_grid(224) == (56, 28) and occluder_grid(32) == (8, 4)
    assert occluder_grid(224, 40, 8) == (40, 8)
    for window, stride in ((1, None), (225, None), (40, 41), (40, 0)):
        with pytest.raises(ValueError, match="occlusion"):
            occluder_grid(224, window, stride)


def test_opening_the_run_warms_up_without_writing(runs: dict[str, Path], tmp_path: Path) -> None:
    """The server's warm-up projects one unit per mined layer ahead, in memory only: no unit is written,
    and the first page still computes its map."""
    from convlens.explorer import create_app

    root = fresh_copy(runs["none"], tmp_path / "run")
    app = create_app(root)
    projector = app.extensions["convlens"].projector
    source = projector.source()
    assert set(source._tops) == set(LAYERS.split(","))  # every mined layer's top-k read ahead
    assert not list((root / "mine" / "units").rglob("*.png")) if (root / "mine" / "units").exists() else True
    assert app.test_client().get("/layer/conv5/map/3/projections").status_code == 200
    assert projector.computed == 1
