"""One image-decoding policy for datasets and uploads.

:func:`open_image` reads a file path or raw bytes and returns an RGB ``PIL.Image``:

- **a pixel cap** (``max_pixels``, default :data:`DEFAULT_MAX_PIXELS` or the ``CONVLENS_MAX_PIXELS``
  environment variable), checked from the header before any pixel is decoded (``Image.open`` is
  lazy), so that a small compressed file cannot expand into gigabytes (a "decompression bomb");
- **reduced decoding**: with a small ``target_size`` (the side the caller will resize to), a large
  JPEG is decoded at 1/2, 1/4 or 1/8 scale by the decoder itself (``draft``), which also lets a JPEG
  over the cap through when its reduced size is under it; other formats over the cap are refused,
  and under it are reduced with ``Image.reduce`` before the caller sees them;
- **orientation**: the EXIF orientation tag is applied (a photo taken with the camera turned is
  returned upright, as viewers show it), for every caller: CLI images, datasets and uploads;
- **modes**: CMYK, 16-bit and float grayscale (scaled by their range, not clipped), palette (with
  transparency), LA/RGBA (alpha dropped) all become 8-bit RGB.

Errors are ``ValueError`` subclasses naming the source: :class:`ImageTooLarge` over the cap,
:class:`UnreadableImage` for anything that is not a decodable image (truncated, empty, not an
image). A missing path raises ``FileNotFoundError``.
"""
from __future__ import annotations

import io
import os
import threading
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

__all__ = ["DEFAULT_MAX_PIXELS", "ImageTooLarge", "UnreadableImage", "default_max_pixels", "open_image"]

DEFAULT_MAX_PIXELS = 64_000_000
"""Default pixel cap (64 MP: over any camera photo, under a 12000 x 12000 bomb; decoded RGB <= 192 MB)."""

_ENV = "CONVLENS_MAX_PIXELS"
_WARNINGS_LOCK = threading.Lock()  # warnings.catch_warnings swaps process-wide state: one thread at a time
_REDUCE_FROM = 4  # reduce only when the short side is at least this many times the target
_KEEP = 2  # ... and keep the reduced short side at least this many times the target


class ImageTooLarge(ValueError):
    """The image has more pixels than the cap allows."""


class UnreadableImage(ValueError):
    """The data is not a decodable image (truncated, empty, unknown format)."""


def default_max_pixels() -> int:
    """The pixel cap: ``CONVLENS_MAX_PIXELS`` when set (an integer > 0), else :data:`DEFAULT_MAX_PIXELS`."""
    value = os.environ.get(_ENV)
    if not value:
        return DEFAULT_MAX_PIXELS
    try:
        cap = int(float(value))
    except ValueError:
        raise ValueError(f"{_ENV} must be a number of pixels like 64000000, got {value!r}") from None
    if cap <= 0:
        raise ValueError(f"{_ENV} must be > 0, got {value!r}")
    return cap


def open_image(source: str | Path | bytes | bytearray | memoryview, *, max_pixels: int | None = None,
               target_size: int | None = None, name: str | None = None) -> Image.Image:
    """Decode an image file or bytes into an 8-bit RGB ``PIL.Image`` under a pixel cap.

    Args:
        source: a file path, or the encoded bytes (an upload).
        max_pixels: refuse images with more pixels (width x height) than this; default
            :func:`default_max_pixels`.
        target_size: the short side the caller will resize to. When the image is at least 4x larger,
            it is decoded (JPEG) or reduced (others) to a short side of at least twice this, which
            keeps the final antialiased resize nearly unchanged and the memory small. None: full size.
        name: how to call the source in error messages (default: "image PATH", or "the image data").

    Returns:
        An RGB image (loaded; no file handle left open).

    Raises:
        FileNotFoundError: ``source`` is a path that does not exist.
        ImageTooLarge: more pixels than ``max_pixels`` (a ValueError).
        UnreadableImage: not a decodable image: empty, truncated, unknown format (a ValueError).
    """
    cap = default_max_pixels() if max_pixels is None else int(max_pixels)
    if cap <= 0:
        raise ValueError(f"max_pixels must be > 0, got {max_pixels}")
    if target_size is not None and target_size <= 0:
        raise ValueError(f"target_size must be > 0 or None, got {target_size}")
    if isinstance(source, (bytes, bytearray, memoryview)):
        label = name or "the image data"
        fp: io.BytesIO | Path = io.BytesIO(bytes(source))
        if not len(source):
            raise UnreadableImage(f"cannot read {label}: it is empty (0 bytes)")
    else:
        path = Path(source)
        label = name or f"image {path}"
        if not path.exists():
            raise FileNotFoundError(f"image not found: {path}")
        if not path.is_file():
            raise UnreadableImage(f"cannot read {label}: not a regular file")
        if path.stat().st_size == 0:
            raise UnreadableImage(f"cannot read {label}: the file is empty (0 bytes)")
        fp = path
    try:
        with _WARNINGS_LOCK, warnings.catch_warnings():  # our cap replaces PIL's warning (header only here)
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(fp)
        with img:
            return _decode(img, cap, target_size, label)
    except Image.DecompressionBombError as exc:  # over PIL's own hard limit (checked in Image.open)
        raise ImageTooLarge(f"{label} is too large to decode safely ({_bomb_size(exc)}); "
                            f"the limit is {cap:,} pixels (set {_ENV} to change it)") from None
    except (UnidentifiedImageError, OSError, SyntaxError, EOFError, ValueError, MemoryError) as exc:
        if isinstance(exc, (ImageTooLarge, UnreadableImage)):
            raise
        raise UnreadableImage(f"cannot read {label}: {_clean(exc)}") from None


