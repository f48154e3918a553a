"""Decoding uploads under the explorer's pixel cap (413 over it), downscaled early.

Uses the package's one image-decoding policy (:func:`convlens.imaging.open_image`: the pixel cap is
checked from the header before any pixel is decoded; large JPEGs are decoded at reduced size by
the decoder itself, other formats reduced right after decoding) where it is installed; a minimal
equivalent otherwise. The explorer's cap is lower than the datasets' default: an upload is one
picture shown at the model's input size, and the server decodes several at once.
"""
from __future__ import annotations

import io
import warnings

from PIL import Image

__all__ = ["MAX_UPLOAD_PIXELS", "ImageTooLarge", "decode_upload"]

MAX_UPLOAD_PIXELS = 16_000_000
"""Default cap for uploads: 16 MP (a 12 MP phone photo passes; a 6300 x 6300 bomb does not)."""

try:  # the package's decoding policy
    from ..imaging import ImageTooLarge, open_image  # type: ignore[import-not-found, unused-ignore]
except ImportError:  # pragma: no cover - until convlens.imaging exists
    open_image = None

    class ImageTooLarge(ValueError):  # type: ignore[no-redef]
        """The image has more pixels than the cap allows."""


def decode_upload(data: bytes, *, max_pixels: int = MAX_UPLOAD_PIXELS, target_size: int | None = None) -> Image.Image:
    """Decode uploaded bytes (the content decides, not the file name) into an RGB image.

    Args:
        data: the uploaded bytes.
        max_pixels: refuse images with more pixels than this (checked before decoding).
        target_size: the side the model will resize to; larger images are reduced early.

    Raises:
        ImageTooLarge: over ``max_pixels`` (a ValueError; the server answers 413).
        ValueError: empty, not an image PIL can decode, or truncated (the server answers 400).
    """
    if not data:
        raise ValueError("the upload is empty; choose an image file (PNG, JPEG, ...)")
    if open_image is not None:
        try:
            return open_image(data, max_pixels=max_pixels, target_size=target_size, name="the upload")
        except ImageTooLarge:
            raise
        except ValueError as exc:
            raise ValueError(f"{exc}; the upload is not an image that can be decoded: upload a PNG or JPEG file") from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                w, h = img.size
                if img.format == "JPEG" and target_size and min(w, h) >= 4 * target_size:
                    img.draft("RGB", (max(1, w * 2 * target_size // min(w, h)), max(1, h * 2 * target_size // min(w, h))))
                if img.size[0] * img.size[1] > max_pixels:
                    raise ImageTooLarge(f"the image is {w}x{h} pixels; at most {max_pixels / 1e6:g} megapixels "
                                        "are accepted")
                img.load()
                rgb = img.convert("RGB")
    except Image.DecompressionBombError:
        raise ImageTooLarge(f"the image has too many pixels; at most {max_pixels / 1e6:g} megapixels are accepted") from None
    except (OSError, SyntaxError, EOFError, ValueError) as exc:
        if isinstance(exc, ImageTooLarge):
            raise
        raise ValueError(f"the upload is not an image that can be decoded ({type(exc).__name__}); "
                         "upload a PNG or JPEG file") from None
    if target_size and min(rgb.size) >= 4 * target_size:
        rgb = rgb.reduce(min(rgb.size) // (2 * target_size))
    return rgb
