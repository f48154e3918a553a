"""Raw image sources: ImageFolder directories (unreadable files logged and skipped),
Fashion-MNIST idx files (Debian's ``dataset-fashion-mnist``), CIFAR-10; image decoding and the
paper's "resize the smallest side, crop the center" step.

A raw source yields ``(pixels01 (3, S, S) at base resolution, or None if unreadable, label)``;
:mod:`convlens.images.data` turns it into network inputs.
"""
from __future__ import annotations

import contextlib
import gzip
import json
import logging
import os
import struct
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset

from convlens.images.decode import open_image

log = logging.getLogger("convlens.images.data")

__all__ = [
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_DIR",
    "IMG_EXTENSIONS",
    "ImageFolderSafe",
    "SkipLog",
    "TensorImages",
    "cifar10",
    "fashion_mnist",
    "load_image",
    "note_skipped",
    "open_raw",
    "resize_center_crop",
]

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".gif")


class SkipLog:
    """Collects the images skipped while it is active (``with SkipLog() as skips:``): unreadable
    files and files over the pixel cap, each with the reason, for one warning and ``result.json``.

    Sources report through :func:`note_skipped`, in whichever process decodes: DataLoader worker
    processes append to a spool file named by the ``CONVLENS_SKIP_SPOOL`` environment variable,
    which the log sets while it is active (and reads back in :attr:`items`).
    """

    def __init__(self) -> None:
        self._items: dict[str, str] = {}
        self._lock = threading.Lock()
        self._spool: Path | None = None
        self._previous: str | None = None
        self._pid = os.getpid()

    def add(self, description: str, reason: str) -> None:
        with self._lock:
            self._items.setdefault(str(description), reason)

    @property
    def items(self) -> dict[str, str]:
        """``{image: reason}`` of every image skipped so far, in this process or its workers."""
        if self._spool is not None and self._spool.is_file():
            for line in self._spool.read_text(errors="replace").splitlines():
                with contextlib.suppress(ValueError, TypeError, KeyError):
                    entry = json.loads(line)
                    self.add(entry["image"], entry["reason"])
        with self._lock:
            return dict(self._items)

    def __len__(self) -> int:
        return len(self.items)

    def __enter__(self) -> SkipLog:
        fd, name = tempfile.mkstemp(prefix="convlens-skipped-", suffix=".jsonl")
        os.close(fd)
        self._spool = Path(name)
        self._pid = os.getpid()
        self._previous = os.environ.get(_SPOOL_ENV)
        os.environ[_SPOOL_ENV] = name
        with _ACTIVE_LOCK:
            _ACTIVE.append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        with _ACTIVE_LOCK:
            if self in _ACTIVE:
                _ACTIVE.remove(self)
        if self._spool is not None:
            self.items  # noqa: B018 (read the workers' entries before the spool goes)
            self._spool.unlink(missing_ok=True)
            self._spool = None
        if self._previous is None:
            os.environ.pop(_SPOOL_ENV, None)
        else:
            os.environ[_SPOOL_ENV] = self._previous

    def to_json(self) -> list[dict[str, str]]:
        """``[{"image": path, "reason": why}, ...]`` sorted by path."""
        return [{"image": k, "reason": v} for k, v in sorted(self.items.items())]

    def summary(self, shown: int = 5) -> str:
        """One line: how many images were skipped and the first few names with their reasons."""
        items = sorted(self.items.items())
        names = "; ".join(f"{Path(k).name}: {v}" for k, v in items[:shown])
        more = f"; and {len(items) - shown} more" if len(items) > shown else ""
        return f"skipped {len(items)} unreadable image(s) ({names}{more})"


_SPOOL_ENV = "CONVLENS_SKIP_SPOOL"
_ACTIVE: list[SkipLog] = []
_ACTIVE_LOCK = threading.Lock()


def skip_reason(description: str) -> str:
    """Why ``description`` was skipped, as recorded by an active :class:`SkipLog` ("unreadable" if none)."""
    with _ACTIVE_LOCK:
        active = [s for s in _ACTIVE if s._pid == os.getpid()]
    for skips in active:
        reason = skips.items.get(description)
        if reason is not None:
            return reason
    return "unreadable"


