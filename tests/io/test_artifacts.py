import json

import numpy as np
import pytest
import torch
from PIL import Image

from convlens.io.artifacts import markdown_table, read_result, save_png, to_jsonable, write_result


def test_write_and_read_result_roundtrip(tmp_path):
    save_png(torch.rand(3, 5, 7), tmp_path / "a.png")
    write_result(tmp_path, "mine", title="T", summary="S", params={"k": 9},
                 figures=[{"path": "a.png", "caption": "c"}],
                 tables=[{"title": "t", "columns": ["x"], "rows": [[torch.tensor(1.5)]]}],
                 data={"v": torch.arange(3), "nan": float("nan"), "np": np.float32(2.0)})
    r = read_result(tmp_path)
    assert r["schema"] == "convlens.result/1" and r["kind"] == "mine"
    assert r["tables"][0]["rows"] == [[1.5]] and r["data"] == {"v": [0, 1, 2], "nan": None, "np": 2.0}
    assert json.loads((tmp_path / "result.json").read_text()) == r


def test_write_result_rejects_missing_or_escaping_figures(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        write_result(tmp_path, "x", title="", summary="", figures=[{"path": "none.png"}])
    with pytest.raises(ValueError, match="relative"):
        write_result(tmp_path, "x", title="", summary="", figures=[{"path": "../a.png"}])


def test_save_png_values(tmp_path):
    img = torch.zeros(3, 2, 2)
    img[0, 0, 0] = 1.0
    save_png(img, tmp_path / "x.png")
    arr = np.asarray(Image.open(tmp_path / "x.png"))
    assert arr.shape == (2, 2, 3) and arr[0, 0, 0] == 255 and arr[1, 1].sum() == 0
    with pytest.raises(ValueError, match="uint8"):
        save_png(np.zeros((2, 2), dtype=np.float32), tmp_path / "y.png")


def test_to_jsonable_and_markdown():
    assert to_jsonable({"a": (1, torch.tensor([2.0]))}) == {"a": [1, [2.0]]}
    md = markdown_table(["a", "b"], [[1, 0.12345]])
    assert md.splitlines() == ["| a | b |", "|---|---|", "| 1 | 0.1235 |"]
