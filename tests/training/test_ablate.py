"""Tests for convlens.training.ablate (Table 3 ablations; resumable per variant)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.utils.data import TensorDataset

from convlens.images.data import Preprocessing
from convlens.training.ablate import ablate, variant_arch, variant_dir
from convlens.training.recipe import RunData, TrainConfig


def _data() -> RunData:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(12, 3, 32, 32, generator=g), torch.arange(12) % 5
    pre = Preprocessing(32, 32, torch.full((3, 1, 1), 127.5), torch.full((3, 1, 1), 64.0))
    return RunData(TensorDataset(x, y), TensorDataset(x[:6], y[:6]), tuple("abcde"), pre)


def _cfg(tmp: Path) -> TrainConfig:
    return TrainConfig(arch="zfnet-tiny", dataset="unused", epochs=1, batch_size=6, device="cpu", seed=0,
                       init="kaiming", out=str(tmp))


def test_variant_names() -> None:
    assert variant_arch("zfnet-small", "base") == "zfnet-small"
    assert variant_arch("zfnet-small", "no34+fc-x2") == "zfnet-small:no34+fc-x2"
    assert variant_dir("") == "base" and variant_dir("zfnet:no7") == "no7"
    with pytest.raises(ValueError, match="unknown variant 'no99'"):
        variant_arch("zfnet-small", "no99")


def test_ablate_tabulates_and_resume_skips_finished(tmp_path: Path) -> None:
    data = _data()
    res = ablate(_cfg(tmp_path), ["base", "no34", "no67"], out=tmp_path, datasets=data, ensemble=True)
    assert [r.status for r in res.rows] == ["trained"] * 3
    assert [r.arch for r in res.rows] == ["zfnet-tiny", "zfnet-tiny:no34", "zfnet-tiny:no67"]
    assert res.rows[1].params < res.rows[0].params and res.rows[2].params < res.rows[0].params
    for r in res.rows:
        assert 0.0 <= r.val_top1_err <= 1.0 and r.val_top5_err <= r.val_top1_err
        assert (tmp_path / variant_dir(r.variant) / "checkpoints" / "last.pt").is_file()
    cols, rows = res.table()
    assert cols[-3:] == ["train top-1 %", "val top-1 %", "val top-5 %"] and len(rows) == 4  # + ensemble
    again = ablate(_cfg(tmp_path), ["base", "no34", "no7"], out=tmp_path, datasets=data)
    assert [r.status for r in again.rows] == ["skipped", "skipped", "trained"]
    assert again.rows[0].val_top1_err == pytest.approx(res.rows[0].val_top1_err, abs=1e-5)


def test_ablate_cli_end_to_end_and_bad_variant(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from PIL import Image

    from convlens.cli import main

    g = torch.Generator().manual_seed(0)
    for split, n in (("train", 4), ("test", 2)):
        for c in range(2):
            folder = tmp_path / "data" / split / f"c{c}"
            folder.mkdir(parents=True)
            for i in range(n):
                arr = (torch.rand(32, 32, 3, generator=g) * 100 + 120 * c).byte().numpy()
                Image.fromarray(arr).save(folder / f"{i}.png")
    out = tmp_path / "abl"
    argv = ["ablate", "--arch", "zfnet-tiny", "--variants", "base,no67", "--dataset", str(tmp_path / "data"),
            "--epochs", "1", "--batch-size", "4", "--limit-train", "6", "--device", "cpu", "--out", str(out)]
    assert main(argv) == 0
    result = json.loads((out / "result.json").read_text())
    assert result["kind"] == "ablate" and [r[0] for r in result["tables"][0]["rows"]] == ["base", "no67"]
    assert (out / "errors.png").is_file() and (out / "no67" / "metrics.csv").is_file()
    assert main([*argv[:4], "base,no99", *argv[5:]]) == 2
    assert "unknown variant 'no99'" in capsys.readouterr().err
