"""convlens.io.featvis_files: reading featvis folders without torch, and caches as report results."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from convlens.io.featvis_files import CACHE_DIR, cache_folders, cache_results, caption, read_layer, read_unit

SETTINGS = {"layer": "conv5", "model": "zfnet-tiny", "steps": 128, "size": 16, "lr": 0.05, "seed": 0,
            "objective": "channel", "diverse": 1, "diversity_weight": 100.0, "transforms": True}


def write_unit(folder: Path, unit: int, **over: object) -> Path:
    (folder / "conv5").mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(folder / "conv5" / f"unit_{unit}.png")
    doc = {"layer": "conv5", "unit": unit, "settings": SETTINGS, "images": [f"unit_{unit}.png"],
           "activation": [2.5], "peak": [6.0], "top1": 4.0, "ratio": [1.5], **over}
    path = folder / "conv5" / f"unit_{unit}.json"
    path.write_text(json.dumps(doc))
    return path


def test_cache_dir_is_the_libraries() -> None:
    from convlens.featvis.store import CACHE_DIR as STORE_DIR

    assert CACHE_DIR == STORE_DIR


def test_read_unit_keeps_good_records_and_refuses_broken_ones(tmp_path: Path) -> None:
    write_unit(tmp_path, 1)
    rec = read_unit(tmp_path, "conv5", 1)
    assert rec is not None and rec["ratio"] == [1.5] and rec["top1"] == 4.0 and rec["folder"] == tmp_path / "conv5"
    assert caption(rec) == "unit 1: activation 2.5 (channel mean), peak 6 = 1.50x the mined top-1"
    write_unit(tmp_path, 2, ratio=None, top1=None)
    assert caption(read_unit(tmp_path, "conv5", 2)).endswith("no mined top-1 to compare with")  # type: ignore[arg-type]
    write_unit(tmp_path, 3, images=["../../etc/passwd"])
    write_unit(tmp_path, 4, activation=[float("nan")])
    write_unit(tmp_path, 5, images=["gone.png"])
    write_unit(tmp_path, 6).write_text("{not json")
    for bad in (3, 4, 5, 6, 7):
        assert read_unit(tmp_path, "conv5", bad) is None, bad
    assert list(read_layer(tmp_path, "conv5")) == [1, 2]
    assert read_layer(tmp_path, "nope") == {}


def test_caches_become_featvis_results_but_cli_outputs_do_not(tmp_path: Path) -> None:
    write_unit(tmp_path / "mine" / CACHE_DIR, 7)
    write_unit(tmp_path / "cli", 1)  # a `convlens featvis --out` folder has its own result.json
    (tmp_path / "cli" / "result.json").write_text("{}")
    write_unit(tmp_path / "other" / CACHE_DIR, 1)
    (tmp_path / "other" / CACHE_DIR / "result.json").write_text("{}")
    assert cache_folders(tmp_path) == [tmp_path / "mine" / CACHE_DIR]
    (res,) = cache_results(tmp_path)
    assert res.kind == "featvis" and res.name == "mine/featvis" and len(res.figures) == 1
    assert res.figures[0].path == tmp_path / "mine" / CACHE_DIR / "conv5" / "unit_7.png"
    assert res.figures[0].group == "conv5" and "1.50x the mined top-1" in res.figures[0].caption
    settings = "128 steps, 16 px, seed 0, channel objective"
    assert res.tables[0].rows == (("conv5", "7", "2.5", "6", "4", "1.50", settings),)
