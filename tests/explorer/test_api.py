"""The explorer's JSON API on a small mined run: documented keys, values from the activation table,
errors as JSON, and the archive."""
from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from convlens.cli import main
from convlens.explorer.app import create_app
from convlens.topk.acttable import load_table
from convlens.topk.unitdata import map_column

KEYS = {"top", "bottom", "quantiles", "histogram", "label", "classes"}


@pytest.fixture
def run(tmp_path: Path, tiny_checkpoint: Path, image_folder: Path) -> Path:
    root = tmp_path / "run"
    assert main(["mine", "--checkpoint", str(tiny_checkpoint), "--dataset", str(image_folder), "--split", "train",
                 "--layers", "conv1,conv5", "--k", "3", "--batch-size", "4", "--workers", "0", "--maps", "2",
                 "--device", "cpu", "--out", str(root / "mine")]) == 0
    return root


def test_unit_layer_and_archive(run: Path) -> None:
    client = create_app(run).test_client()
    table = load_table(run / "mine" / "acts")
    names = json.loads((run / "mine" / "acts" / "images.json").read_text())
    assert names[0] == "a/000.png"  # relative to the dataset folder
    for m in range(table.layers["conv5"]):
        doc = client.get(f"/api/unit/conv5/{m}").get_json()
        assert set(doc) >= KEYS and doc["table"] is True and doc["images"] == 8
        assert set(doc["quantiles"]) == {"0.99", "0.9", "0.5", "0.1"}
        examples = [*doc["top"], *doc["bottom"], *(e for q in doc["quantiles"].values() for e in q)]
        assert all(isinstance(e["image"], str) and isinstance(e["value"], float) for e in examples)
        assert all(e["image"] in names for e in examples)
        x, _ = map_column(table, "conv5", m)
        edges = doc["histogram"]["edges"]
        assert doc["bottom"][0]["value"] == float(x.min())
        assert (edges[0] == float(x.min()) and edges[-1] == float(x.max())) or x.min() == x.max() == edges[0] + 0.5
        assert sum(doc["histogram"]["counts"]) == 8 and len(doc["top"]) == 3
        assert set(doc["label"]) >= {"name", "score"} and doc["classes"][0]["name"] in ("a", "b")
        assert (doc["label"]["name"] is None) == (not doc["label"]["good"])
        assert doc["label"]["score"] >= 0.75 or doc["label"]["name"] is None
    layer = client.get("/api/layer/conv5").get_json()
    assert layer["num_maps"] == table.layers["conv5"] == len(layer["maps"])
    assert {"map", "label", "top"} <= set(layer["maps"][0]) and "name" in layer["maps"][0]["label"]
    for url in ("/api/unit/conv5/999", "/api/unit/conv9/0", "/api/layer/conv9"):
        r = client.get(url)
        assert r.status_code == 404 and "error" in r.get_json()
    r = client.get("/api/archive")
    assert r.status_code == 200 and r.mimetype == "application/zip"
    with zipfile.ZipFile(io.BytesIO(r.data)) as z:
        got = set(z.namelist())
        assert {"result.json", "class_means.npz", "acts/table.json", "acts/conv5.npy", "acts/images.json"} <= got
        assert not any(n.endswith(".png") for n in got)
        assert np.array_equal(np.load(io.BytesIO(z.read("acts/conv5.npy"))), np.asarray(table.values("conv5")))
