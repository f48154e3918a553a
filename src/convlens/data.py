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

Datasets yield ``(image, label, index)``. Images that cannot be read are logged with their path,
counted and skipped (``collate_skip`` drops them from the batch and lists them in
``batch.skipped``); a corrupt file never stops a run.
"""
from __future__ import annotations

import gzip
import logging
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

log = logging.getLogger(__name__)

__all__ = [
    "Preprocessing",
    "paper_preprocessing",
    "imagenet_preprocessing",
    "imagenet_mobilenet_preprocessing",
    "load_image",
    "resize_center_crop",
    "ten_crop",
    "ImageFolderSafe",
    "TensorImages",
    "TransformedDataset",
    "Batch",
    "collate_skip",
    "fashion_mnist",
    "cifar10",
    "open_raw",
    "open_dataset",
    "compute_mean",
    "dataset_preprocessing",
    "FASHION_MNIST_DIR",
    "FASHION_MNIST_CLASSES",
]

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".gif")


# ----------------------------------------------------------------------------- preprocessing

def load_image(path: str | Path) -> Image.Image:
    """Open an image file as RGB (grayscale and palette images become 3-channel).

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is not a readable image.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise ValueError(f"cannot read image {path}: {exc}") from None


def resize_center_crop(img: Image.Image | torch.Tensor, size: int) -> torch.Tensor:
    """Resize the smallest side to ``size`` and crop the center ``size x size``: (3, size, size) in [0, 1]."""
    if isinstance(img, Image.Image):
        x = torch.from_numpy(_pil_to_numpy(img)).permute(2, 0, 1).float() / 255.0
    else:
        x = img.float()
    if x.shape[0] == 1:
        x = x.expand(3, -1, -1)
    h, w = x.shape[-2:]
    if min(h, w) != size:
        scale = size / min(h, w)
        nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
        x = F.interpolate(x[None], size=(nh, nw), mode="bilinear", align_corners=False, antialias=True)[0]
        h, w = nh, nw
    top, left = (h - size) // 2, (w - size) // 2
    return x[:, top:top + size, left:left + size].clamp(0, 1).contiguous()


def _pil_to_numpy(img: Image.Image) -> Any:
    import numpy as np

    return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()


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
        """Read an image file -> normalized center crop (3, crop, crop)."""
        return self.center(load_image(path))

    def to_dict(self) -> dict[str, Any]:
        return {"resize": self.resize, "crop": self.crop, "mean": self.mean.cpu(), "std": self.std.cpu(),
                "scale": self.scale}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Preprocessing":
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


# ----------------------------------------------------------------------------- raw datasets
# A raw dataset yields (pixels01 (3, S, S) at base resolution, or None if unreadable, label).

class ImageFolderSafe(Dataset):
    """An ImageFolder (``root/<class>/<image>``) whose unreadable files are logged and skipped.

    Items are ``(pixels01 (3, size, size), label)`` with the smallest side resized to ``size``
    and center-cropped, or ``(None, label)`` for a file that cannot be decoded.
    """

    def __init__(self, root: str | Path, size: int) -> None:
        from torchvision.datasets.folder import find_classes, make_dataset

        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"dataset directory not found: {self.root}")
        try:
            self.classes, class_to_idx = find_classes(str(self.root))
        except FileNotFoundError:
            raise ValueError(
                f"{self.root} holds no class folders; expected an ImageFolder: {self.root}/<class>/<image>.jpg"
            ) from None
        self.samples = make_dataset(str(self.root), class_to_idx, extensions=IMG_EXTENSIONS)
        self.size = size

    def __len__(self) -> int:
        return len(self.samples)

    def describe(self, index: int) -> str:
        return self.samples[index][0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor | None, int]:
        path, label = self.samples[index]
        try:
            return resize_center_crop(load_image(path), self.size), label
        except (ValueError, OSError) as exc:
            log.warning("skipping unreadable image %s (%s)", path, exc)
            return None, label