def _decode(img: Image.Image, cap: int, target: int | None, label: str) -> Image.Image:
    w, h = img.size
    if w <= 0 or h <= 0:
        raise UnreadableImage(f"cannot read {label}: it has no pixels ({w}x{h})")
    reduce_to = _reduced_short_side(min(w, h), target)
    if img.format in ("JPEG", "MPO") and reduce_to is not None:
        # the decoder scales by 1/2, 1/4 or 1/8 (never below the requested size); over the cap, a
        # JPEG passes when its reduced size is under it
        ratio = min(reduce_to / min(w, h), (cap / (w * h)) ** 0.5)
        img.draft(None, (max(1, int(w * ratio)), max(1, int(h * ratio))))
    dw, dh = img.size  # after draft: the size that will be decoded
    if dw * dh > cap:
        raise ImageTooLarge(f"{label} is {w}x{h} = {w * h:,} pixels, over the limit of {cap:,} "
                            f"(set {_ENV} to change it)")
    img.load()
    turn = _ORIENTATION.get(_orientation(img))
    rgb = _to_rgb(img)
    reduce_to = _reduced_short_side(min(rgb.size), target)
    if reduce_to is not None:
        factor = min(rgb.size) // reduce_to
        if factor >= 2:
            rgb = rgb.reduce(factor)
    return rgb if turn is None else rgb.transpose(turn)


# EXIF orientation tag -> the transpose that shows the image upright (as ImageOps.exif_transpose)
_ORIENTATION = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
                4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270,
                7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_90}


def _orientation(img: Image.Image) -> int:
    """The EXIF orientation tag (1 = upright; 1 too when absent or unreadable)."""
    try:
        return int(img.getexif().get(0x0112, 1))
    except Exception:  # a damaged EXIF block must not make the pixels unreadable
        return 1


def _reduced_short_side(short: int, target: int | None) -> int | None:
    if target is None or short < _REDUCE_FROM * target:
        return None
    return _KEEP * target


def _to_rgb(img: Image.Image) -> Image.Image:
    mode = img.mode
    if mode == "RGB":
        return img.copy() if img.readonly else img
    if mode in ("I", "I;16", "I;16L", "I;16B", "I;16N", "F"):
        arr = np.asarray(img, dtype=np.float64)
        if mode == "F":
            top = 1.0 if arr.size and float(np.nanmax(arr)) <= 1.0 else 255.0
        else:
            top = 65535.0 if mode.startswith("I;16") or (arr.size and arr.max() > 255) else 255.0
        arr = np.nan_to_num(arr / top * 255.0, nan=0.0).clip(0, 255).round().astype(np.uint8)
        return Image.fromarray(arr, "L").convert("RGB")
    if mode in ("P", "PA"):
        img = img.convert("RGBA")  # palette transparency resolved first (no PIL warning)
    return img.convert("RGB")


def _bomb_size(exc: BaseException) -> str:
    text = str(exc)
    return text.split("(")[1].split(")")[0] if "(" in text and ")" in text else "too many pixels"


def _clean(exc: BaseException) -> str:
    """PIL's message without object reprs like ``<_io.BytesIO object at 0x...>``."""
    if isinstance(exc, UnidentifiedImageError):
        return "not an image in a known format"
    text = str(exc) or type(exc).__name__
    if "<_io." in text or " object at 0x" in text:
        return type(exc).__name__
    return text
