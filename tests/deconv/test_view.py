"""The one presentation of a projection (projview): mass box, display box, contrast, resampling."""
from __future__ import annotations

import itertools

import pytest
import torch

from convlens.deconv.view import CONTRAST, contrast_scale, display_box, mass_box, present, resample


def _brute_min_area(mass: torch.Tensor, share: float) -> int:
    h, w = mass.shape
    total = float(mass.sum())
    best = h * w
    for y0, y1 in itertools.combinations(range(h + 1), 2):
        for x0, x1 in itertools.combinations(range(w + 1), 2):
            if (y1 - y0) * (x1 - x0) < best and float(mass[y0:y1, x0:x1].sum()) >= share * total * (1 - 1e-12):
                best = (y1 - y0) * (x1 - x0)
    return best


@pytest.mark.parametrize("seed", range(6))
def test_mass_box_holds_share_and_is_minimal(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    h, w = 7, 9
    proj = torch.randn(3, h, w, generator=g, dtype=torch.float64) * (torch.rand(1, h, w, generator=g) > 0.6)
    mass = proj.abs().sum(0)
    assert float(mass.sum()) > 0  # a live map
    for share in (0.5, 0.8, 0.95):
        y0, x0, y1, x1 = mass_box(proj, share=share)
        assert float(mass[y0:y1, x0:x1].sum()) >= share * float(mass.sum()) * (1 - 1e-9)
        assert (y1 - y0) * (x1 - x0) == _brute_min_area(mass, share)


def test_mass_box_inside_rf_and_coarse_grid_holds_share() -> None:
    g = torch.Generator().manual_seed(1)
    proj = torch.randn(3, 200, 200, generator=g)
    rf = (30, 40, 170, 190)
    y0, x0, y1, x1 = mass_box(proj, share=0.9, within=rf)
    assert rf[0] <= y0 < y1 <= rf[2] and rf[1] <= x0 < x1 <= rf[3]
    inside = proj[:, rf[0]:rf[2], rf[1]:rf[3]].abs().sum()
    assert float(proj[:, y0:y1, x0:x1].abs().sum()) >= 0.9 * float(inside) * (1 - 1e-6)
    blob = torch.zeros(3, 200, 200)
    blob[:, 100:110, 120:125] = 1.0
    y0, x0, y1, x1 = mass_box(blob, share=1.0)  # 200 px: searched on a 4 px grid
    assert y0 <= 100 and x0 <= 120 and y1 >= 110 and x1 >= 125
    assert 100 - y0 < 4 and 120 - x0 < 4 and y1 - 110 < 4 and x1 - 125 < 4


def test_display_box_margin_min_side_and_clip() -> None:
    assert display_box((100, 120, 110, 125), (0, 0, 224, 224), margin=0.0, min_side=32) == (89, 106, 121, 138)
    y0, x0, y1, x1 = display_box((0, 0, 10, 10), (0, 0, 20, 224), margin=0.5, min_side=40)
    assert (y0, y1) == (0, 20) and x1 - x0 == 40 and x0 == 0  # clipped to the field, shifted inside


def test_present_patch_box_equals_projection_box_and_rf() -> None:
    g = torch.Generator().manual_seed(2)
    proj = torch.zeros(3, 64, 64)
    proj[:, 20:30, 35:41] = torch.randn(3, 10, 6, generator=g)
    image = torch.rand(3, 64, 64, generator=g)
    rf = (8, 16, 56, 64)
    v = present(proj, image, rf_box=rf, size=48, min_side=8, margin=0.0)
    y0, x0, y1, x1 = v.display_box
    assert rf[0] <= y0 and rf[1] <= x0 and y1 <= rf[2] and x1 <= rf[3]
    assert v.rf_box == rf and v.shown.shape == v.patch.shape == (3, 48, 48)
    # the patch is the image of exactly the display box (oracle: resample the same crop)
    crop = image[:, y0:y1, x0:x1]
    assert crop.shape[-1] == crop.shape[-2]  # square box here, so no canvas padding
    torch.testing.assert_close(v.patch, resample(crop, 48))
    torch.testing.assert_close(v.full_patch, image[:, rf[0]:rf[2], rf[1]:rf[3]])
    assert v.share >= 0.8 and v.to_dict()["display_box"] == list(v.display_box)
    assert "grey = 0" in CONTRAST and v.to_dict()["contrast"] == CONTRAST


def test_contrast_is_robust_to_one_outlier() -> None:
    g = torch.Generator().manual_seed(3)
    proj = torch.randn(3, 40, 40, generator=g)
    base = contrast_scale(proj)
    spiked = proj.clone()
    spiked[0, 5, 5] = 1e4
    assert contrast_scale(spiked) == pytest.approx(base, rel=0.05)
    v = present(spiked, rf_box=None, size=40, min_side=40)
    off = (v.shown - 0.5).abs().amax(0) > 8 / 255
    assert off.float().mean() > 0.5  # the outlier did not flatten the rest to grey


def test_zero_is_grey() -> None:
    v = present(torch.zeros(3, 16, 16), size=16)
    torch.testing.assert_close(v.shown, torch.full((3, 16, 16), 0.5))


def test_resample_is_smooth_not_nearest() -> None:
    checker = ((torch.arange(64)[:, None] + torch.arange(64)[None]) % 2).float().expand(3, 64, 64)
    small = resample(checker, 16)
    torch.testing.assert_close(small, torch.full((3, 16, 16), 0.5), atol=0.02, rtol=0)  # nearest would give 0/1
    v = present(checker - 0.5, size=16, min_side=64)
    assert float((v.shown - 0.5).abs().max()) < 0.05


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="share"):
        mass_box(torch.ones(3, 4, 4), share=0)
    with pytest.raises(ValueError, match="projection"):
        present(torch.ones(4, 4))
    with pytest.raises(ValueError, match="box"):
        mass_box(torch.ones(3, 4, 4), within=(3, 3, 3, 3))
