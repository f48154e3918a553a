"""Tests for convlens.transfer.probes (Tables 4-7, Fig. 9) and the transfer command."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, TensorDataset

from convlens.nets.convnet import build_model
from convlens.transfer.probes import (
    Features,
    caltech_folds,
    evaluate_probes,
    extract_features,
    find_duplicates,
    fit_probe,
    image_signatures,
    per_class_accuracy,
)


def test_per_class_accuracy_matches_a_hand_computed_confusion() -> None:
    # confusion rows = true class: class 0: 2/3 right, class 1: 1/1, class 2: 0/2, class 3 absent
    y_true = torch.tensor([0, 0, 0, 1, 2, 2])
    y_pred = torch.tensor([0, 0, 1, 1, 0, 1])
    acc = per_class_accuracy(y_true, y_pred, 4)
    torch.testing.assert_close(acc[:3], torch.tensor([2 / 3, 1.0, 0.0], dtype=torch.float64))
    assert torch.isnan(acc[3])
    assert float(acc.nanmean()) == pytest.approx((2 / 3 + 1 + 0) / 3)  # not the overall 3/6


def test_caltech_folds_are_disjoint_sized_and_reproducible() -> None:
    labels = torch.tensor([0] * 40 + [1] * 12 + [2] * 80)
    folds = caltech_folds(labels, 10, n_test=50, folds=5, seed=3)
    assert len(folds) == 5
    for tr, te in folds:
        assert not set(tr.tolist()) & set(te.tolist())
        assert torch.bincount(labels[tr]).tolist() == [10, 10, 10]
        assert torch.bincount(labels[te]).tolist() == [30, 2, 50]  # up to 50 of the rest
    assert not torch.equal(folds[0][0], folds[1][0])  # folds differ
    again = caltech_folds(labels, 10, n_test=50, folds=5, seed=3)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(folds, again, strict=False))


def _separable(n: int = 60, d: int = 8, k: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % k
    centers = torch.eye(k, d) * 10.0
    return centers[y] + 0.5 * torch.randn(n, d, generator=g), y


@pytest.mark.parametrize("kind", ["svm", "svm-sgd", "logreg", "softmax"])
def test_probes_separate_separable_features_deterministically(kind: str) -> None:
    x, y = _separable()
    xt, yt = _separable(seed=1)
    a = fit_probe(x, y, xt, yt, kind=kind)
    b = fit_probe(x, y, xt, yt, kind=kind)
    assert a.mean_class_accuracy == 1.0 and a.accuracy == 1.0
    assert torch.equal(a.predictions, b.predictions)


def test_evaluate_probes_reports_every_layer_probe_and_n() -> None:
    x, y = _separable(n=90)
    feats = Features({"good": x, "noise": torch.randn(90, 8, generator=torch.Generator().manual_seed(0))}, y,
                     torch.arange(90))
    res = evaluate_probes(feats, n_train=[5, 10], probes=["svm", "softmax"], folds=2, seed=0)
    assert set(res.scores) == {(lay, p, n) for lay in ("good", "noise") for p in ("svm", "softmax") for n in (5, 10)}
    assert res.mean_std("good", "svm", 10) == (1.0, 0.0)
    assert res.mean_std("noise", "svm", 10)[0] < 0.8
    assert res.per_class[("good", "softmax", 5)].shape == (3,)


def test_extract_features_pools_conv_maps_and_keeps_fc() -> None:
    model = build_model("zfnet-tiny", seed=0).train()
    x, y = torch.randn(10, 3, 32, 32), torch.arange(10) % 5
    feats = extract_features(model, DataLoader(TensorDataset(x, y), batch_size=4), ["conv2", "conv5", "fc7"],
                             pool_size=2)
    assert feats.features["conv2"].shape == (10, 12 * 4) and feats.features["fc7"].shape == (10, 32)
    assert feats.labels.tolist() == y.tolist() and feats.indices.tolist() == list(range(10))
    assert model.training  # mode restored
    with torch.no_grad():
        direct = model.eval().features(x, ["conv5"])["conv5"]
    torch.testing.assert_close(feats.features["conv5"], torch.nn.functional.adaptive_avg_pool2d(direct, 2).flatten(1))


def test_contamination_check_finds_a_planted_resized_copy() -> None:
    g = torch.Generator().manual_seed(0)
    a = torch.rand(20, 3, 64, 64, generator=g)
    a = torch.nn.functional.avg_pool2d(a, 5, 1, 2)  # smoother, photo-like
    b = torch.rand(30, 3, 48, 48, generator=g)
    b[17] = torch.nn.functional.interpolate(a[6:7], size=(48, 48), mode="bilinear", antialias=True)[0] * 0.8 + 0.1
    dup = find_duplicates(image_signatures(a), image_signatures(b), threshold=0.9, block=7)
    assert dup.pairs.tolist() == [[6, 17]]
    assert float(dup.scores[0]) > 0.95 and int(dup.best_match[6]) == 17


def _image_folder(root: Path, per_class: int = 6, classes: int = 2) -> Path:
    g = torch.Generator().manual_seed(0)
    for c in range(classes):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(per_class):
            arr = (torch.rand(40, 40, 3, generator=g) * 120 + 100 * c).clamp(0, 255).byte().numpy()
            Image.fromarray(arr).save(root / f"class{c}" / f"{i}.png")
    return root


def test_transfer_cli_end_to_end_and_cache(tmp_path: Path) -> None:
    from convlens.cli import main
    from convlens.images.data import Preprocessing
    from convlens.nets.checkpoint import save_checkpoint

    data = _image_folder(tmp_path / "data")
    ckpt = tmp_path / "m.pt"
    pre = Preprocessing(36, 32, torch.full((3, 1, 1), 127.5), torch.full((3, 1, 1), 64.0))
    save_checkpoint(ckpt, build_model("zfnet-tiny", seed=0, num_classes=2), preprocessing=pre,
                    class_names=["a", "b"], epoch=1)
    out = tmp_path / "out"
    argv = ["transfer", "--checkpoint", str(ckpt), "--dataset", str(data), "--per-class", "2,4", "--folds", "2",
            "--layers", "conv1,conv5,fc7", "--probe", "svm,softmax", "--device", "cpu", "--out", str(out)]
    assert main(argv) == 0
    result = json.loads((out / "result.json").read_text())
    assert result["kind"] == "transfer" and len(result["tables"][0]["rows"]) == 6
    assert (out / "accuracy_vs_n.png").is_file() and (out / "transfer.md").is_file()
    assert len(list((out / "cache").glob("*.npz"))) == 3
    assert main([*argv[:-6], "--probe", "svm", *argv[-4:]]) == 0  # second run reads the cache
    assert json.loads((out / "result.json").read_text())["params"]["cached_layers"] == ["conv1", "conv5", "fc7"]


def test_transfer_cli_bad_probe_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from convlens.cli import main

    code = main(["transfer", "--arch", "torchvision:alexnet", "--dataset", str(tmp_path), "--probe", "knn",
                 "--out", str(tmp_path / "o")])
    assert code == 2
    assert "--probe: unknown knn" in capsys.readouterr().err
