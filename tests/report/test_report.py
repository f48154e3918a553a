"""The static report (convlens.report) and the torch-free run reader (convlens.io.manifest)."""
from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image

from convlens.cli import main
from convlens.io.manifest import KIND_ORDER, load_run
from convlens.report import build_report
from convlens.report.svg import line_chart, nice_ticks

METRICS = (
    "epoch,train_loss,train_top1_err,train_top5_err,val_loss,val_top1_err,val_top5_err,lr,seconds\n"
    "1,2.1,0.71,0.20,1.9,0.60,0.15,0.01,30\n2,1.2,0.40,0.10,1.1,0.35,0.05,0.01,31\n3,0.8,0.3,0.05,0.9,0.3,,0.01,29\n"
)


def _png(path: Path, color: tuple[int, int, int] = (200, 30, 30), size: int = 12) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), color).save(path)


def _result(folder: Path, kind: str, figures: list[dict], tables: list | None = None, data: dict | None = None,
            summary: str = "") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for f in figures:
        if not f["path"].startswith("..") and f.get("make", True):
            _png(folder / f["path"])
        f.pop("make", None)
    (folder / "result.json").write_text(json.dumps({
        "schema": "convlens.result/1", "kind": kind, "title": f"{kind} title", "summary": summary or f"{kind} summary",
        "params": {"k": 9, "layer": "conv5"}, "figures": figures, "tables": tables or [], "data": data or {}}))


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    """A hand-made run: metrics, config, results of several kinds (written out of paper order)."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.csv").write_text(METRICS)
    (run / "config.json").write_text(json.dumps({"arch": "zfnet-small", "dataset": "fashion-mnist", "epochs": 3}))
    _png(run / "checkpoints" / "x.png")
    (run / "checkpoints" / "last.pt").write_bytes(b"")
    _result(run / "transfer", "transfer", [], [{"title": "Table 7", "columns": ["layer", "acc"],
                                               "rows": [["conv5", 0.81], ["fc7", "0.9 ± 0.01"]]}])
    _result(run / "mine", "mine", [{"path": "conv1_grid.png", "caption": "conv1 top-9", "group": "conv1"},
                                   {"path": "grids/conv2 grid.png", "caption": "conv2 <b>", "group": "conv2"}])
    _result(run / "occlusion" / "img0", "occlusion", [{"path": "prob.png", "caption": "p(true class)"}],
            summary="window 8 stride 2")
    _result(run / "occlusion" / "img1", "occlusion", [{"path": "prob.png", "caption": "p(true class)"}])
    (run / "broken").mkdir()
    (run / "broken" / "result.json").write_text("{not json")
    _result(run / "diagnose", "diagnose", [{"path": "../../outside.png", "caption": "escapes"},
                                           {"path": "missing.png", "make": False}])
    return run


class _Imgs(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.srcs: list[str] = []
        self.hrefs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        d = dict(attrs)
        if tag == "img":
            self.srcs.append(d["src"] or "")
        if d.get("href"):
            self.hrefs.append(d["href"] or "")


def test_report_sections_in_paper_order_and_self_contained(run_dir: Path) -> None:
    index = build_report(run_dir)
    assert index == run_dir / "report" / "index.html"
    html = index.read_text()
    ids = re.findall(r'<section id="([a-z]+)"', html)
    assert ids[0] == "training"
    assert ids[1:] == sorted(ids[1:], key=KIND_ORDER.index) == ["mine", "diagnose", "occlusion", "transfer"]
    assert "<svg" in html and "loss" in html and "top-1 / top-5 error" in html
    assert "zfnet-small" in html and "occlusion title" in html and "window 8 stride 2" in html
    assert "0.9 ± 0.01" in html and "conv2 &lt;b&gt;" in html  # escaped caption
    parser = _Imgs()
    parser.feed(html)
    assert len(parser.srcs) == 4  # 2 mine grids + 2 occlusion maps
    for src in parser.srcs:  # every image is a copy inside the report folder
        assert src.startswith("assets/") and not src.startswith("/")
        from urllib.parse import unquote
        assert (index.parent / unquote(src)).is_file()
    assert all(h.startswith("#") for h in parser.hrefs)  # no external links
    assert "http://" not in html.replace('xmlns="http://www.w3.org/2000/svg"', "") and "https://" not in html


def test_report_warns_instead_of_crashing(run_dir: Path) -> None:
    html = build_report(run_dir).read_text()
    assert "broken/result.json is not readable JSON" in html
    assert "points outside its folder" in html and "missing.png" in html
    assert "outside.png" not in " ".join(re.findall(r'src="([^"]+)"', html))


def test_report_of_empty_and_bad_runs(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    html = build_report(tmp_path / "empty").read_text()
    assert "No analysis results" in html and "<section id=\"training\"" not in html
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text("[1, 2")
    (bad / "metrics.csv").write_text("epoch,train_loss\n1,abc\n2,\n")
    (bad / "x").mkdir()
    (bad / "x" / "result.json").write_text(json.dumps({"kind": "occlusion", "tables": [5], "figures": "no"}))
    html = build_report(bad).read_text()
    assert "config.json is malformed" in html and "a table must be an object" in html
    with pytest.raises(NotADirectoryError):
        build_report(tmp_path / "nope")


def test_manifest_reads_run(run_dir: Path) -> None:
    run = load_run(run_dir)
    assert [r.kind for r in run.results] == ["mine", "diagnose", "occlusion", "occlusion", "transfer"]
    assert run.metrics[1]["val_top1_err"] == 0.35 and run.metrics[2]["val_top5_err"] != run.metrics[2]["val_top5_err"]
    assert run.config == {"arch": "zfnet-small", "dataset": "fashion-mnist", "epochs": 3}
    assert [p.name for p in run.checkpoints] == ["last.pt"]
    assert run.first("transfer").tables[0].rows == (("conv5", "0.81"), ("fc7", "0.9 ± 0.01"))


def test_svg_chart() -> None:
    ticks = nice_ticks(0, 0.93, 5)
    assert ticks[0] == 0 and ticks[-1] >= 0.93 and 4 <= len(ticks) <= 7 and ticks == [0, 0.25, 0.5, 0.75, 1.0]
    svg = line_chart({"train loss": [(1, 2.0), (2, float("nan"))], "val": [(1, 1.0)]}, title="a<b")
    assert svg.startswith("<svg") and "a&lt;b" in svg and svg.count("<circle") == 2
    assert line_chart({"x": []}, title="t") == ""


def test_report_cli(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", str(run_dir), "--out", str(run_dir / "r2")]) == 0
    assert capsys.readouterr().out.strip().endswith("r2/index.html")
    assert main(["report", str(run_dir / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