class TensorImages(Dataset):
    """In-memory uint8 images (N, H, W) or (N, 3, H, W), resized once to ``size`` (e.g. Fashion-MNIST)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, classes: Sequence[str], size: int,
                 name: str = "tensor") -> None:
        if images.dim() == 3:
            images = images[:, None]
        x = images
        if x.shape[-1] != size or x.shape[-2] != size:
            # all images share one size: resize + center-crop in chunks (same math as resize_center_crop)
            h, w = x.shape[-2:]
            scale = size / min(h, w)
            nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
            top, left = (nh - size) // 2, (nw - size) // 2
            out = []
            for chunk in x.split(4096):
                r = F.interpolate(chunk.float() / 255.0, size=(nh, nw), mode="bilinear", align_corners=False,
                                  antialias=True)[..., top:top + size, left:left + size]
                out.append((r.clamp(0, 1) * 255).round().byte())
            x = torch.cat(out)
        self.images = x  # (N, C, size, size) uint8; C is 1 or 3
        self.labels = labels.long()
        self.classes = list(classes)
        self.name = name

    def __len__(self) -> int:
        return len(self.labels)

    def describe(self, index: int) -> str:
        return f"{self.name}:{index}"

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        x = self.images[index].float() / 255.0
        return x.expand(3, -1, -1), int(self.labels[index])


def _read_idx(path: Path) -> torch.Tensor:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:  # type: ignore[operator]
        data = f.read()
    _zero, dtype, ndim = struct.unpack(">HBB", data[:4])
    if dtype != 0x08:
        raise ValueError(f"{path}: expected an unsigned-byte idx file, got type code {dtype:#x}")
    shape = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
    return torch.frombuffer(bytearray(data[4 + 4 * ndim:]), dtype=torch.uint8).reshape(shape)


def _find(root: Path, stem: str) -> Path:
    for cand in (root / f"{stem}.gz", root / stem):
        if cand.is_file():
            return cand
    raise FileNotFoundError(f"{stem}[.gz] not found in {root}")


def fashion_mnist(split: str = "train", *, size: int = 32, data_dir: str | Path | None = None,
                  download: bool = False) -> TensorImages:
    """Fashion-MNIST from Debian's ``dataset-fashion-mnist`` idx files (or ``data_dir``).

    With ``download=True`` and no local copy, torchvision's downloader fetches it into
    ``data_dir`` (the only network access, and only on request).
    """
    root = Path(data_dir) if data_dir else FASHION_MNIST_DIR
    prefix = "train" if split == "train" else "t10k"
    try:
        images = _read_idx(_find(root, f"{prefix}-images-idx3-ubyte"))
        labels = _read_idx(_find(root, f"{prefix}-labels-idx1-ubyte"))
    except FileNotFoundError:
        if not download:
            raise FileNotFoundError(
                f"Fashion-MNIST not found in {root}; install it with 'apt-get install dataset-fashion-mnist', "
                "or pass --data-dir DIR with the idx files, or --download to fetch it with torchvision"
            ) from None
        from torchvision.datasets import FashionMNIST

        ds = FashionMNIST(str(data_dir or "data"), train=split == "train", download=True)
        images, labels = ds.data, ds.targets
    return TensorImages(images, labels, FASHION_MNIST_CLASSES, size, name=f"fashion-mnist:{split}")


def cifar10(split: str = "train", *, size: int = 32, data_dir: str | Path | None = None,
            download: bool = False) -> Dataset:
    """CIFAR-10 from an ImageFolder copy (``data_dir/train``, ``data_dir/test``) or torchvision's downloader."""
    if data_dir is not None and (Path(data_dir) / split).is_dir():
        return ImageFolderSafe(Path(data_dir) / split, size)
    if not download:
        raise FileNotFoundError(
            f"CIFAR-10 not found: pass --data-dir DIR with DIR/{split}/<class>/*.jpg (an ImageFolder copy), "
            "or --download to fetch it with torchvision"
        )
    import numpy as np
    from torchvision.datasets import CIFAR10

    ds = CIFAR10(str(data_dir or "data"), train=split == "train", download=True)
    images = torch.from_numpy(np.ascontiguousarray(ds.data)).permute(0, 3, 1, 2)
    return TensorImages(images, torch.tensor(ds.targets), ds.classes, size, name=f"cifar10:{split}")


