"""Tests for evaluation (top-1/top-5, 10-crop and ensemble softmax averaging) and the train/evaluate CLI."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from conftest import make_image_folder
from convlens.cli import main
from convlens.training.recipe import evaluate


class Logits(nn.Module):
    """A 'model' whose input already holds the logits: (B, 1, 1, C) -> gain * (B, C)."""

    def __init__(self, gain: float = 1.0) -> None:
        super().__init__()
        self.gain = nn.Parameter(torch.tensor(gain))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gain * x.flatten(1)


def _loader(x: torch.Tensor, y: list[int]) -> DataLoader:
    return DataLoader(TensorDataset(x, torch.tensor(y)), batch_size=3)  # 2 batches of 4 images


def test_top1_top5_by_hand():
    logits = torch.tensor([7.0, 6, 5, 4, 3, 2, 1]).expand(4, 7).reshape(4, 1, 1, 7)
    # true class ranked 1st, 5th, 6th, 7th -> top-1 right once, top-5 right twice
    model = Logits().train()
    res = evaluate(model, _loader(logits, [0, 4, 5, 6]))
    assert res["top1_err"] == pytest.approx(3 / 4)
    assert res["top5_err"] == pytest.approx(2 / 4)
    lse = math.log(sum(math.exp(k) for k in range(1, 8)))
    assert res["loss"] == pytest.approx(sum(lse - v for v in (7, 3, 2, 1)) / 4, rel=1e-6)
    assert res["images"] == 4
    assert model.training  # mode restored


def test_ten_crop_averages_softmax_not_votes():
    # 3 crops of one image: two mildly favour class 1, one strongly class 0.
    # Votes say 1; the averaged softmax says 0: p0 = (2 * 1/(1+e) + e^5/(e^5+1)) / 3 = 0.5104
    crops = torch.tensor([[0.0, 1.0], [0.0, 1.0], [5.0, 0.0]]).reshape(1, 3, 1, 1, 2)
    res = evaluate(Logits(), DataLoader(TensorDataset(crops, torch.tensor([0])), batch_size=1), ten_crop=True)
    p0 = (2 / (1 + math.e) + math.exp(5) / (math.exp(5) + 1)) / 3
    assert res["top1_err"] == 0.0
    assert res["loss"] == pytest.approx(-math.log(p0), rel=1e-6)


def test_ensemble_averages_softmax():
    x = torch.tensor([[1.0, 0.0, -1.0], [0.0, 2.0, 1.0]]).reshape(2, 1, 1, 3)
    a, b = Logits(1.0), Logits(-3.0)
    res = evaluate([a, b], DataLoader(TensorDataset(x, torch.tensor([0, 2])), batch_size=2))
    p = (torch.softmax(x.flatten(1), 1) + torch.softmax(-3 * x.flatten(1), 1)) / 2  # oracle
    assert res["loss"] == pytest.approx(-(p[0, 0].log() + p[1, 2].log()).item() / 2, rel=1e-5)
    assert res["top1_err"] == (p.argmax(1) != torch.tensor([0, 2])).float().mean().item()


def test_wrong_input_shape_is_readable():
    with pytest.raises(ValueError, match="ten_crop expects"):
        evaluate(Logits(), _loader(torch.zeros(4, 1, 1, 7), [0, 0, 0, 0]), ten_crop=True)


def test_cli_train_then_evaluate(tmp_path, capsys):
    folder = make_image_folder(tmp_path / "imgs", classes=("a", "b"), per_class=6, size=36)
    run = tmp_path / "run"
    code = main(["train", "--arch", "zfnet-tiny", "--dataset", str(folder), "--epochs", "2", "--batch-size", "4",
                 "--init", "kaiming", "--out", str(run), "--device", "cpu"])
    assert code == 0
    rows = _rows(run / "metrics.csv")
    assert [r["epoch"] for r in rows] == ["1", "2"] and float(rows[-1]["val_top1_err"]) <= 1.0
    assert (run / "mean.pt").is_file() and (run / "checkpoints" / "epoch_002.pt").is_file()
    # --resume reads the run's settings from config.json; a new --lr anneals by hand (as the paper did)
    assert main(["train", "--out", str(run), "--resume", "--epochs", "3", "--lr", "0.001"]) == 0
    rows = _rows(run / "metrics.csv")
    assert [r["epoch"] for r in rows] == ["1", "2", "3"] and float(rows[-1]["lr"]) == 0.001
    ckpt = str(run / "checkpoints" / "last.pt")
    out = tmp_path / "eval"
    code = main(["evaluate", "--checkpoint", ckpt, ckpt, "--dataset", str(folder), "--ten-crop", "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "ensemble of 2" in printed
    result = json.loads((out / "result.json").read_text())
    single, _, ensemble = result["tables"][0]["rows"]
    assert single[2:5] == ensemble[2:5]  # an ensemble of one model twice is that model
    assert single[1] == "10" and single[5] == 12


def test_cli_bad_argument_exits_2(tmp_path, capsys):
    code = main(["train", "--arch", "zfnet-tiny", "--dataset", "fashion-mnist", "--epochs", "0", "--out",
                 str(tmp_path)])
    assert code == 2
    assert "epochs must be > 0, got 0" in capsys.readouterr().err
    code = main(["evaluate", "--checkpoint", str(tmp_path / "missing.pt"), "--dataset", "fashion-mnist"])
    assert code == 2
    assert "no such file" in capsys.readouterr().err


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path) as f:
        return list(csv.DictReader(f))
