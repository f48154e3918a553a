"""Top-k mining (Fig. 2): exactness against a brute-force sort, resuming, sharding, corrupt files."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from convlens.nets.convnet import build_model
from convlens.topk.accumulator import TopKAccumulator, tie_key
from convlens.topk.mining import ShardSampler, mine_top_activations

CONVS = ["conv1", "conv2", "conv3", "conv4", "conv5"]


def brute_force(acts: torch.Tensor, indices: torch.Tensor, k: int, per_image: int = 1, seed: int = 0):
    """Oracle, all activations at once: numpy lexsort on (-value, tie key of the dataset index, row-major position)."""
    a = acts.reshape(acts.shape[0], acts.shape[1], -1).numpy() if acts.dim() == 4 else acts[:, :, None].numpy()
    n, c, hw = a.shape
    w = acts.shape[-1] if acts.dim() == 4 else 1
    idx = indices.numpy()
    values, dataset_indices, positions = [], [], []
    for ch in range(c):
        cand = []  # (value, index, position)
        for i in range(n):
            pos = np.lexsort((np.arange(hw), -a[i, ch]))[:per_image]  # per image: largest, first in row-major
            cand += [(a[i, ch, p], idx[i], p) for p in pos]
        v, ii, pp = (np.array(t) for t in zip(*cand, strict=False))
        order = np.lexsort((pp, tie_key(torch.as_tensor(ii), seed).numpy(), -v))[:k]
        values.append(v[order]), dataset_indices.append(ii[order]), positions.append(pp[order])
    pos = torch.as_tensor(np.array(positions))
    return (torch.as_tensor(np.array(values)), torch.as_tensor(np.array(dataset_indices)),
            torch.stack([pos // w, pos % w], -1))


def assert_matches(top, oracle):
    values, indices, positions = oracle
    torch.testing.assert_close(top.values, values.to(top.values.dtype), rtol=0, atol=0)
    assert torch.equal(top.dataset_indices, indices)
    assert torch.equal(top.positions, positions)


@pytest.mark.parametrize("batch_size", [1, 7, 64])
@pytest.mark.parametrize("per_image", [1, 3])
def test_accumulator_equals_brute_force_with_ties(batch_size, per_image):
    # Small integer activations: many ties in value (and whole all-zero maps), which the order must settle.
    gen = torch.Generator().manual_seed(0)
    conv = torch.randint(0, 4, (70, 5, 4, 3), generator=gen).double()
    conv[:, 4] = 0.0  # a dead map: every image ties at 0, first position (0, 0)
    fc = torch.randint(0, 3, (70, 6), generator=gen).double()
    indices = torch.randperm(70, generator=gen) + 100  # arbitrary order, as with shuffling or workers
    acc = TopKAccumulator(["conv", "fc"], k=9, per_image=per_image)
    for s in range(0, 70, batch_size):
        acc.update({"conv": conv[s:s + batch_size], "fc": fc[s:s + batch_size]}, indices[s:s + batch_size])
    out = acc.result()
    assert_matches(out["conv"], brute_force(conv, indices, 9, per_image))
    assert_matches(out["fc"], brute_force(fc, indices, 9, per_image))
    # values also agree with torch.topk over all activations at once
    per_map = conv.flatten(2).amax(2).t()
    if per_image == 1:
        torch.testing.assert_close(out["conv"].values, per_map.topk(9, dim=1).values, rtol=0, atol=0)
    dead = out["conv"]
    first = sorted(range(100, 170), key=lambda i: int(tie_key(torch.tensor(i))))  # the seeded order of the indices
    if per_image == 1:  # every image ties at 0: 9 images in the seeded order, each at its first position (0, 0)
        assert dead.positions[4].eq(0).all() and dead.dataset_indices[4].tolist() == first[:9]
        assert dead.dataset_indices[4].tolist() != sorted(dead.dataset_indices[4].tolist())  # not file order
    else:  # 3 positions per image, in row-major order
        assert dead.dataset_indices[4].tolist() == [first[0]] * 3 + [first[1]] * 3 + [first[2]] * 3
        assert dead.positions[4, :3].tolist() == [[0, 0], [0, 1], [0, 2]]


def test_fewer_entries_than_k_and_merge():
    acts = torch.rand(3, 2, 2, 2)
    a, b = TopKAccumulator(["x"], k=9), TopKAccumulator(["x"], k=9)
    a.update({"x": acts[:2]}, torch.tensor([0, 1]))
    b.update({"x": acts[2:]}, torch.tensor([2]))
    assert a.result()["x"].values.shape == (2, 2)
    a.merge(b)
    assert_matches(a.result()["x"], brute_force(acts, torch.arange(3), 9))
    assert a.result()["x"].num_images == 3


class Images(Dataset):
    """(x, label, index) items; optionally raises when ``fail_at`` is read; counts reads."""

    def __init__(self, x: torch.Tensor, fail_at: int | None = None) -> None:
        self.x, self.fail_at, self.reads = x, fail_at, []

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        if i == self.fail_at:
            raise RuntimeError("simulated crash")
        self.reads.append(i)
        return self.x[i], 0, i


def exact_tiny() -> torch.nn.Module:
    """zfnet-tiny with small-integer weights, no LRN, float64: every activation is an exact integer,
    so it does not depend on the batch size (convolution sums are exact), and ties are common."""
    model = build_model("zfnet-tiny", seed=0).double().eval()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randint(-2, 3, p.shape, generator=gen).double())
    model.norm1, model.norm2 = torch.nn.Identity(), torch.nn.Identity()
    return model


@pytest.fixture(scope="module")
def tiny():
    model = exact_tiny()
    x = torch.randint(-3, 4, (66, 3, 32, 32), generator=torch.Generator().manual_seed(1)).double()
    with torch.no_grad():
        acts = model.features(x, CONVS)
    return model, x, acts


@pytest.mark.parametrize("batch_size,workers", [(1, 0), (7, 2), (64, 0)])
def test_mining_equals_brute_force(tiny, batch_size, workers):
    model, x, acts = tiny
    loader = DataLoader(Images(x), batch_size=batch_size, num_workers=workers)
    tops = mine_top_activations(model, loader, CONVS, k=9)
    for layer in CONVS:
        assert_matches(tops[layer], brute_force(acts[layer], torch.arange(66), 9))
        assert tops[layer].num_images == 66


def test_distinct_images_by_default(tiny):
    model, x, _ = tiny
    loader = DataLoader(Images(x[:12]), batch_size=5)
    one = mine_top_activations(model, loader, ["conv1"], k=9)["conv1"]
    assert all(len(set(row.tolist())) == 9 for row in one.dataset_indices)
    three = mine_top_activations(model, loader, ["conv1"], k=9, per_image=3)["conv1"]
    counts = [np.bincount(row.numpy()).max() for row in three.dataset_indices]
    assert max(counts) <= 3 and max(counts) > 1  # several positions of one image now allowed
    assert (three.values[:, 0] == one.values[:, 0]).all()


def test_resume_after_crash_is_identical(tiny, tmp_path):
    model, x, _ = tiny
    x = x[:24]
    full = mine_top_activations(model, DataLoader(Images(x), batch_size=4), CONVS, k=5)
    state = tmp_path / "mine.state"
    crashing = Images(x, fail_at=14)  # batch 3 (0-based) fails
    with pytest.raises(RuntimeError, match="simulated crash"):
        mine_top_activations(model, DataLoader(crashing, batch_size=4), CONVS, k=5, state_path=state, save_every=2)
    assert torch.load(state, weights_only=True)["batches"] == 2  # saved after batch 2, not after 3
    again = Images(x)
    resumed = mine_top_activations(model, DataLoader(again, batch_size=4), CONVS, k=5, state_path=state, save_every=2)
    assert sorted(again.reads) == list(range(8, 24))  # finished batches were not even loaded
    for layer in CONVS:
        assert_matches(resumed[layer], (full[layer].values, full[layer].dataset_indices, full[layer].positions))
    assert resumed["conv1"].num_images == 24
    other = Images(x)  # a state saved by another run (different key) is not resumed from
    again = mine_top_activations(model, DataLoader(other, batch_size=4), CONVS, k=5, state_path=state, state_key="b")
    assert sorted(other.reads) == list(range(24)) and torch.equal(again["conv5"].values, full["conv5"].values)


def test_shard_sampler_covers_each_index_once():
    for n, world in [(20, 2), (7, 3), (2, 4)]:
        seen = [i for r in range(world) for i in ShardSampler(n, r, world)]
        assert seen == list(range(n))


def _worker(rank: int, world: int, init: str, x: torch.Tensor, out: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        model = exact_tiny()
        tops = mine_top_activations(model, DataLoader(Images(x), batch_size=3), ["conv2", "conv5"], k=4,
                                    table=f"{out}.acts")
        torch.save({k: v.to_dict() for k, v in tops.items()}, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_gloo_processes_equal_one(tiny, tmp_path):
    import torch.multiprocessing as mp

    model, x, _ = tiny
    x = x[:21]
    single = mine_top_activations(model, DataLoader(Images(x), batch_size=3), ["conv2", "conv5"], k=4,
                                  table=tmp_path / "single")
    init = f"file://{tmp_path / 'rendezvous'}"
    mp.spawn(_worker, args=(2, init, x, str(tmp_path / "out")), nprocs=2, join=True)
    for rank in range(2):
        got = torch.load(f"{tmp_path / 'out'}.{rank}", weights_only=True)
        for layer in ("conv2", "conv5"):
            assert torch.equal(got[layer]["values"], single[layer].values)
            assert torch.equal(got[layer]["dataset_indices"], single[layer].dataset_indices)
            assert torch.equal(got[layer]["positions"], single[layer].positions)
            assert got[layer]["num_images"] == 21
    from convlens.topk.acttable import load_table

    one, two = load_table(tmp_path / "single"), load_table(f"{tmp_path / 'out'}.acts")  # rank 0 merged the ranks'
    assert two.meta["filled"] == [[0, 21]]
    for layer in ("conv2", "conv5"):
        assert np.array_equal(np.asarray(one.values(layer)), np.asarray(two.values(layer)))


def _folder_with_a_broken_jpeg(tmp_path, classes):
    """An ImageFolder dataset: 3 small PNGs per class and ``b/broken.jpg``, which cannot be decoded."""
    from PIL import Image

    from convlens.images.data import Preprocessing, open_dataset

    root = tmp_path / "folder"
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.random.default_rng(i).integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(
                root / c / f"{i}.png")
    (root / "b" / "broken.jpg").write_bytes(b"not a jpeg at all")
    pre = Preprocessing(36, 32, torch.full((3, 1, 1), 128.0), torch.ones(3, 1, 1))
    return open_dataset(str(root), "train", pre)


def test_corrupt_image_is_skipped_and_counted(tmp_path):
    from convlens.images.data import collate_skip

    ds = _folder_with_a_broken_jpeg(tmp_path, ("a", "b"))
    assert len(ds) == 7
    model = build_model("zfnet-tiny", seed=0)
    tops = mine_top_activations(model, DataLoader(ds, batch_size=4, collate_fn=collate_skip), ["conv1"], k=9)
    assert tops["conv1"].num_skipped == 1 and tops["conv1"].num_images == 6
    broken = [i for i in range(7) if ds.describe(i).endswith("broken.jpg")]
    assert broken[0] not in tops["conv1"].dataset_indices
    assert tops["conv1"].values.shape == (8, 6)


def test_bad_arguments():
    with pytest.raises(ValueError, match="k and per_image"):
        TopKAccumulator(["conv1"], k=0)
    with pytest.raises(ValueError, match="non-empty list"):
        TopKAccumulator("conv1")


def test_patches_lie_inside_the_image_and_match_the_rf_box(tiny):
    from convlens.core.receptive_field import receptive_fields, unit_box
    from convlens.topk.tiles import unit_tiles

    model, x, _ = tiny
    x = x[:10]
    ds = Images(x)
    tops = mine_top_activations(model, DataLoader(ds, batch_size=10), ["conv1", "conv2", "fc6"], k=3)
    rfs = receptive_fields(model, (32, 32))
    for layer in ("conv1", "conv2", "fc6"):
        top = tops[layer]
        tiles = unit_tiles(model, ds, top, [0, 2], fill=-99.0)
        s = tiles.patches.shape[-1]
        assert s == min(rfs[model.resolve(layer)].size, 32) if layer != "fc6" else s == 32
        torch.testing.assert_close(tiles.values, top.values[[0, 2]], rtol=1e-9, atol=0)  # projections start there
        for i, c in enumerate((0, 2)):
            for r in range(3):
                y, xx = top.positions[c, r].tolist()
                y0, x0, y1, x1 = tiles.boxes[i, r].tolist()
                assert 0 <= y0 < y1 <= 32 and 0 <= x0 < x1 <= 32
                assert (y0, x0, y1, x1) == unit_box(model, model.resolve(layer), y, xx, 32)
                tile = tiles.patches[i, r]
                inside = tile != -99.0
                crop = x[int(top.dataset_indices[c, r]), :, y0:y1, x0:x1]
                assert int(inside[0].sum()) == crop.shape[1] * crop.shape[2]
                assert torch.equal(tile[inside].reshape(crop.shape), crop)
                # a box clipped at the top/left edge sits at the bottom/right of its tile
                if y0 == 0 and y1 < 32:
                    assert inside[0, -1].any() and not inside[0, 0].any()


def test_cli_mine_end_to_end(tmp_path):
    import json

    from PIL import Image

    from convlens.cli import main
    from convlens.images.data import Preprocessing
    from convlens.nets.checkpoint import save_checkpoint

    root = tmp_path / "images"
    for c in ("cats", "dogs"):
        (root / c).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.random.default_rng(i + len(c)).integers(0, 255, (36, 36, 3), dtype=np.uint8)).save(
                root / c / f"{i}.png")
    (root / "dogs" / "corrupt.jpg").write_bytes(b"\xff\xd8 truncated")
    model = build_model("zfnet-tiny", seed=0, init="kaiming", num_classes=2)
    pre = Preprocessing(36, 32, torch.full((3, 1, 1), 120.0), torch.full((3, 1, 1), 60.0))
    save_checkpoint(tmp_path / "ck.pt", model, preprocessing=pre, class_names=["cats", "dogs"], epoch=1)
    out = tmp_path / "mine"
    argv = ["mine", "--checkpoint", str(tmp_path / "ck.pt"), "--dataset", str(root), "--layers", "conv1,conv5",
            "--k", "4", "--maps", "2", "--workers", "0", "--batch-size", "4", "--out", str(out)]
    assert main(argv) == 0
    res = json.loads((out / "result.json").read_text())
    assert res["kind"] == "mine" and res["data"]["skipped"] == 1 and res["data"]["images"] == 6
    assert [f["path"] for f in res["figures"]] == ["conv1_grid.png", "conv5_grid.png"]
    conv5 = res["data"]["layers"]["conv5"]
    assert conv5["num_maps"] == 12 and len(conv5["maps"]) == 12
    entry = conv5["maps"]["3"][0]
    assert {"rank", "value", "index", "image", "y", "x", "box", "projection", "patch"} <= set(entry)
    assert entry["class"] in ("cats", "dogs") and entry["class"] == res["data"]["class_names"][entry["label"]]
    assert (entry["image"].startswith(str(root)) and (out / entry["projection"]).is_file()
            and (out / entry["patch"]).is_file())
    assert [e["rank"] for e in conv5["maps"]["3"]] == [0, 1, 2, 3]
    for e in conv5["maps"]["3"]:  # the displayed pair, its boxes and the full-size pair for a click-through
        (y0, x0, y1, x1), (r0, q0, r1, q1) = e["display_box"], e["rf_box"]
        assert e["rf_box"] == e["box"] and r0 <= y0 < y1 <= r1 and q0 <= x0 < x1 <= q1
        assert (out / e["projection_full"]).is_file() and (out / e["patch_full"]).is_file()
        assert e["contrast_scale"] > 0 and 0 < e["mass_share"] <= 1 + 1e-9
    assert conv5["rule"] == "deconvnet" and "pool" in conv5["rule_reason"] and conv5["saturated_maps"] == []
    means = np.load(out / res["data"]["class_means"])
    assert means["conv5"].shape == (12, 2) and means["conv5"].dtype == np.float32
    assert means["__counts__"].tolist() == [3, 3]
    saved = json.loads((out / "units" / "conv5" / "3.json").read_text())
    assert saved["entries"] == conv5["maps"]["3"] and saved["rule"] == "deconvnet"
    # a second run resumes: every map is found done, nothing is projected again
    stamp = (out / entry["projection"]).stat().st_mtime_ns
    assert main(argv) == 0
    assert (out / entry["projection"]).stat().st_mtime_ns == stamp
    assert main([*argv[:-2], "--k", "0", "--out", str(out)]) == 2  # bad argument: exit code 2


def test_cli_mine_rejects_unknown_layer(tmp_path, capsys):
    from convlens.cli import main

    model = build_model("zfnet-tiny", seed=0)
    from convlens.images.data import Preprocessing
    from convlens.nets.checkpoint import save_checkpoint

    save_checkpoint(tmp_path / "ck.pt", model,
                    preprocessing=Preprocessing(32, 32, torch.zeros(3, 1, 1), torch.ones(3, 1, 1)),
                    class_names=[str(i) for i in range(5)], epoch=1)
    code = main(["mine", "--checkpoint", str(tmp_path / "ck.pt"), "--dataset", str(tmp_path), "--layers", "conv9",
                 "--out", str(tmp_path / "o")])
    assert code == 2 and "conv9" in capsys.readouterr().err


class Labelled(Dataset):
    def __init__(self, x: torch.Tensor, labels: list[int]) -> None:
        self.x, self.labels = x, labels

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        return self.x[i], self.labels[i], i


def test_saturated_relu6_ranked_by_pre_clip_value_not_dataset_order():
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v2(num_classes=4).eval()
    with torch.no_grad():
        model.features[0][1].bias[:8] += 20.0  # channels 0..7 saturate ReLU6 in every image
    x = torch.randn(20, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():  # oracle: the pre-clip value (BatchNorm output) and the clipped output
        pre = model.features[0][1](model.features[0][0](x))
    labels = [i % 4 for i in range(20)]
    tops = {bs: mine_top_activations(model, DataLoader(Labelled(x, labels), batch_size=bs), ["features.0"], k=9)
            for bs in (3, 20)}
    top = tops[3]["features.0"]
    assert top.ceiling == 6.0 and top.saturated[:8].all()
    assert (top.values[:8] == 6.0).all()  # the raw ranking would be a 20-way tie at 6.0 in each of these maps
    per_image = pre.flatten(2).amax(2).t()  # (C, N)
    oracle = per_image.sort(dim=1, descending=True)
    assert torch.equal(top.dataset_indices, oracle.indices[:, :9])
    torch.testing.assert_close(top.scores, oracle.values[:, :9], rtol=0, atol=0)
    assert all(top.dataset_indices[c].tolist() != sorted(top.dataset_indices[c].tolist()) for c in range(8))
    assert torch.equal(tops[20]["features.0"].dataset_indices, top.dataset_indices)  # batch-size invariant
    relu6 = mine_top_activations(model, DataLoader(Labelled(x, labels), batch_size=8), ["features.0.2"], k=9)
    assert relu6["features.0.2"].ceiling == 6.0  # the layer is the ReLU6 module itself
    assert torch.equal(relu6["features.0.2"].dataset_indices, top.dataset_indices)
    # the model is left as it was: in-place ReLU6 restored, no hooks
    assert all(m.inplace for m in model.modules() if isinstance(m, torch.nn.ReLU6))
    assert not any(m._forward_hooks for m in model.modules())
    # class means of the per-image ranking statistic (pre-clip maximum)
    lab = torch.tensor(labels)
    want = torch.stack([per_image[:, lab == c].mean(1) for c in range(4)], 1)
    torch.testing.assert_close(top.class_means, want, rtol=1e-5, atol=1e-5)
    assert top.class_counts.tolist() == [5, 5, 5, 5] and top.labels[0, 0] == lab[top.dataset_indices[0, 0]]


def test_class_means_and_labels_survive_resume_and_merge(tiny, tmp_path):
    model, x, acts = tiny
    x = x[:24]
    labels = [(i * 7) % 5 for i in range(24)]
    full = mine_top_activations(model, DataLoader(Labelled(x, labels), batch_size=4), ["conv2"], k=5, num_classes=6)
    per_image = acts["conv2"][:24].flatten(2).amax(2).t()
    lab = torch.tensor(labels)
    want = torch.stack([per_image[:, lab == c].mean(1) for c in range(5)], 1).float()
    got = full["conv2"].class_means
    assert got.shape == (per_image.shape[0], 6) and got[:, 5].isnan().all()  # class 5 has no image
    torch.testing.assert_close(got[:, :5], want, rtol=1e-6, atol=1e-6)
    assert torch.equal(full["conv2"].labels, lab[full["conv2"].dataset_indices])
    a, b = TopKAccumulator(["conv2"], k=5), TopKAccumulator(["conv2"], k=5)
    a.update({"conv2": acts["conv2"][:10]}, torch.arange(10), lab[:10])
    b.update({"conv2": acts["conv2"][10:24]}, torch.arange(10, 24), lab[10:])
    a.merge(b)
    merged = a.result(6)["conv2"]
    torch.testing.assert_close(merged.class_means, got, rtol=1e-6, atol=1e-6, equal_nan=True)
    assert torch.equal(merged.dataset_indices, full["conv2"].dataset_indices)


def test_images_skipped_before_a_resume_are_still_named(tmp_path):
    """A run killed after a batch with an unreadable image, then resumed: the second run's report
    (its SkipLog: the warning and result.json) names the image, with the reason; counted once."""
    from convlens.images.data import collate_skip
    from convlens.images.sources import SkipLog

    ds = _folder_with_a_broken_jpeg(tmp_path, ("a", "b", "c"))
    broken = [i for i in range(len(ds)) if ds.describe(i).endswith("broken.jpg")]
    assert broken == [6]  # in the second batch of 4; the crash comes in the third

    class Crashing(torch.utils.data.Dataset):
        def __init__(self, crash: bool) -> None:
            self.crash = crash

        def __len__(self) -> int:
            return len(ds)

        def __getitem__(self, i):
            if self.crash and i == 8:
                raise RuntimeError("simulated crash")
            return ds[i]

    model = build_model("zfnet-tiny", seed=0)
    state = tmp_path / "mine.state"
    with SkipLog() as first, pytest.raises(RuntimeError, match="simulated crash"):
        mine_top_activations(model, DataLoader(Crashing(True), batch_size=4, collate_fn=collate_skip), ["conv1"],
                             k=3, state_path=state, save_every=1)
    reason = first.items[ds.describe(6)]
    with SkipLog() as second:
        tops = mine_top_activations(model, DataLoader(Crashing(False), batch_size=4, collate_fn=collate_skip),
                                    ["conv1"], k=3, state_path=state, save_every=1)
    assert second.items == {ds.describe(6): reason}
    assert tops["conv1"].num_skipped == 1 and tops["conv1"].num_images == 9


def test_rerun_with_other_weights_recomputes_every_unit(tiny, tmp_path):
    """A rerun into the same folder reused maps whenever rule and positions matched, whatever the weights."""
    import copy
    import json

    from convlens.nets.fingerprint import weights_fingerprint
    from convlens.topk.units import project_mined

    model, x, _ = tiny
    ds = Images(x[:8])
    top = mine_top_activations(model, DataLoader(ds, batch_size=8), ["conv1"], k=2)["conv1"]
    first = project_mined(model, ds, top, tmp_path, rule="deconvnet")
    c = top.values.shape[0]
    assert first.reused == 0 and len(first.entries) == c
    saved = json.loads((tmp_path / "units" / "conv1" / "0.json").read_text())
    assert saved["weights"] == weights_fingerprint(model)
    same = project_mined(copy.deepcopy(model), ds, top, tmp_path, rule="deconvnet")  # equal weights, another object
    assert same.reused == c
    scaled = copy.deepcopy(model)
    with torch.no_grad():
        scaled.conv1.weight.mul_(3)  # conv1 x3: same top positions (the old reuse test passed), other model
    assert weights_fingerprint(scaled) != weights_fingerprint(model)
    again = project_mined(scaled, ds, top, tmp_path, rule="deconvnet")
    assert again.reused == 0
    assert json.loads((tmp_path / "units" / "conv1" / "0.json").read_text())["weights"] == weights_fingerprint(scaled)
    assert project_mined(scaled, ds, top, tmp_path, rule="deconvnet").reused == c
