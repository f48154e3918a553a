"""The image parameterization of Olah et al. 2017 (Lucid / Lucent's default ``image()``).

An image is not optimized pixel by pixel: its pixels come from

1. a **Fourier spectrum** (real and imaginary parts, drawn N(0, 0.01^2)) scaled by ``1/f`` (``f``
   the spatial frequency, floored at ``1/max(H, W)``), turned into a (3, H, W) image by the
   orthonormal inverse real FFT and divided by 4 (Lucid's "magic" constant);
2. **decorrelated colour**: the three channels are mixed by the square root of ImageNet's colour
   covariance (Lucid's ``color_correlation_svd_sqrt``, columns scaled so the largest has norm 1);
3. a **sigmoid**, so every pixel lies in (0, 1).

Optimizing in this space damps the high frequencies that a pixel-space optimization fills with
adversarial noise, and lets colours move together as they do in natural images.
"""
from __future__ import annotations

import torch

__all__ = ["COLOR_CORRELATION_SVD_SQRT", "color_matrix", "decorrelate_color", "fourier_image", "freq_scale",
           "init_spectrum", "rfft2_freqs", "to_rgb"]

# Lucid's lucid/optvis/param/color.py (the same numbers in Lucent): the square root of ImageNet's
# RGB covariance, from its SVD
COLOR_CORRELATION_SVD_SQRT = ((0.26, 0.09, 0.02),
                              (0.27, 0.00, -0.05),
                              (0.27, -0.09, 0.03))
SPECTRUM_SD = 0.01  # Lucid's initial spectrum standard deviation
MAGIC = 4.0  # Lucid divides the inverse FFT by 4 "to roughly normalize"


def color_matrix(dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> torch.Tensor:
    """(3, 3) colour mixing matrix: Lucid's svd-sqrt matrix over its largest column norm."""
    m = torch.tensor(COLOR_CORRELATION_SVD_SQRT, dtype=torch.float64)
    m = m / m.norm(dim=0).max()
    return m.to(dtype=dtype, device=device)


def decorrelate_color(x: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) decorrelated channels -> correlated (RGB) channels: each pixel ``p -> M p``."""
    m = color_matrix(x.dtype, x.device)
    return torch.einsum("ij,njhw->nihw", m, x)


def rfft2_freqs(h: int, w: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(H, W // 2 + 1 (+1 for odd W)) spatial frequency magnitude of each rfft2 coefficient (Lucid's
    ``rfft2d_freqs``)."""
    fy = torch.fft.fftfreq(h, dtype=torch.float64)[:, None]
    fx = torch.fft.fftfreq(w, dtype=torch.float64)[: w // 2 + (2 if w % 2 else 1)]
    return (fx * fx + fy * fy).sqrt().to(dtype)


def freq_scale(h: int, w: int, decay_power: float = 1.0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(H, W') ``1 / max(f, 1/max(H, W)) ** decay_power``: the 1/f spectrum of natural images."""
    f = rfft2_freqs(h, w, torch.float64)
    return (1.0 / f.clamp_min(1.0 / max(h, w)) ** decay_power).to(dtype)


def init_spectrum(n: int, size: int, generator: torch.Generator, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(n, 3, S, W', 2) initial spectra (real, imaginary), N(0, 0.01^2), drawn on the CPU from
    ``generator`` (so a unit's start does not depend on the device or on the other units)."""
    shape = (n, 3, *rfft2_freqs(size, size).shape, 2)
    return torch.randn(shape, generator=generator, dtype=torch.float64).mul_(SPECTRUM_SD).to(dtype)


def fourier_image(spectrum: torch.Tensor, size: int) -> torch.Tensor:
    """(N, 3, S, W', 2) spectrum -> (N, 3, S, S) decorrelated image: ``irfft2(scale * spectrum) / 4``."""
    scale = freq_scale(size, size, dtype=spectrum.dtype).to(spectrum.device)[..., None]
    z = torch.view_as_complex((scale * spectrum).contiguous())
    img = torch.fft.irfft2(z, s=(size, size), norm="ortho")
    return img / MAGIC


def to_rgb(spectrum: torch.Tensor, size: int) -> torch.Tensor:
    """(N, 3, S, W', 2) spectrum -> (N, 3, S, S) pixels in (0, 1): Fourier image, colour, sigmoid."""
    return torch.sigmoid(decorrelate_color(fourier_image(spectrum, size)))
