"""Feature evolution over checkpoints (Fig. 4): epoch choice, correlations, end to end."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from convlens.evolution.analysis import Evolution, feature_evolution, find_checkpoints, pearson, pick_epochs
from convlens.nets.convnet import build_model


def test_pick_epochs():
    assert pick_epochs(range(1, 71)) == [1, 2, 5, 10, 20, 30, 40, 64, 70]
    assert pick_epochs(range(1, 21)) == [1, 2, 5, 10, 20]
    assert pick_epochs([1, 2, 3, 4, 5]) == [1, 2, 3, 4, 5]
    spread = pick_epochs([3, 4, 6, 7, 8, 9, 11, 12, 13, 14, 15, 16])
    assert len(spread) == 8 and spread[0] == 3 and spread[-1] == 16


def test_pearson_and_convergence():
    a = torch.randn(3, 3, 4, 4)
    r = pearson(a, torch.stack([a[0], -a[1], torch.zeros(3, 4, 4)]))
    torch.testing.assert_close(r[:2], torch.tensor([1.0, -1.0], dtype=torch.float64))
    assert math.isnan(r[2])  # a constant (dead-map) projection has no correlation
    corr = torch.tensor([[0.2, 0.95, 0.5, 0.97], [0.4, 0.91, 0.99, float("nan")]], dtype=torch.float64)
    evo = Evolution([1, 2, 5, 10, 20], {}, {}, {}, {}, {"conv1": corr})
    torch.testing.assert_close(evo.mean_correlation("conv1"),
                               torch.tensor([0.3, 0.93, 0.745, 0.97], dtype=torch.float64))
    assert evo.converged_epoch("conv1") == 10  # 10->20 is the only pair from there on, and it is >= 0.9
    evo2 = Evolution([1, 2, 5], {}, {}, {}, {}, {"conv1": torch.tensor([[0.95, 0.92]])})
    assert evo2.converged_epoch("conv1") == 1


def test_same_model_twice_gives_correlation_one():
    model = build_model("zfnet-tiny", seed=0, init="kaiming").eval()
    x = torch.randn(8, 3, 32, 32)
    ds = [(x[i], 0, i) for i in range(8)]
    loader = DataLoader(ds, batch_size=4)
    other = build_model("zfnet-tiny", seed=1, init="kaiming").eval()
    evo = feature_evolution([(1, model), (2, model), (3, other)], loader, ds, {"conv1": [0, 3], "conv5": [1]})
    assert evo.epochs == [1, 2, 3]
    assert evo.projections["conv1"].shape == (2, 3, 3, 5, 5) and evo.projections["conv5"].shape[:2] == (1, 3)
    assert (evo.values["conv1"] > 0).all() and (evo.values["conv5"] > 0).all()  # every tracked map is live
    assert not evo.correlations["conv1"].isnan().any()
    torch.testing.assert_close(evo.correlations["conv1"][:, 0], torch.ones(2, dtype=torch.float64))
    torch.testing.assert_close(evo.correlations["conv5"][:, 0], torch.ones(1, dtype=torch.float64))
    assert torch.equal(evo.indices["conv1"][:, 0], evo.indices["conv1"][:, 1])
    with torch.no_grad():  # the value tracked is each map's maximum over the dataset
        expected = model.features(x, ["conv1"])["conv1"][:, [0, 3]].amax(dim=(0, 2, 3))
    torch.testing.assert_close(evo.values["conv1"][:, 0], expected)


def test_cli_evolution_end_to_end(tmp_path):
    from PIL import Image

    from convlens.cli import main
    from convlens.images.data import Preprocessing
    from convlens.nets.checkpoint import save_checkpoint

    root = tmp_path / "images"
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.random.default_rng(i + ord(c)).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(
                root / c / f"{i}.png")
    run = tmp_path / "run"
    pre = Preprocessing(32, 32, torch.full((3, 1, 1), 120.0), torch.full((3, 1, 1), 60.0))
    model = build_model("zfnet-tiny", seed=0, init="kaiming", num_classes=2)
    for epoch in (1, 2, 3):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.05 * torch.randn_like(p))
        save_checkpoint(run / "checkpoints" / f"epoch_{epoch:03d}.pt", model, preprocessing=pre,
                        class_names=["a", "b"], epoch=epoch)
    assert list(find_checkpoints(run)) == [1, 2, 3]
    code = main(["evolution", "--run", str(run), "--dataset", str(root), "--layers", "conv1,conv3", "--maps", "2",
                 "--workers", "0", "--batch-size", "6"])
    assert code == 0
    res = json.loads((run / "evolution" / "result.json").read_text())
    assert res["kind"] == "evolution" and res["data"]["epochs"] == [1, 2, 3]
    assert res["tables"][0]["columns"] == ["layer", "1→2", "2→3", "stable from epoch"]
    assert all((run / "evolution" / f["path"]).is_file() for f in res["figures"])
    conv1 = res["data"]["layers"]["conv1"]
    assert len(conv1["maps"]) == 2 and len(conv1["correlation"][0]) == 2
    assert main(["evolution", "--run", str(run), "--dataset", str(root), "--epochs", "1,7"]) == 2


def test_missing_checkpoints(tmp_path):
    with pytest.raises(FileNotFoundError, match="epoch_NNN"):
        find_checkpoints(tmp_path)