def open_raw(name: str, split: str = "train", *, size: int, data_dir: str | Path | None = None,
             download: bool = False) -> Dataset:
    """A raw dataset by name (``fashion-mnist``, ``cifar10``) or ImageFolder directory.

    A directory with ``train/`` and ``test/`` (or ``val/``) subfolders is split by them; a plain
    ImageFolder is used as is for every split.
    """
    if name == "fashion-mnist":
        return fashion_mnist(split, size=size, data_dir=data_dir, download=download)
    if name == "cifar10":
        return cifar10(split, size=size, data_dir=data_dir, download=download)
    root = Path(name)
    if not root.is_dir():
        raise ValueError(
            f"dataset must be 'fashion-mnist', 'cifar10' or an ImageFolder directory, got {name!r} "
            "(no such directory)"
        )
    for sub in ((split,) if split == "train" else (split, "test", "val")):
        if (root / sub).is_dir():
            return ImageFolderSafe(root / sub, size)
    return ImageFolderSafe(root, size)


# ----------------------------------------------------------------------------- network-ready datasets

class Batch(tuple):
    """``(images, labels, indices)`` plus ``.skipped``: descriptions of items that could not be read."""

    skipped: list[str]


def collate_skip(items: list[tuple[torch.Tensor | None, int, int, str]]) -> Batch:
    """Collate ``(x, label, index, description)`` items, dropping unreadable ones (x is None)."""
    good = [it for it in items if it[0] is not None]
    if good:
        xs = torch.stack([it[0] for it in good])  # type: ignore[misc]
    else:
        xs = torch.empty(0)
    batch = Batch((xs, torch.tensor([it[1] for it in good], dtype=torch.long),
                   torch.tensor([it[2] for it in good], dtype=torch.long)))
    batch.skipped = [it[3] for it in items if it[0] is None]
    return batch


class TransformedDataset(Dataset):
    """A raw dataset through a :class:`Preprocessing`, yielding ``(x, label, index, description)``.

    Modes: ``eval`` (center crop), ``train`` (random crop + horizontal flip), ``tencrop``
    ((10, 3, crop, crop)), ``full`` (the whole ``resize x resize`` image). Use with
    :func:`collate_skip` so that unreadable images are skipped and counted.
    """

    def __init__(self, raw: Dataset, pre: Preprocessing, mode: str = "eval", limit: int | None = None) -> None:
        if mode not in ("eval", "train", "tencrop", "full"):
            raise ValueError(f"mode must be eval, train, tencrop or full, got {mode!r}")
        self.raw, self.pre, self.mode = raw, pre, mode
        self.n = len(raw) if limit is None else min(limit, len(raw))  # type: ignore[arg-type]
        self.classes = list(getattr(raw, "classes", []))

    def __len__(self) -> int:
        return self.n

    def describe(self, index: int) -> str:
        describe: Callable[[int], str] | None = getattr(self.raw, "describe", None)
        return describe(index) if describe else str(index)

    def labels(self) -> list[int]:
        if hasattr(self.raw, "labels"):
            return [int(v) for v in self.raw.labels[: self.n]]
        return [int(s[1]) for s in self.raw.samples[: self.n]]  # type: ignore[attr-defined]

    def __getitem__(self, index: int) -> tuple[torch.Tensor | None, int, int, str]:
        if index >= self.n:
            raise IndexError(index)
        pixels, label = self.raw[index]
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
    from tqdm import tqdm

    n = len(raw) if limit is None else min(limit, len(raw))  # type: ignore[arg-type]
    loader = DataLoader(Subset(raw, range(n)), batch_size=batch_size, num_workers=workers,
                        collate_fn=lambda items: [it[0] for it in items if it[0] is not None])
    total, count = None, 0
    for xs in tqdm(loader, desc="mean image", unit="batch", disable=not progress):
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
        Path(cache).parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(str(cache) + ".tmp")
        torch.save(mean, tmp)
        tmp.replace(cache)
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
        limit: use only the first ``limit`` images.
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
