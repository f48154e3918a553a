from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from conftest import make_image_folder
from convlens.images.data import (
    FASHION_MNIST_DIR,
    ImageFolderSafe,
    Preprocessing,
    SkipLog,
    collate_skip,
    compute_mean,
    dataset_preprocessing,
    open_dataset,
    paper_preprocessing,
    resize_center_crop,
    ten_crop,
)


def test_resize_center_crop_smallest_side():
    img = Image.fromarray(np.zeros((40, 80, 3), dtype=np.uint8))
    assert resize_center_crop(img, 32).shape == (3, 32, 32)
    gray = Image.fromarray(np.full((10, 10), 255, dtype=np.uint8))
    x = resize_center_crop(gray.convert("RGB"), 10)
    assert x.shape == (3, 10, 10) and torch.all(x == 1)


def test_ten_crop_corners_center_and_flips():
    x = torch.arange(3 * 6 * 6, dtype=torch.float).view(3, 6, 6)
    crops = ten_crop(x, 4)
    assert crops.shape == (10, 3, 4, 4)
    torch.testing.assert_close(crops[0], x[:, :4, :4])
    torch.testing.assert_close(crops[3], x[:, 2:, 2:])
    torch.testing.assert_close(crops[4], x[:, 1:5, 1:5])
    torch.testing.assert_close(crops[5], x[:, :4, :4].flip(-1))


def test_normalize_roundtrip_and_mean_is_zero():
    mean = torch.rand(3, 8, 8) * 255
    pre = paper_preprocessing(mean, crop=6, resize=8)
    pix = mean[None] / 255
    assert pre.normalize(pix).abs().max() < 1e-4  # the mean image maps to 0 (the paper's grey)
    x = torch.rand(2, 3, 6, 6)
    torch.testing.assert_close(pre.denormalize(pre.normalize(x)), x)
    back = Preprocessing.from_dict(pre.to_dict())
    torch.testing.assert_close(back.mean, pre.mean)


def test_per_pixel_mean_matches_numpy(tmp_path):
    root = make_image_folder(tmp_path / "d", per_class=3, size=16)
    raw = ImageFolderSafe(root, 16)
    mean = compute_mean(raw, batch_size=4)
    ref = np.mean([np.asarray(Image.open(p[0]).convert("RGB").resize((16, 16), Image.BILINEAR), dtype=np.float64)
                   for p in raw.samples], axis=0)
    # resize_center_crop of 16x20 -> 16x16 crop; compare a pixel-wise mean of the same crops instead
    crops = torch.stack([resize_center_crop(Image.open(p[0]).convert("RGB"), 16) for p, _ in
                         [(s, 0) for s in raw.samples]])
    torch.testing.assert_close(mean, (crops.double().mean(0) * 255).float())
    assert ref.shape == (16, 16, 3)


def test_corrupt_image_is_skipped_and_counted(tmp_path, caplog):
    root = make_image_folder(tmp_path / "d", per_class=3, size=16, corrupt=2)
    pre = dataset_preprocessing(str(root), crop=12)
    ds = open_dataset(str(root), "train", pre)
    assert len(ds) == 8
    skipped, seen = [], 0
    with SkipLog() as skips:
        for batch in DataLoader(ds, batch_size=3, collate_fn=collate_skip):
            x, _y, _idx = batch
            seen += len(x)
            skipped += batch.skipped
    assert seen == 6 and len(skipped) == 2
    assert all("zz_corrupt" in s for s in skipped)
    assert sorted(skips.items) == sorted(skipped) and all(skips.items.values())  # named, with a reason
    assert "skipped 2 unreadable image(s) (zz_corrupt" in skips.summary()


def test_modes_shapes_and_cache(tmp_path):
    root = make_image_folder(tmp_path / "d", per_class=2, size=20)
    cache = tmp_path / "mean.pt"
    pre = dataset_preprocessing(str(root), crop=16, cache=cache)
    assert cache.is_file() and pre.resize == 18
    again = dataset_preprocessing(str(root), crop=16, cache=cache)
    torch.testing.assert_close(again.mean, pre.mean)
    for mode, shape in [("eval", (3, 16, 16)), ("train", (3, 16, 16)), ("tencrop", (10, 3, 16, 16)),
                        ("full", (3, 18, 18))]:
        x, _label, index, desc = open_dataset(str(root), "train", pre, mode=mode)[1]
        assert x.shape == shape and index == 1 and desc.endswith(".png")
    with pytest.raises(ValueError, match="mode must be"):
        open_dataset(str(root), "train", pre, mode="bogus")


