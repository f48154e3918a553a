"""convlens.io.manifest reads run directories without torch: results in the paper's order, malformed files as
warnings (never exceptions), figure paths kept inside their folder; round trip with artifacts.write_result."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from PIL import Image

from convlens.io.artifacts import write_result
from convlens.io.manifest import KIND_ORDER, SCHEMA, inside, load_run, read_metrics, read_result


def _png(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 4), "red").save(path)


def _result(folder: Path, kind_: str, **extra: object) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    doc = {"schema": SCHEMA, "kind": kind_, "title": kind_.title(), "summary": f"{kind_} done", "params": {"a": 1},
           "figures": [], "tables": [], "data": {"x": [1, 2]}}
    doc.update(extra)
    (folder / "result.json").write_text(json.dumps(doc))
    return folder / "result.json"


def test_write_then_read_round_trip(tmp_path: Path) -> None:
    _png(tmp_path / "occ" / "occlusion.png")
    write_result(tmp_path / "occ", "occlusion", title="Occlusion", summary="s", params={"window": 50},
                 figures=[{"path": "occlusion.png", "caption": "c", "group": "g"}],
                 tables=[{"title": "T", "columns": ["a", "b"], "rows": [[1, 0.123456], ["x", float("nan")]]}],
                 data={"grid": [[0.5]]})
    r = read_result(tmp_path / "occ" / "result.json", tmp_path)
    assert (r.kind, r.title, r.name, r.params, r.data) == ("occlusion", "Occlusion", "occ", {"window": 50},
                                                           {"grid": [[0.5]]})
    assert r.figures[0].path == (tmp_path / "occ" / "occlusion.png").resolve() and r.figures[0].group == "g"
    assert r.tables[0].rows == (("1", "0.1235"), ("x", "-")) and not r.warnings  # NaN is written as null


def test_write_result_refuses_missing_or_escaping_figures(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        write_result(tmp_path, "mine", title="t", summary="s", figures=[{"path": "missing.png"}])
    with pytest.raises(ValueError, match="relative"):
        write_result(tmp_path, "mine", title="t", summary="s", figures=[{"path": "../x.png"}])


def test_load_run_orders_results_and_collects_warnings(tmp_path: Path) -> None:
    run = tmp_path / "run"
    for kind in ("transfer", "mine", "occlusion", "summary"):
        _result(run / kind, kind)
    _result(run / "occlusion" / "dog", "occlusion")  # one level deeper is found too
    _result(run, "train")
    _result(run / "report", "mine")  # the report folder is not a result
    (run / "broken").mkdir()
    (run / "broken" / "result.json").write_text("{not json")
    _result(run / "nokind", "x", kind=None)
    _result(run / "future", "project", schema="convlens.result/99")
    (run / "config.json").write_text("[1, 2]")
    (run / "metrics.csv").write_text("epoch,val_top1_err\n1,0.5\n2,\n3,oops\n")
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "last.pt").write_bytes(b"")
    loaded = load_run(run)
    kinds = [r.kind for r in loaded.results]
    assert kinds[0] == "train"
    known = [k for k in kinds[1:] if k in KIND_ORDER]
    assert known == sorted(known, key=KIND_ORDER.index)
    assert len(loaded.of_kind("occlusion")) == 2 and loaded.first("mine") is not None
    assert loaded.first("ablate") is None and "report" not in {r.name for r in loaded.results}
    assert loaded.config is None and any("config.json is malformed" in w for w in loaded.warnings)
    assert any("broken/result.json is not readable JSON" in w for w in loaded.warnings)
    assert any("nokind/result.json has no 'kind'" in w for w in loaded.warnings)
    assert any("convlens.result/99" in w for w in loaded.first("project").warnings)  # type: ignore[union-attr]
    assert [m["epoch"] for m in loaded.metrics] == [1.0, 2.0, 3.0]
    assert loaded.metrics[0]["val_top1_err"] == 0.5 and math.isnan(loaded.metrics[1]["val_top1_err"])
    assert math.isnan(loaded.metrics[2]["val_top1_err"])
    assert loaded.checkpoints == ((run / "checkpoints" / "last.pt").resolve(),)


def test_figures_outside_or_missing_become_warnings(tmp_path: Path) -> None:
    _png(tmp_path / "secret.png")
    _png(tmp_path / "r" / "ok.png")
    path = _result(tmp_path / "r", "mine", figures=[{"path": "ok.png"}, {"path": "../secret.png"},
                                                  {"path": "/etc/passwd"}, {"path": "gone.png"}, {"nopath": 1}])
    r = read_result(path, tmp_path)
    assert [f.path.name for f in r.figures] == ["ok.png"]
    assert len(r.warnings) == 4
    assert sum("outside its folder" in w for w in r.warnings) == 2


def test_inside(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    assert inside(tmp_path, "a") == (tmp_path / "a").resolve()
    assert inside(tmp_path, "../x") is None and inside(tmp_path, "/tmp") is None
    (tmp_path / "link").symlink_to("/")
    assert inside(tmp_path, "link/etc") is None


def test_bad_tables_are_warnings(tmp_path: Path) -> None:
    path = _result(tmp_path / "t", "ablate", tables=[{"title": "ok", "columns": ["a"], "rows": [[1]]},
                                                   {"title": "bad", "rows": "notalist"}, 5])
    r = read_result(path, tmp_path)
    assert [t.title for t in r.tables] == ["ok"] and len(r.warnings) == 2


def test_missing_run_dir(tmp_path: Path) -> None:
    with pytest.raises(NotADirectoryError, match="does not exist"):
        load_run(tmp_path / "nope")


def test_read_metrics_ignores_extra_columns(tmp_path: Path) -> None:
    (tmp_path / "m.csv").write_text("epoch,loss\n1,2.5,extra\n")
    assert read_metrics(tmp_path / "m.csv") == [{"epoch": 1.0, "loss": 2.5}]
