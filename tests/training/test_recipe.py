"""Tests for convlens.training.recipe: filter clipping, resume equality, overfitting, the run directory."""
from __future__ import annotations

import csv
import json

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from convlens.training.recipe import METRICS_COLUMNS, RunData, TrainConfig, fit, renormalize_filters


def _data(n: int = 16, classes: int = 5, size: int = 32) -> RunData:
    g = torch.Generator().manual_seed(0)
    y = torch.arange(n) % classes
    x = torch.randn(classes, 3, size, size, generator=g)[y] + torch.randn(n, 3, size, size, generator=g)
    ds = TensorDataset(x, y)
    return RunData(ds, ds, tuple(f"c{i}" for i in range(classes)))


def _cfg(tmp_path, **kw) -> TrainConfig:
    base = dict(arch="zfnet-tiny", dataset="synthetic", out=str(tmp_path), epochs=2, batch_size=8, init="kaiming")
    return TrainConfig(**{**base, **kw})


def test_renormalize_filters_hand_values():
    conv = nn.Conv2d(1, 3, kernel_size=(1, 2), bias=True)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([[0.05, -0.05], [0.3, 0.4], [0.1, 0.1]]).view(3, 1, 1, 2))
        conv.bias.copy_(torch.tensor([5.0, 6.0, 7.0]))
    lin = nn.Linear(2, 2)
    lin.weight.data.fill_(9.0)
    model = nn.Sequential(conv, lin)
    renormalize_filters(model, 0.1)
    # filter 0: RMS 0.05 (under) -> untouched; filter 1: RMS sqrt((0.09+0.16)/2) = 0.35355 -> x0.1/0.35355;
    # filter 2: RMS exactly 0.1 -> untouched. Biases and fc weights are never touched.
    expected = torch.tensor([[0.05, -0.05],
                             [0.3 * 0.1 / 0.25**0.5 * 2**0.5, 0.4 * 0.1 / 0.25**0.5 * 2**0.5],
                             [0.1, 0.1]])
    torch.testing.assert_close(conv.weight.view(3, 2), expected)
    assert conv.weight[1].pow(2).mean().sqrt().item() == pytest.approx(0.1, rel=1e-6)
    assert conv.bias.tolist() == [5.0, 6.0, 7.0]
    assert (lin.weight == 9.0).all()


def test_resume_is_bit_identical(tmp_path):
    data = _data()
    full = fit(_cfg(tmp_path / "full"), datasets=data)
    fit(_cfg(tmp_path / "split", epochs=1), datasets=data)
    resumed = fit(_cfg(tmp_path / "split", epochs=2, resume=True), datasets=data)
    a = torch.load(tmp_path / "full" / "checkpoints" / "last.pt", weights_only=False)["model"]
    b = torch.load(tmp_path / "split" / "checkpoints" / "last.pt", weights_only=False)["model"]
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert resumed["train_loss"] == full["train_loss"] and resumed["val_loss"] == full["val_loss"]
    with open(tmp_path / "split" / "metrics.csv") as f:
        rows = list(csv.reader(f))
    assert rows[0] == list(METRICS_COLUMNS) and [r[0] for r in rows[1:]] == ["1", "2"]


def test_run_directory_contents(tmp_path):
    fit(_cfg(tmp_path, epochs=2, checkpoint_epochs=(1,)), datasets=_data(8), argv=["train", "--x"])
    ckpts = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert ckpts == ["epoch_001.pt", "epoch_002.pt", "last.pt"]  # chosen epochs + the final one
    ckpt = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=False)
    assert ckpt["epoch"] == 2 and ckpt["class_names"] == [f"c{i}" for i in range(5)]
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["arch"] == "zfnet-tiny" and config["argv"] == ["train", "--x"]
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["kind"] == "train" and len(result["tables"][0]["rows"]) == 2


def test_tiny_model_overfits_16_images():
    cfg = TrainConfig(arch="zfnet-tiny", dataset="synthetic", epochs=60, batch_size=8, init="kaiming",
                      dropout=0.0, clip_radius=None, plateau_patience=100)
    data = _data(16)
    result = fit(cfg, datasets=data)
    assert result["val_top1_err"] == 0.0  # val = the 16 training images, in eval mode


def test_clipping_holds_filters_at_radius_during_training():
    cfg = TrainConfig(arch="zfnet-tiny", dataset="synthetic", epochs=1, batch_size=8, init="kaiming", lr=0.05)
    from convlens.training.recipe import build_train_model, make_loader, train_one_epoch

    model = build_train_model(cfg, 5)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    train_one_epoch(model, make_loader(_data(16).train, 8, train=True), opt, clip_radius=0.1)
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            rms = m.weight.flatten(1).pow(2).mean(1).sqrt()
            assert (rms <= 0.1 + 1e-6).all()


def test_bad_config_is_a_readable_error():
    with pytest.raises(ValueError, match="clip_radius must be > 0"):
        TrainConfig(arch="zfnet-tiny", dataset="x", clip_radius=0.0)
    with pytest.raises(ValueError, match="init must be"):
        TrainConfig(arch="zfnet-tiny", dataset="x", init="xavier")


def test_limit_takes_a_random_subset_over_all_classes():
    from convlens.training.recipe import random_subset

    labels = torch.arange(4).repeat_interleave(25)  # class-sorted, like an ImageFolder
    ds = TensorDataset(torch.zeros(100, 1), labels)
    sub = random_subset(ds, 20)
    picked = torch.tensor([sub[i][1] for i in range(len(sub))])
    assert len(sub) == 20 and set(picked.tolist()) == {0, 1, 2, 3}
    assert [sub[i][1] for i in range(20)] == [random_subset(ds, 20)[i][1] for i in range(20)]  # deterministic
    assert random_subset(ds, None) is ds and random_subset(ds, 500) is ds


def test_full_disk_is_a_disk_error_and_result_json_stops_at_the_last_saved_epoch(tmp_path, monkeypatch):
    import errno
    import os
    from types import SimpleNamespace

    from convlens.cli import error_line

    real_save, calls = torch.save, []

    def save(obj, f, *a, **kw):  # epoch 1 writes last.pt + epoch_001.pt; epoch 2's first write hits a full disk
        calls.append(1)
        if len(calls) > 2:
            raise RuntimeError("[enforce fail at inline_container.cc:778] . PytorchStreamWriter failed writing file "
                               "data/3: file write failed")
        return real_save(obj, f, *a, **kw)

    monkeypatch.setattr(torch, "save", save)
    monkeypatch.setattr(os, "statvfs", lambda p: SimpleNamespace(f_bavail=0, f_frsize=4096))
    with pytest.raises(OSError) as info:
        fit(_cfg(tmp_path, epochs=2), datasets=_data(8))
    assert info.value.errno == errno.ENOSPC
    line = error_line(info.value)
    assert line.startswith("error: could not write") and "no space left" in line and "this input" not in line
    result = json.loads((tmp_path / "result.json").read_text())
    assert [r[0] for r in result["tables"][0]["rows"]] == [1]  # epoch 2 was not saved, so it is not reported
    assert torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=False)["epoch"] == 1
