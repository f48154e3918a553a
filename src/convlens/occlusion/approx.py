"""Approximate occlusion (off by default) and its quality against the exact map.

Two approximations from Krypton (Nakandala et al., SIGMOD 2019):

* **Projective-field thresholding** (generic incremental path): each layer recomputes at most
  ``threshold`` of its map per axis around the occluder; changes that spread further are dropped.
* **Adaptive drill-down**: the occluder grid is first evaluated at every ``coarse``-th position
  per axis (plus the last); the remaining positions are computed exactly only where the coarse
  map changes most (the ``drill_fraction`` of them next to the largest coarse changes of the
  target probability or the map's activity); elsewhere probabilities and activity are
  bilinearly interpolated from the coarse grid.

The quality report compares with the exact map: SSIM (Gaussian window 11, sigma 1.5, data range
of the exact map) of the image-sized probability and activity heatmaps, the largest probability
difference and the share of positions with the same top label.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass(frozen=True)
class Approximation:
    """Settings of the approximate mode (see the module docstring).

    The defaults were chosen on mobilenet_v2 (ImageNet weights, 224 px, 50 px square at stride 12,
    7 real images of ``../shared/data/imagenet-sample``; SSIM of the probability heatmap against the
    exact one, median (lowest), share of the positions computed):

    ========= ====== ===== ================ =========
    threshold coarse drill SSIM             computed
    ========= ====== ===== ================ =========
    None      3      0.1   0.921 (0.843)    23%  (default)
    None      3      0.0   0.906 (0.834)    14%
    None      3      0.2   0.934 (0.850)    31%
    None      4      0.2   0.916 (0.873)    28%
    0.6       3      0.2   0.928 (0.825)    31%
    0.4       3      0.2   0.804 (0.700)    31%
    ========= ====== ===== ================ =========

    The cap (``threshold``) saves little on MobileNetV2 (the 7x7 maps are cheap per occluder and
    small caps change the result a lot): it is off by default.
    """

    threshold: float | None = None
    coarse: int = 3
    drill_fraction: float = 0.1
    quality: bool = False

    def __post_init__(self) -> None:
        if self.threshold is not None and not 0 < self.threshold <= 1:
            raise ValueError(f"approximate threshold must be in (0, 1], got {self.threshold}")
        if self.coarse < 1:
            raise ValueError(f"approximate coarse step must be >= 1, got {self.coarse}")
        if not 0 <= self.drill_fraction <= 1:
            raise ValueError(f"approximate drill_fraction must be in [0, 1], got {self.drill_fraction}")


def _coarse_index(n: int, step: int) -> list[int]:
    idx = list(range(0, n, step))
    return idx if idx[-1] == n - 1 else [*idx, n - 1]


def _interp_weights(n: int, coarse: list[int], device: torch.device) -> Tensor:
    """(n, len(coarse)) linear interpolation matrix from the coarse indices to all n."""
    w = torch.zeros(n, len(coarse), dtype=torch.float64, device=device)
    for j in range(len(coarse) - 1):
        a, b = coarse[j], coarse[j + 1]
        for i in range(a, b + 1):
            t = (i - a) / (b - a)
            w[i, j], w[i, j + 1] = 1 - t, t
    if len(coarse) == 1:
        w[:, 0] = 1
    return w


def drill_down(engine: Any, grid: Tensor, shape: tuple[int, int], channel: int, target: int, approx: Approximation,
               clean_prob: Tensor) -> tuple[Tensor, Tensor, float]:
    """(probs (gy, gx, K), activity (gy, gx), fraction of positions computed)."""
    gy, gx = shape
    cy, cx = _coarse_index(gy, approx.coarse), _coarse_index(gx, approx.coarse)
    flat = torch.arange(gy * gx, device=grid.device).reshape(gy, gx)
    coarse_idx = flat[torch.tensor(cy)[:, None], torch.tensor(cx)[None, :]].reshape(-1)
    logits, act = engine.evaluate(grid[coarse_idx], channel)
    probs_c = logits.softmax(1).reshape(len(cy), len(cx), -1)
    act_c = act.reshape(len(cy), len(cx))
    wy, wx = _interp_weights(gy, cy, grid.device), _interp_weights(gx, cx, grid.device)
    probs = torch.einsum("ia,abk,jb->ijk", wy.to(probs_c), probs_c, wx.to(probs_c)).contiguous()
    activity = (wy.to(act_c) @ act_c @ wx.to(act_c).T).contiguous()
    # change of each coarse position; a fine position's score = the largest of its coarse corners
    d_prob = (probs_c[..., target] - clean_prob).abs()
    d_act = (act_c - engine.act0[0, channel].sum()).abs()
    score_c = torch.maximum(d_prob / d_prob.max().clamp_min(1e-12), d_act / d_act.max().clamp_min(1e-12))
    near_y, near_x = (wy > 0).to(score_c), (wx > 0).to(score_c)
    score = torch.amax(score_c[None, :, None, :] * near_y[:, :, None, None] * near_x[None, None, :, :], dim=(1, 3))
    fine = torch.ones(gy * gx, dtype=torch.bool, device=grid.device)
    fine[coarse_idx] = False
    candidates = fine.nonzero()[:, 0]
    n_drill = round(approx.drill_fraction * len(candidates))
    computed = len(coarse_idx) + n_drill
    if n_drill:
        chosen = candidates[score.reshape(-1)[candidates].topk(n_drill).indices]
        lg, ac = engine.evaluate(grid[chosen], channel)
        probs.view(gy * gx, -1)[chosen] = lg.softmax(1).to(probs)
        activity.view(-1)[chosen] = ac.to(activity)
    probs.view(gy * gx, -1)[coarse_idx] = probs_c.reshape(len(coarse_idx), -1)
    activity.view(-1)[coarse_idx] = act_c.reshape(-1)
    return probs, activity, computed / (gy * gx)


def cover(pos: Tensor, window: int, size: int, dtype: torch.dtype) -> Tensor:
    ar = torch.arange(size, device=pos.device)[:, None]
    return ((ar >= pos[None]) & (ar < pos[None] + window)).to(dtype)  # (size, G)


def upsample_mean(grid: Tensor, ys: Tensor, xs: Tensor, window: int, H: int, W: int) -> Tensor:
    """(H, W): each pixel's mean over the occluders covering it (separable: rows x columns)."""
    cy, cx = cover(ys, window, H, grid.dtype), cover(xs, window, W, grid.dtype)
    total = cy @ grid @ cx.T
    return total / (cy.sum(1)[:, None] * cx.sum(1)[None, :])