def note_skipped(description: str, exc: BaseException | str) -> None:
    """Record a skipped image in the active :class:`SkipLog` (in this process, or through the spool
    file from a worker process) and at debug level in the log."""
    reason = str(exc)
    for prefix in (f"cannot read image {description}: ", f"image {description} "):
        if reason.startswith(prefix):
            reason = reason[len(prefix):]
            break
    log.debug("skipping unreadable image %s (%s)", description, reason)
    with _ACTIVE_LOCK:  # (a forked worker inherits copies of the parent's logs: not these)
        active = [s for s in _ACTIVE if s._pid == os.getpid()]
    for skips in active:
        skips.add(str(description), reason)
    spool = os.environ.get(_SPOOL_ENV)
    if spool and not active:  # a worker process: append one line (O_APPEND writes of a line do not interleave)
        with contextlib.suppress(OSError):
            fd = os.open(spool, os.O_WRONLY | os.O_APPEND)
            try:
                os.write(fd, (json.dumps({"image": str(description), "reason": reason}) + "\n").encode())
            finally:
                os.close(fd)


def load_image(path: str | Path, *, max_pixels: int | None = None, target_size: int | None = None) -> Image.Image:
    """Open an image file as RGB (grayscale, palette, CMYK, 16-bit images become 8-bit 3-channel).

    The decoding policy of :func:`convlens.images.decode.open_image`: a pixel cap checked before decoding
    (``max_pixels``), large images decoded at a reduced size when ``target_size`` is small.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is not a readable image, or is over the pixel cap
            (:class:`convlens.images.decode.ImageTooLarge`).
    """
    return open_image(path, max_pixels=max_pixels, target_size=target_size)


def resize_center_crop(img: Image.Image | torch.Tensor, size: int) -> torch.Tensor:
    """Resize the smallest side to ``size`` and crop the center ``size x size``: (3, size, size) in [0, 1].

    The work is bounded by the output, not the input: an image longer than :data:`MAX_ASPECT` times
    its short side is first cropped to its center ``short x MAX_ASPECT * short`` (before any pixel is
    converted or resampled), so a 200000 x 1 strip costs what a 4 x 1 one does. Images up to that
    aspect ratio are resized whole, exactly as before (the dropped part lies outside the crop anyway).
    """
    if isinstance(img, Image.Image):
        w, h = img.size
        left, top, cw, ch = _aspect_box(h, w)
        if (cw, ch) != (w, h):
            img = img.crop((left, top, left + cw, top + ch))
        x = torch.from_numpy(_pil_to_numpy(img)).permute(2, 0, 1).float() / 255.0
    else:
        left, top, cw, ch = _aspect_box(*img.shape[-2:])
        x = img[..., top:top + ch, left:left + cw].float()
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


MAX_ASPECT = 4
"""Longest side kept by :func:`resize_center_crop` before resizing, in short sides (center crop beyond it)."""


def _aspect_box(h: int, w: int) -> tuple[int, int, int, int]:
    """(left, top, width, height) of the center of an h x w image at most MAX_ASPECT x its short side long."""
    keep = MAX_ASPECT * min(h, w)
    cw, ch = min(w, keep), min(h, keep)
    return (w - cw) // 2, (h - ch) // 2, cw, ch


def _pil_to_numpy(img: Image.Image) -> Any:
    import numpy as np

    return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()


class ImageFolderSafe(Dataset):
    """An ImageFolder (``root/<class>/<image>``) whose unreadable files are logged and skipped.

    Items are ``(pixels01 (3, size, size), label)`` with the smallest side resized to ``size``
    and center-cropped, or ``(None, label)`` for a file that cannot be decoded.
    """

    def __init__(self, root: str | Path, size: int, *, max_pixels: int | None = None) -> None:
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
        self.max_pixels = max_pixels

    def __len__(self) -> int:
        return len(self.samples)

    def describe(self, index: int) -> str:
        return self.samples[index][0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor | None, int]:
        path, label = self.samples[index]
        try:
            img = open_image(path, max_pixels=self.max_pixels, target_size=self.size)
            return resize_center_crop(img, self.size), label
        except (ValueError, OSError) as exc:  # unreadable, over the pixel cap, vanished
            note_skipped(path, exc)
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