def test_unknown_dataset_errors(tmp_path):
    with pytest.raises(ValueError, match="dataset must be 'fashion-mnist', 'cifar10' or an ImageFolder"):
        open_dataset(str(tmp_path / "nope"), "train", paper_preprocessing(torch.zeros(3, 8, 8), crop=8))
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        open_dataset("fashion-mnist", "train", paper_preprocessing(torch.zeros(3, 32, 32), crop=28),
                     data_dir=tmp_path)


@pytest.mark.skipif(not FASHION_MNIST_DIR.exists(), reason="dataset-fashion-mnist not installed")
def test_fashion_mnist_from_debian():
    pre = paper_preprocessing(torch.full((3, 32, 32), 72.8), crop=28)
    ds = open_dataset("fashion-mnist", "test", pre, limit=5)
    x, y, _i, d = ds[0]
    assert x.shape == (3, 28, 28) and y == 9 and d == "fashion-mnist:test:0"
    assert torch.equal(x[0], x[1])  # grayscale replicated to 3 channels


def test_checkpoint_roundtrip(tiny_checkpoint):
    from convlens.nets.checkpoint import load_checkpoint
    from convlens.nets.loading import load_model

    loaded = load_model(tiny_checkpoint)
    assert loaded.arch == "zfnet-tiny" and loaded.class_names == ["a", "b"] and not loaded.model.training
    assert load_checkpoint(tiny_checkpoint)["epoch"] == 1
    assert not list(Path(tiny_checkpoint).parent.glob("*.tmp"))


def test_checkpoint_errors(tmp_path):
    from convlens.nets.loading import load_model

    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        load_model(tmp_path / "missing.pt")
    torch.save({"x": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a convlens checkpoint"):
        load_model(tmp_path / "other.pt")
    with pytest.raises(ValueError, match="unknown torchvision architecture"):
        load_model("torchvision:not_a_net")


def test_limit_spreads_over_classes(tmp_path):
    root = make_image_folder(tmp_path / "d", classes=("a", "b", "c"), per_class=4, size=12)
    pre = paper_preprocessing(torch.zeros(3, 12, 12), crop=12)
    ds = open_dataset(str(root), "train", pre, limit=3)
    assert len(ds) == 3 and sorted(ds.labels()) == [0, 1, 2]
    assert [ds[i][1] for i in range(3)] == ds.labels()
    assert [ds[i][2] for i in range(3)] == [0, 1, 2]
    assert "/b/" in ds.describe(1)
    with pytest.raises(IndexError):
        ds[3]


def test_tf_same_padding_matches_explicit_pad():
    from convlens.core.padding import use_tf_same_padding

    conv = torch.nn.Conv2d(2, 3, 3, stride=2, padding=1)
    x = torch.randn(1, 2, 8, 8)
    ref = torch.nn.functional.conv2d(torch.nn.functional.pad(x, (0, 1, 0, 1)), conv.weight, conv.bias, stride=2)
    net = use_tf_same_padding(torch.nn.Sequential(conv))
    torch.testing.assert_close(net(x), ref)


@pytest.mark.skipif(not (Path(__file__).resolve().parents[3] / "shared" / "data" / "models").exists(),
                    reason="../shared/data/models is not present")
def test_mobilenet_sidecar_preprocessing_classes_and_padding():
    from convlens.nets.loading import load_model

    folder = Path(__file__).resolve().parents[3] / "shared" / "data" / "models" / "mobilenet_v2_imagenet"
    loaded = load_model("torchvision:mobilenet_v2", weights=folder / "mobilenet_v2_imagenet.pt")
    assert loaded.class_names[1] == "goldfish" and loaded.preprocessing.mean.flatten().tolist() == [127.5] * 3
    assert loaded.model.features[0][0].padding == (0, 0) and loaded.model.features[0][0]._forward_pre_hooks
    img = Path(__file__).resolve().parents[3] / "shared" / "data" / "imagenet-sample" / "n01443537"
    x = loaded.preprocessing.load(next(img.iterdir()))[None]
    with torch.no_grad():
        assert loaded.model(x).argmax().item() == 1