def ssim(a: Tensor, b: Tensor, data_range: float | None = None) -> float:
    """SSIM of two (H, W) maps (Wang et al. 2004: Gaussian window 11, sigma 1.5), ``a`` the reference."""
    a, b = a.double()[None, None], b.double()[None, None]
    rng = float(a.max() - a.min()) if data_range is None else data_range
    rng = rng if rng > 0 else 1.0
    c1, c2 = (0.01 * rng) ** 2, (0.03 * rng) ** 2
    g = torch.exp(-((torch.arange(11, dtype=torch.float64) - 5) ** 2) / (2 * 1.5**2))
    g = (g / g.sum()).to(a.device)
    win = (g[:, None] * g[None, :])[None, None]

    def blur(t: Tensor) -> Tensor:
        return F.conv2d(F.pad(t, (5, 5, 5, 5), mode="replicate"), win)

    mu_a, mu_b = blur(a), blur(b)
    var_a, var_b, cov = blur(a * a) - mu_a**2, blur(b * b) - mu_b**2, blur(a * b) - mu_a * mu_b
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return float(s.mean())


def map_quality(exact_probs: Tensor, exact_act: Tensor, probs: Tensor, act: Tensor, target: int,
                ys: Tensor, xs: Tensor, window: int, H: int, W: int) -> dict[str, float]:
    """Quality of an approximate map against the exact one (see the module docstring)."""
    def heat(g: Tensor) -> Tensor:
        return upsample_mean(g.double(), ys, xs, window, H, W)

    return {
        "ssim_prob": ssim(heat(exact_probs[..., target]), heat(probs[..., target])),
        "ssim_activity": ssim(heat(exact_act), heat(act)),
        "max_abs_prob_diff": float((exact_probs - probs).abs().max()),
        "top_label_agreement": float((exact_probs.argmax(-1) == probs.argmax(-1)).double().mean()),
    }
