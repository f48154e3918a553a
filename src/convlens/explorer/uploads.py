"""Decoding uploads under the explorer's pixel cap (413 over it), downscaled early.

Uses the package's one image-decoding policy (:func:`convlens.images.decode.open_image`: the pixel cap is
checked from the header before any pixel is decoded; large JPEGs are decoded at reduced size by
the decoder itself, other formats reduced right after decoding). The explorer's cap is lower than
the datasets' default: an upload is one picture shown at the model's input size, and the server
decodes several at once.
"""
from __future__ import annotations

from PIL import Image

from convlens.images.decode import ImageTooLarge, open_image

__all__ = ["MAX_UPLOAD_PIXELS", "ImageTooLarge", "decode_upload"]

MAX_UPLOAD_PIXELS = 16_000_000
"""Default cap for uploads: 16 MP (a 12 MP phone photo passes; a 6300 x 6300 bomb does not)."""


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
    try:
        return open_image(data, max_pixels=max_pixels, target_size=target_size, name="the upload")
    except ImageTooLarge as exc:
        text = str(exc).split(" (set ")[0]  # the server's cap is its --max-pixels flag, not the environment
        raise ImageTooLarge(f"{text}; upload a smaller image (the server's --max-pixels sets the limit)") from None
    except ValueError as exc:
        raise ValueError(f"the upload is not an image that can be decoded ({exc}); upload a PNG or JPEG file") from None
