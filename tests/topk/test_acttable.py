"""Activation tables and what is read from them (bottom-k, quantile examples, histograms, class
statistics, labels), against brute force from plain forwards; resuming; AUROC speed."""
from __future__ import annotations

import time
from statistics import NormalDist

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from convlens.nets.convnet import build_model
from convlens.topk.acttable import filled_ranges, load_table
from convlens.topk.mining import mine_top_activations
from convlens.topk.unitdata import layer_labels, unit_range
from convlens.topk.unitstats import auroc, class_stats, unit_labels

LAYERS = ["conv1", "conv5"]
CLASSES = ["a", "b", "c", "d"]


class Labelled(Dataset):
    """(x, label, index) items with 4 classes; label 3 images are brighter (a map can separate them)."""

    def __init__(self, x: torch.Tensor, fail_at: int | None = None) -> None:
        self.x, self.fail_at = x, fail_at

    def __len__(self) -> int:
        return len(self.x)

    def label(self, i: int) -> int:
        return (i * 7) % 4

    def __getitem__(self, i: int):
        if i == self.fail_at:
            raise RuntimeError("simulated crash")
        return self.x[i], self.label(i), i


@pytest.fixture(scope="module")
def setup():
    model = build_model("zfnet-tiny", init="kaiming", seed=0).eval()
    x = torch.randn(40, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    ds = Labelled(x)
    x[[i for i in range(40) if ds.label(i) == 3]] += 1.5
    return model, ds


def brute_force(model, ds, batch_size: int) -> dict[str, np.ndarray]:
    """Per layer (n, C): plain forwards over the same batches, amax over positions, as float16."""
    out: dict[str, list[np.ndarray]] = {n: [] for n in LAYERS}
    with torch.no_grad():
        for s in range(0, len(ds), batch_size):
            acts = model.features(ds.x[s:s + batch_size], LAYERS)
            for n in LAYERS:
                out[n].append(acts[n].amax(dim=(2, 3)).to(torch.float16).numpy())
    return {n: np.concatenate(v) for n, v in out.items()}


def mine(model, ds, tmp, **kw):
    return mine_top_activations(model, DataLoader(ds, batch_size=8), LAYERS, k=3, table=tmp, num_classes=4, **kw)


def test_table_equals_brute_force_and_range_examples(setup, tmp_path):
    model, ds = setup
    mine(model, ds, tmp_path / "acts")
    table = load_table(tmp_path / "acts")
    oracle = brute_force(model, ds, 8)
    assert table.num_images == 40 and table.rows().tolist() == list(range(40))
    assert table.meta["filled"] == [[0, 40]]
    assert table.labels().tolist() == [ds.label(i) for i in range(40)]
    for layer in LAYERS:
        assert np.array_equal(np.asarray(table.values(layer)), oracle[layer])
    a = oracle["conv5"].astype(np.float32)
    checked = 0
    for m in range(a.shape[1]):
        col = a[:, m]
        got = unit_range(table, "conv5", m, CLASSES, k=4, quantiles=(0.99, 0.9, 0.5, 0.0), bins=8)
        order = sorted(range(40), key=lambda i: (float(col[i]), i))  # the definition, by Python's sort
        assert [e["index"] for e in got["bottom"]] == order[:4]
        for q in (0.99, 0.9, 0.5, 0.0):
            p = int(np.floor(q * 39))
            start = min(max(p - 2, 0), 36)
            assert [e["index"] for e in got["quantiles"][repr(q)]] == order[start:start + 4][::-1]
            assert float(col[order[p]]) == float(np.quantile(col, q, method="lower"))
        counts, edges = np.histogram(col.astype(np.float64), bins=8, range=(col.min(), col.max()))
        assert got["histogram"]["counts"] == counts.tolist() and np.allclose(got["histogram"]["edges"], edges)
        means = [float(col[[i for i in range(40) if ds.label(i) == c]].mean()) for c in range(4)]
        best = int(np.argmax(means))
        assert got["classes"][0]["class"] == best and got["classes"][0]["mean"] == pytest.approx(means[best])
        checked += 1
    assert checked >= 8 and len({tuple(a[:, m]) for m in range(a.shape[1])}) > 1


def brute_auroc(col: np.ndarray, labels: np.ndarray, c: int) -> float:
    pos, neg = col[labels == c][:, None], col[labels != c][None]
    return float(((pos > neg).sum() + 0.5 * (pos == neg).sum()) / (pos.size * neg.size))


def test_labels_and_selectivity_equal_brute_force(setup, tmp_path):
    model, ds = setup
    mine(model, ds, tmp_path / "acts")
    table = load_table(tmp_path / "acts")
    a = brute_force(model, ds, 8)["conv1"].astype(np.float32)
    labels = np.array([ds.label(i) for i in range(40)])
    got = layer_labels(table, "conv1", CLASSES, threshold=0.75)
    scores = np.array([[brute_auroc(a[:, m], labels, c) for c in range(4)] for m in range(a.shape[1])])
    assert np.allclose(auroc(a, labels, 4), scores, atol=1e-12)
    best = scores.max(1)
    assert np.array_equal(got.scores, best) and np.array_equal(got.classes, scores.argmax(1))
    sigma = np.sqrt(41 / (12 * 10 * 30))  # 10 images per class of 40: the AUROC's spread under chance
    good = (best >= 0.75) & ((best - 0.5) / sigma >= NormalDist().inv_cdf(1 - 0.01 / 4))
    assert 0 < good.sum() < len(best), best  # both kinds occur: the test checks something
    assert [n is not None for n in got.names] == good.tolist()
    assert all(got.names[m] == CLASSES[int(scores[m].argmax())] for m in np.flatnonzero(good))
    assert got.label(int(np.flatnonzero(~good)[0]))["name"] is None
    stats = class_stats(a, labels, 4)
    for c in range(4):
        inside, rest = a[labels == c], a[labels != c]
        sel = (inside.mean(0) - rest.mean(0)) / a.astype(np.float64).std(0)
        assert np.allclose(stats.selectivity[:, c], np.where(a.std(0) > 0, sel, 0.0), atol=1e-6)


def test_killed_and_resumed_table_equals_uninterrupted(setup, tmp_path):
    model, ds = setup
    mine(model, ds, tmp_path / "full")
    state = tmp_path / "mine.state"
    with pytest.raises(RuntimeError, match="simulated crash"):
        mine(model, Labelled(ds.x, fail_at=29), tmp_path / "resumed", state_path=state, save_every=2)
    assert load_table(tmp_path / "resumed").meta["filled"] == [[0, 16]]  # flushed with the state (2 batches)
    mine(model, ds, tmp_path / "resumed", state_path=state, save_every=2)
    full, resumed = load_table(tmp_path / "full"), load_table(tmp_path / "resumed")
    for layer in LAYERS:
        assert np.array_equal(np.asarray(full.values(layer)), np.asarray(resumed.values(layer)))
    assert np.array_equal(full.filled(), resumed.filled()) and np.array_equal(full.labels(), resumed.labels())


def test_filled_ranges():
    assert filled_ranges(np.array([0, 1, 1, 0, 1])) == [[1, 3], [4, 5]]
    assert filled_ranges(np.zeros(3)) == []


def test_unit_labels_refuse_a_bad_threshold():
    with pytest.raises(ValueError, match="threshold"):
        unit_labels(np.zeros((4, 2)), np.zeros(4, dtype=int), ["a"], threshold=0.2)


def test_random_maps_get_no_label_with_few_images_per_class():
    """102 classes x 6 images, 300 random maps: the best AUROC is often above 0.75 by chance alone."""
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(102), 6)
    a = rng.normal(size=(len(labels), 300)).astype(np.float32)
    got = unit_labels(a, labels, [str(c) for c in range(102)])
    assert (got.scores >= 0.75).mean() > 0.5 and sum(n is not None for n in got.names) <= 3
    a[:, 0] += 3.0 * (labels == 7)  # a map that does separate class 7
    assert unit_labels(a, labels, [str(c) for c in range(102)]).names[0] == "7"


@pytest.mark.slow
def test_auroc_speed_1280_maps_1000_classes():
    rng = np.random.default_rng(0)
    a = np.maximum(rng.normal(size=(1000, 1280)), 0).astype(np.float16)
    t = time.perf_counter()
    auroc(a, rng.integers(0, 1000, 1000), 1000)
    assert time.perf_counter() - t < 30
