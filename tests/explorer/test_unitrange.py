"""The unit page's whole range, the layer page's labels, the dataset image route and the compare
page, on a run mined by ``convlens mine`` with activation tables (values from the same functions
the API serves, whose definitions tests/topk/test_unitstats.py checks against brute force)."""
from __future__ import annotations

import io
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from convlens.cli import main
from convlens.explorer.app import create_app
from convlens.explorer.unitrange import NO_TABLE, label_text
from convlens.topk.acttable import load_table
from convlens.topk.unitdata import layer_labels, map_column, unit_range
from mined_run import make_mined_run, make_ranged_run

STRIP = re.compile(r'<div class="strip" id="strip-([^"]+)">(.*?)</div></div>', re.S)
VALUE = re.compile(r'class="rval" data-value="([^"]+)" data-index="(\d+)"')


@pytest.fixture(scope="module")
def ranged(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_ranged_run(tmp_path_factory.mktemp("ranged"))


def _page(client, url: str) -> str:
    r = client.get(url)
    assert r.status_code == 200, (url, r.status_code)
    return r.get_data(as_text=True)


def test_unit_page_strips_histogram_and_label(ranged: Path) -> None:
    client = create_app(ranged).test_client()
    table = load_table(ranged / "mine")
    names = ["a", "b"]
    labels = layer_labels(table, "conv5", names)
    checked = 0
    for m in range(table.layers["conv5"]):
        html = _page(client, f"/layer/conv5/map/{m}")
        doc = unit_range(table, "conv5", m, names)
        strips = dict(STRIP.findall(html))
        assert set(strips) == {*doc["quantiles"], "bottom"}
        for key, examples in [*doc["quantiles"].items(), ("bottom", doc["bottom"])]:
            got = [(float(v), int(i)) for v, i in VALUE.findall(strips[key])]
            assert got == [(e["value"], e["index"]) for e in examples]
            assert len(got) == 9
        x, rows = map_column(table, "conv5", m)
        order = sorted(range(len(x)), key=lambda i: (float(x[i]), int(rows[i])))  # brute-force bottom 9
        assert [(float(v), int(i)) for v, i in VALUE.findall(strips["bottom"])] == \
            [(float(x[i]), int(rows[i])) for i in order[:9]]
        counts = [int(c) for c in re.findall(r'class="hbar" data-count="(\d+)"', html)]
        assert len(counts) == 32 and sum(counts) == len(rows) == 24
        assert counts == doc["histogram"]["counts"]
        if x.max() > x.min():  # a live map: its bins equal an independent count
            assert counts == np.histogram(x.astype(np.float64), 32)[0].tolist()
            checked += 1
        assert 'id="topk-threshold"' in html and f"top 3 &ge; {np.sort(x)[-3]:.3g}" in html
        text = label_text(labels.label(m), names)
        assert text.replace("'", "&#39;") in html
    assert checked >= 8
    assert any(n is not None for n in labels.names) and any(n is None for n in labels.names)


def test_dataset_images_are_only_the_recorded_ones(ranged: Path, tmp_path: Path) -> None:
    client = create_app(ranged).test_client()
    html = _page(client, "/layer/conv1/map/0")
    srcs = re.findall(r'<img class="rangeimg" src="([^"]+)"', html)
    assert len(srcs) == 45
    for src in sorted(set(srcs))[:5]:
        r = client.get(src)
        assert r.status_code == 200 and r.mimetype == "image/png"
        assert Image.open(io.BytesIO(r.data)).size == (64, 64)
    big = client.get(srcs[0].replace("s=64", "s=128"))
    assert Image.open(io.BytesIO(big.data)).size == (128, 128)
    for url, code in (("/dataset/image/24?s=64", 404), ("/dataset/image/0?s=65", 400), ("/dataset/image/0?s=x", 400),
                      ("/dataset/image/-1?s=64", 404), ("/dataset/image/..%2F..%2Fetc%2Fpasswd", 404)):
        assert client.get(url).status_code == code, url
    # a name in images.json that points outside the dataset folder is refused
    moved = tmp_path / "run"
    shutil.copytree(ranged, moved)
    (moved / "mine" / "acts" / "images.json").write_text('["../tiny.pt"' + ', "a/001.png"' * 23 + "]")
    c2 = create_app(moved).test_client()
    assert c2.get("/dataset/image/0?s=64").status_code == 404
    assert c2.get("/dataset/image/1?s=64").status_code == 200


def test_layer_page_label_column_sort_and_search(ranged: Path) -> None:
    client = create_app(ranged).test_client()
    table = load_table(ranged / "mine")
    labels = layer_labels(table, "conv5", ["a", "b"])
    html = _page(client, "/layer/conv5?sort=label")
    shown = [int(m) for m in re.findall(r'data-map="(\d+)"', html)]
    scores = labels.scores
    assert shown == sorted(range(12), key=lambda m: (-scores[m], m))
    assert len(re.findall(r'class="tlabel', html)) == 12 and 'id="unordered"' not in html
    asc = [int(m) for m in re.findall(r'data-map="(\d+)"', _page(client, "/layer/conv5?sort=label&order=asc"))]
    assert asc == sorted(range(12), key=lambda m: (scores[m], m))
    found = _page(client, "/layer/conv5?label=B")
    got = [int(m) for m in re.findall(r'data-map="(\d+)"', found)]
    want = [m for m in range(12) if labels.names[m] == "b"]
    assert got == want and 0 < len(want) < 12
    assert f"{len(want)} of 12 maps have a label containing" in found
    # prev/next on a unit page reached from the label order follow that order
    unit = _page(client, f"/layer/conv5/map/{shown[1]}?sort=label&order=desc")
    assert f'href="/layer/conv5/map/{shown[2]}?sort=label&amp;order=desc"' in unit


def test_runs_without_tables_say_why(tmp_path: Path) -> None:
    run = make_mined_run(tmp_path / "old", {"features.3": 6}, figure=False)
    client = create_app(run).test_client()
    unit = _page(client, "/layer/features.3/map/0")
    assert 'id="no-range"' in unit and NO_TABLE.replace("'", "&#39;") in unit and "rangeimg" not in unit
    layer = _page(client, "/layer/features.3?sort=label")
    assert 'id="no-labels"' in layer and "tlabel" not in layer
    assert "no labels to sort by" in layer
    assert client.get("/dataset/image/0?s=64").status_code == 404


def test_compare_page_of_a_self_comparison(ranged: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(ranged, run)
    assert main(["compare", str(run / "mine"), str(run / "mine"), "--out", str(run / "compare")]) == 0
    client = create_app(run).test_client()
    assert 'href="/compare/compare"' in _page(client, "/")
    html = _page(client, "/compare/compare")
    table = load_table(run / "mine")
    parts = html.split('<section class="cmp" id="cmp-')[1:]
    sections = {p.split('"', 1)[0]: p for p in parts}
    assert set(sections) == {"conv1", "conv5"}
    for layer, section in sections.items():
        live = [m for m in range(table.layers[layer]) if np.ptp(map_column(table, layer, m)[0]) > 0]
        assert len(live) > 0
        rows = re.findall(r'<td><a href="/layer/(\w+)/map/(\d+)">\d+</a></td>\s*<td><a href="/layer/(\w+)/map/(\d+)">'
                          r'\d+</a></td>\s*<td>([^<]+)</td>', section)
        assert sorted(int(u) for _, u, _, _, _ in rows) == sorted(live * 2)
        assert all(a == b == layer and u == v and r == "1.000" for a, u, b, v, r in rows)
        assert section.count('class="rcurve"') == 2
        dead = table.layers[layer] - len(live)
        assert section.count("none (dead unit)") == 2 * dead
        share = len(live) / table.layers[layer]
        assert f"<b>{100 * share:.0f}%</b> of A" in section
    assert client.get("/compare/nope").status_code == 404
    alone = create_app(run / "compare").test_client()  # the compare folder served by itself: no unit pages to link
    assert 'href="/compare/"' in _page(alone, "/")
    page = _page(alone, "/compare/")
    assert page.count('class="rcurve"') == 4 and 'href="/layer/' not in page and ">1.000<" in page
