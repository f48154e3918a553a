"""Unit matching: a run against itself matches every unit to itself with r = 1; a model whose
channels were permuted is matched back to the permutation; the CLI writes the documented JSON."""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from convlens.cli import main
from convlens.nets.convnet import build_model
from convlens.topk.acttable import load_table
from convlens.topk.compare import compare_tables, correlate
from convlens.topk.mining import mine_top_activations

LAYERS = ["conv3", "conv4", "conv5"]


def mine(model, x, folder, rows=None):
    idx = torch.arange(len(x))
    ds = TensorDataset(x, torch.zeros(len(x), dtype=torch.long), idx)
    loader = DataLoader(ds, batch_size=16, sampler=rows)
    mine_top_activations(model, loader, LAYERS, k=2, table=folder)
    return load_table(folder)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cmp")
    model = build_model("zfnet-tiny", init="kaiming", seed=0).eval()
    x = torch.randn(64, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    perm = torch.randperm(16, generator=torch.Generator().manual_seed(5))
    permuted = copy.deepcopy(model)
    with torch.no_grad():  # conv3's maps reordered, conv4 reads them in the new order: same function
        permuted.conv3.weight.copy_(model.conv3.weight[perm])
        permuted.conv3.bias.copy_(model.conv3.bias[perm])
        permuted.conv4.weight.copy_(model.conv4.weight[:, perm])
    return tmp, mine(model, x, tmp / "a"), mine(permuted, x, tmp / "b"), perm, mine(model, x, tmp / "half", range(32))


def live_unique(a: np.ndarray) -> np.ndarray:
    """Columns that vary and are not copies of another column (only those have one best match)."""
    a = a.astype(np.float64)
    keep = a.std(0) > 0
    for i in range(a.shape[1]):
        for j in range(a.shape[1]):
            if i != j and np.array_equal(a[:, i], a[:, j]):
                keep[i] = False
    return np.flatnonzero(keep)


def test_a_run_matches_itself(runs):
    _, a, _, _, _ = runs
    matches = compare_tables(a, a)
    assert list(matches) == LAYERS
    checked = 0
    for layer, m in matches.items():
        units = live_unique(np.asarray(a.values(layer)))
        assert len(units) >= 8
        assert (m.a_to_b[units] == units).all() and (m.b_to_a[units] == units).all()
        assert np.allclose(m.r_a[units], 1.0, atol=1e-9)
        dead = np.flatnonzero(np.asarray(a.values(layer)).astype(np.float64).std(0) == 0)
        assert (m.a_to_b[dead] == -1).all() and np.isnan(m.r_a[dead]).all()
        checked += len(units)
    assert checked >= 30


def test_permuted_channels_are_matched_back(runs):
    _, a, b, perm, _ = runs
    matches = compare_tables(a, b, [("conv3", "conv3"), ("conv4", "conv4")])
    units = live_unique(np.asarray(a.values("conv3")))
    inverse = torch.argsort(perm).numpy()  # B's map j is A's map perm[j]: A's map u is B's inverse[u]
    assert not (inverse[units] == units).all()
    assert (matches["conv3"].a_to_b[units] == inverse[units]).all()
    assert (matches["conv3"].b_to_a[inverse[units]] == units).all()
    assert np.allclose(matches["conv3"].r_a[units], 1.0, atol=1e-9)
    later = live_unique(np.asarray(a.values("conv4")))
    assert (matches["conv4"].a_to_b[later] == later).all()  # conv4 is the same function again
    assert matches["conv4"].r_a[later].min() > 0.999


def test_correlate_equals_numpy_corrcoef():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(50, 4)), rng.normal(size=(50, 3))
    b[:, 2] = 1.0
    r = correlate(a, b, chunk=7)
    assert np.allclose(r[:, :2], np.corrcoef(a.T, b[:, :2].T)[:4, 4:], atol=1e-12)
    assert np.isnan(r[:, 2]).all()


def test_compare_cli_and_refusals(runs, tmp_path, capsys):
    _, a, b, _, half = runs
    assert main(["compare", str(a.folder), str(b.folder), "--layers", "conv3=conv3,conv5", "--out",
                 str(tmp_path / "c")]) == 0
    res = json.loads((tmp_path / "c" / "result.json").read_text())
    assert res["kind"] == "compare" and (tmp_path / "c" / "compare.png").is_file()
    first = res["data"]["layers"]["conv3"]["a_to_b"][0]
    assert set(first) == {"unit", "match", "r"} and len(res["data"]["layers"]["conv5"]["b_to_a"]) == 12
    assert compare_tables(a, half)["conv5"].images == 32  # only the images both mined
    assert main(["compare", str(a.folder), str(b.folder), "--layers", "conv9", "--out", str(tmp_path / "d")]) == 2
    assert "conv9" in capsys.readouterr().err
    assert main(["compare", str(a.folder), str(tmp_path), "--out", str(tmp_path / "d")]) == 2
    assert "activation table" in capsys.readouterr().err
