"""Datasets and the paper's preprocessing (Sec. 3, "Training Details").

The paper: resize the smallest side to 256, crop the center 256x256, subtract the per-pixel mean
over the training set, then use 224x224 sub-crops: random crops with horizontal flips for
training, the 10 sub-crops (4 corners + center, with and without flip) for testing. Pixels are
in the 0..255 range ("input images roughly in [-128, 128]"), which is what the filter clipping
radius of 0.1 is tuned for; we keep that scale. The same recipe is scaled for small images:
32 / 28 instead of 256 / 224.

Normalized space: ``x = (pixel_0_255 - mean) / std`` with ``std = 1`` for the paper. The value 0
is the training mean, i.e. the paper's grey occluder. ``Preprocessing.denormalize`` is the only
way back to displayable [0, 1] pixels.

Datasets yield ``(image, label, index)``. Images that cannot be read (corrupt, truncated, not an
image, over the pixel cap of :mod:`convlens.images.decode`) are counted and skipped (``collate_skip``
drops them from the batch and lists them in ``batch.skipped``), and named with the reason in every
active :class:`SkipLog` (the CLI keeps one per command: one warning, and the list in the command's
``result.json`` under ``data.skipped_images``); a corrupt file never stops a run.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset

from convlens.images.sources import (
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_DIR,
    ImageFolderSafe,
    SkipLog,
    TensorImages,
    cifar10,
    fashion_mnist,
    load_image,
    open_raw,
    resize_center_crop,
)
from convlens.io.artifacts import atomic_write

log = logging.getLogger(__name__)

__all__ = [
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_DIR",
    "Batch",
    "ImageFolderSafe",
    "Preprocessing",
    "SkipLog",
    "TensorImages",
    "TransformedDataset",
    "cifar10",
    "collate_skip",
    "compute_mean",
    "dataset_preprocessing",
    "fashion_mnist",
    "imagenet_mobilenet_preprocessing",
    "imagenet_preprocessing",
    "load_image",
    "open_dataset",
    "open_raw",
    "paper_preprocessing",
    "resize_center_crop",
    "ten_crop",
]



def ten_crop(x: torch.Tensor, crop: int) -> torch.Tensor:
    """The paper's 10 test crops of a (..., 3, S, S) tensor: 4 corners + center, then all flipped.

    Returns:
        (..., 10, 3, crop, crop)
    """
    s = x.shape[-1]
    c = (s - crop) // 2
    offsets = [(0, 0), (0, s - crop), (s - crop, 0), (s - crop, s - crop), (c, c)]
    crops = [x[..., i:i + crop, j:j + crop] for i, j in offsets]
    crops += [cr.flip(-1) for cr in crops]
    return torch.stack(crops, dim=-4)


@dataclass(frozen=True, eq=False)
class Preprocessing:
    """How raw images become network inputs, and back.

    Attributes:
        resize: the smallest side is resized to this, then the center ``resize x resize`` is cropped.
        crop: the network input size (center crop at test time, random crops when training).
        mean: (3, resize, resize) per-pixel mean or (3, 1, 1) per-channel mean, in pixel units (0..scale).
        std: (3, 1, 1) divisor in pixel units (ones for the paper's recipe).
        scale: pixel range (255: pixels are 0..255).
    """

    resize: int
    crop: int
    mean: torch.Tensor
    std: torch.Tensor
    scale: float = 255.0

    def _stat(self, t: torch.Tensor, size: tuple[int, int], like: torch.Tensor) -> torch.Tensor:
        t = t.to(device=like.device, dtype=like.dtype)
        if t.shape[-2:] == (1, 1) or t.shape[-2:] == size:
            return t
        if t.shape[-2:] == (self.resize, self.resize) and size == (self.crop, self.crop):
            o = (self.resize - self.crop) // 2
            return t[:, o:o + self.crop, o:o + self.crop]
        return F.interpolate(t[None], size=size, mode="bilinear", align_corners=False)[0]

    def normalize(self, pixels01: torch.Tensor) -> torch.Tensor:
        """(..., 3, H, W) pixels in [0, 1] -> normalized network input."""
        size = tuple(pixels01.shape[-2:])
        mean = self._stat(self.mean, size, pixels01)  # type: ignore[arg-type]
        std = self._stat(self.std, size, pixels01)  # type: ignore[arg-type]
        return (pixels01 * self.scale - mean) / std

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """Normalized (..., 3, H, W) -> displayable pixels in [0, 1]."""
        size = tuple(x.shape[-2:])
        mean = self._stat(self.mean, size, x)  # type: ignore[arg-type]
        std = self._stat(self.std, size, x)  # type: ignore[arg-type]
        return ((x * std + mean) / self.scale).clamp(0, 1)

    def base(self, img: Image.Image | torch.Tensor) -> torch.Tensor:
        """Image -> normalized (3, resize, resize) (before cropping)."""
        return self.normalize(resize_center_crop(img, self.resize))

    def center(self, img: Image.Image | torch.Tensor) -> torch.Tensor:
        """Image -> normalized center crop (3, crop, crop): the test-time input."""
        x = self.base(img)
        o = (self.resize - self.crop) // 2
        return x[:, o:o + self.crop, o:o + self.crop].contiguous()

    def load(self, path: str | Path) -> torch.Tensor:
        """Read an image file -> normalized center crop (3, crop, crop).

        Decoded under the pixel cap of :mod:`convlens.images.decode`, at a reduced size when the file is
        much larger than ``resize`` (ValueError for an unreadable or too large file)."""
        return self.center(load_image(path, target_size=self.resize))

    def to_dict(self) -> dict[str, Any]:
        return {"resize": self.resize, "crop": self.crop, "mean": self.mean.cpu(), "std": self.std.cpu(),
                "scale": self.scale}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Preprocessing:
        return cls(int(d["resize"]), int(d["crop"]), torch.as_tensor(d["mean"]).float(),
                   torch.as_tensor(d["std"]).float(), float(d.get("scale", 255.0)))


def paper_preprocessing(mean_image: torch.Tensor, *, crop: int = 224, resize: int | None = None) -> Preprocessing:
    """The paper's recipe: per-pixel mean subtraction in 0..255 units, no division."""
    resize = resize or mean_image.shape[-1]
    return Preprocessing(resize, crop, mean_image.float(), torch.ones(3, 1, 1))


def imagenet_preprocessing() -> Preprocessing:
    """torchvision's usual ImageNet normalization (Resize 256, CenterCrop 224)."""
    mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1) * 255
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1) * 255
    return Preprocessing(256, 224, mean, std)


