"""Tests for convlens.io.viz: contrast normalization, grids, colormaps, overlays."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from convlens.io.viz import (
    colorize,
    crop_box,
    make_grid,
    normalize_for_display,
    overlay_heatmap,
    to_uint8,
    upscale_nearest,
)


def test_normalize_for_display_per_image():
    t = torch.stack([torch.linspace(-3, 1, 48).reshape(3, 4, 4), torch.full((3, 4, 4), 7.0)])
    out = normalize_for_display(t[None])  # (1, 2, 3, 4, 4)
    assert out.shape == (1, 2, 3, 4, 4)
    a = out[0, 0]
    centered = t[0] - t[0].mean()
    torch.testing.assert_close(a, centered / centered.abs().max() * 0.5 + 0.5)
    assert float(a.min()) == pytest.approx(0.0) or float(a.max()) == pytest.approx(1.0)
    torch.testing.assert_close(out[0, 1], torch.full((3, 4, 4), 0.5))  # constant -> grey


def test_make_grid_layout():
    imgs = torch.zeros(5, 3, 4, 6)
    for i in range(5):
        imgs[i] = i / 10
    g = make_grid(imgs, nrow=3, pad=2, pad_value=1.0)
    assert g.shape == (3, 2 * 6 + 2, 3 * 8 + 2)
    assert float(g[0, 0, 0]) == 1.0
    assert float(g[0, 2, 2]) == 0.0
    assert float(g[0, 8, 2 + 8]) == pytest.approx(0.4)  # image 4: row 1, col 1
    assert float(g[0, 8, 2 + 16]) == 1.0  # empty slot is padding


def test_colorize_and_overlay():
    heat = torch.tensor([[0.0, 1.0], [0.5, 0.25]])
    c = colorize(heat)
    assert c.shape == (3, 2, 2) and float(c.min()) >= 0 and float(c.max()) <= 1
    assert float(c[2, 0, 0]) > float(c[0, 0, 0])  # jet: low = blue
    assert float(c[0, 0, 1]) > float(c[2, 0, 1])  # high = red
    img = torch.rand(3, 8, 8)
    o = overlay_heatmap(img, heat, alpha=0.0)
    torch.testing.assert_close(o, img)
    assert overlay_heatmap(img, heat, alpha=0.5).shape == (3, 8, 8)
    with pytest.raises(ValueError, match="alpha"):
        overlay_heatmap(img, heat, alpha=2.0)


def test_upscale_crop_uint8():
    img = torch.arange(4.0).reshape(1, 2, 2) / 3
    up = upscale_nearest(img, 3)
    assert up.shape == (1, 6, 6) and float(up[0, 5, 5]) == 1.0 and float(up[0, 2, 2]) == 0.0
    assert crop_box(up, (1, 2, 4, 6)).shape == (1, 3, 4)
    u = to_uint8(torch.rand(3, 5, 7) * 2 - 0.5)
    assert u.dtype == np.uint8 and u.shape == (5, 7, 3)
    with pytest.raises(ValueError):
        upscale_nearest(img, 0)