def imagenet_mobilenet_preprocessing() -> Preprocessing:
    """The TF-slim MobileNet-v2 input: x = pixel / 127.5 - 1 (Resize 256, CenterCrop 224)."""
    half = torch.full((3, 1, 1), 127.5)
    return Preprocessing(256, 224, half, half.clone())


# ----------------------------------------------------------------------------- network-ready datasets

class Batch(tuple):
    """``(images, labels, indices)`` plus ``.skipped``: descriptions of items that could not be read."""

    skipped: list[str]


def collate_skip(items: list[tuple[torch.Tensor | None, int, int, str]]) -> Batch:
    """Collate ``(x, label, index, description)`` items, dropping unreadable ones (x is None)."""
    good = [it for it in items if it[0] is not None]
    xs = torch.stack([it[0] for it in good]) if good else torch.empty(0)  # type: ignore[misc]
    batch = Batch((xs, torch.tensor([it[1] for it in good], dtype=torch.long),
                   torch.tensor([it[2] for it in good], dtype=torch.long)))
    batch.skipped = [it[3] for it in items if it[0] is None]
    return batch


class TransformedDataset(Dataset):
    """A raw dataset through a :class:`Preprocessing`, yielding ``(x, label, index, description)``.

    Modes: ``eval`` (center crop), ``train`` (random crop + horizontal flip), ``tencrop``
    ((10, 3, crop, crop)), ``full`` (the whole ``resize x resize`` image). Use with
    :func:`collate_skip` so that unreadable images are skipped and counted.

    ``limit`` keeps N images spread evenly over the raw dataset (every len/N-th one), so that a
    class-sorted ImageFolder keeps all its classes. Indices are positions in this dataset
    (0..N-1); ``describe`` and ``raw_index`` name the underlying image.
    """

    def __init__(self, raw: Dataset, pre: Preprocessing, mode: str = "eval", limit: int | None = None) -> None:
        if mode not in ("eval", "train", "tencrop", "full"):
            raise ValueError(f"mode must be eval, train, tencrop or full, got {mode!r}")
        self.raw, self.pre, self.mode = raw, pre, mode
        total = len(raw)  # type: ignore[arg-type]
        self.n = total if limit is None else min(limit, total)
        self._picks = None if self.n == total else [i * total // self.n for i in range(self.n)]
        self.classes = list(getattr(raw, "classes", []))

    def __len__(self) -> int:
        return self.n

    def raw_index(self, index: int) -> int:
        """Position in the raw dataset of this dataset's ``index``."""
        return index if self._picks is None else self._picks[index]

    def describe(self, index: int) -> str:
        describe: Callable[[int], str] | None = getattr(self.raw, "describe", None)
        raw = self.raw_index(index)
        return describe(raw) if describe else str(raw)

    def labels(self) -> list[int]:
        picks = range(self.n) if self._picks is None else self._picks
        if hasattr(self.raw, "labels"):
            return [int(self.raw.labels[i]) for i in picks]
        return [int(self.raw.samples[i][1]) for i in picks]  # type: ignore[attr-defined]

    def __getitem__(self, index: int) -> tuple[torch.Tensor | None, int, int, str]:
        if not 0 <= index < self.n:
            raise IndexError(index)
        pixels, label = self.raw[self.raw_index(index)]
        if pixels is None:
            return None, label, index, self.describe(index)
        x = self.pre.normalize(pixels)  # (3, S, S), per-pixel mean at base resolution
        s, c = self.pre.resize, self.pre.crop
        if self.mode == "train":
            i, j = (int(v) for v in torch.randint(0, s - c + 1, (2,)))
            x = x[:, i:i + c, j:j + c]
            if torch.rand(()) < 0.5:
                x = x.flip(-1)
        elif self.mode == "eval":
            o = (s - c) // 2
            x = x[:, o:o + c, o:o + c]
        elif self.mode == "tencrop":
            x = ten_crop(x, c)
        return x.contiguous(), label, index, self.describe(index)


def compute_mean(raw: Dataset, *, limit: int | None = None, batch_size: int = 256, workers: int = 0,
                 progress: bool = False) -> torch.Tensor:
    """Per-pixel mean (3, S, S) in 0..255 units over a raw dataset (unreadable images skipped)."""
    from torch.utils.data import DataLoader, Subset

    from convlens.io.progress import progress_bar

    n = len(raw) if limit is None else min(limit, len(raw))  # type: ignore[arg-type]
    loader = DataLoader(Subset(raw, range(n)), batch_size=batch_size, num_workers=workers,
                        collate_fn=lambda items: [it[0] for it in items if it[0] is not None],
                        generator=torch.Generator().manual_seed(0))  # never draws from the global RNG
    total, count = None, 0
    for xs in progress_bar(loader, desc="mean image", unit="batch", disable=not progress):
        if not xs:
            continue
        s = torch.stack(xs).double().sum(0)
        total = s if total is None else total + s
        count += len(xs)
    if total is None:
        raise ValueError("cannot compute the mean image: the dataset has no readable images")
    return (total / count * 255.0).float()


def default_sizes(crop: int) -> tuple[int, int]:
    """(resize, crop) of the paper's recipe scaled to a network input size (224 -> 256, 28 -> 32)."""
    return round(crop * 256 / 224), crop


def dataset_preprocessing(name: str, *, crop: int, data_dir: str | Path | None = None,
                          cache: str | Path | None = None, limit: int | None = None,
                          progress: bool = False) -> Preprocessing:
    """The paper's preprocessing for a dataset: per-pixel mean of its training split.

    The mean is computed once and cached at ``cache`` (a ``.pt`` file) when given.
    """
    resize, crop = default_sizes(crop)
    if cache is not None and Path(cache).is_file():
        mean = torch.load(cache, map_location="cpu", weights_only=True)
        if tuple(mean.shape) == (3, resize, resize):
            return paper_preprocessing(mean, crop=crop, resize=resize)
    raw = open_raw(name, "train", size=resize, data_dir=data_dir)
    mean = compute_mean(raw, limit=limit, progress=progress)
    if cache is not None:
        atomic_write(cache, lambda f: torch.save(mean, f), binary=True)
    return paper_preprocessing(mean, crop=crop, resize=resize)


def open_dataset(name: str, split: str = "train", preprocessing: Preprocessing | None = None, *,
                 data_dir: str | Path | None = None, mode: str = "eval", limit: int | None = None,
                 crop: int = 224, download: bool = False) -> TransformedDataset:
    """A network-ready dataset: items ``(x, label, index, description)``; use with :func:`collate_skip`.

    Args:
        name: ``fashion-mnist``, ``cifar10`` or an ImageFolder directory.
        split: ``train`` or ``test``.
        preprocessing: default: the paper's, with the mean of this dataset's training split.
        data_dir: where the named dataset lives (fashion-mnist: Debian's folder by default).
        mode: ``eval`` | ``train`` | ``tencrop`` | ``full`` (see :class:`TransformedDataset`).
        limit: use ``limit`` images spread evenly over the split (all classes of a sorted folder).
        crop: network input size when ``preprocessing`` is None.

    Example:
        >>> ds = open_dataset("fashion-mnist", "test", crop=28, limit=100)
        >>> loader = DataLoader(ds, batch_size=32, collate_fn=collate_skip)
    """
    if split not in ("train", "test", "val"):
        raise ValueError(f"split must be 'train', 'test' or 'val', got {split!r}")
    if preprocessing is None:
        preprocessing = dataset_preprocessing(name, crop=crop, data_dir=data_dir)
    raw = open_raw(name, split, size=preprocessing.resize, data_dir=data_dir, download=download)
    return TransformedDataset(raw, preprocessing, mode, limit)
