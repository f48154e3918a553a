"""Correspondence analysis (Sec. 4.2, Table 1, Fig. 8): does masking the same object part in
different images change the features in the same way?

For each image i and layer l: ``eps_i = x_i - x~_i`` (features of the original minus features of
the image with the part masked). The paper's score is
``Delta_l = sum_{i != j} H(sign(eps_i), sign(eps_j))`` (H = Hamming distance); lower means a more
consistent change, i.e. tighter correspondence.

Normalization (what Table 1 calls "mean feature sign change"): each pair's Hamming distance is
divided by the feature dimension, and the table reports the mean and standard deviation of that
fraction over the N(N-1)/2 unordered image pairs (ordered pairs give the same mean; ``delta`` is
the paper's raw sum over ordered pairs i != j). ``sign(0) = 0`` counts as its own sign, so a
feature that changes in one image and not in the other (common after a ReLU) adds to H.

The baseline ("random") masks a square of the same size at a random position inside each
image's object box, ``repeats`` times with a seeded generator; its mean +- std pools the pairs of
all repetitions. Masks are filled with ``fill`` (0 = the training mean in normalized space).
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from convlens.core.capture import capture

__all__ = [
    "Correspondence",
    "correspondence_score",
    "face_box",
    "random_masks",
    "sign_change",
    "square_masks",
    "transform_points",
]


@dataclass(frozen=True)
class Correspondence:
    """Result of :func:`correspondence_score`.

    Attributes:
        parts: row names (e.g. right eye, left eye, nose, random).
        layers: column names.
        pair_scores: {part: (layers, pairs) normalized Hamming distance per image pair}.
        mean, std: (parts, layers) over pairs.
        delta: (parts, layers) the paper's raw Delta (sum over ordered pairs, random: mean over repeats).
    """

    parts: tuple[str, ...]
    layers: tuple[str, ...]
    pair_scores: dict[str, Tensor]
    mean: Tensor
    std: Tensor
    delta: Tensor

    def table(self) -> tuple[list[str], list[list[str]]]:
        """Table 1 analog: (columns, rows) with ``mean ± std`` cells."""
        cols = ["occlusion location"] + [f"{layer} mean sign change" for layer in self.layers]
        rows = [[p] + [f"{float(self.mean[i, j]):.3f} ± {float(self.std[i, j]):.3f}" for j in range(len(self.layers))]
                for i, p in enumerate(self.parts)]
        return cols, rows

    def to_dict(self) -> dict[str, Any]:
        return {"parts": list(self.parts), "layers": list(self.layers), "mean": self.mean.tolist(),
                "std": self.std.tolist(), "delta": self.delta.tolist(),
                "pair_scores": {k: v.tolist() for k, v in self.pair_scores.items()}}


def sign_change(eps: Tensor) -> Tensor:
    """Normalized Hamming distance between sign(eps_i) and sign(eps_j) for all pairs i < j.

    Args:
        eps: (N, F) feature differences.

    Returns:
        (N*(N-1)/2,) fraction of the F features whose sign differs, pairs in itertools order.
    """
    s = eps.sign()
    pairs = list(itertools.combinations(range(len(s)), 2))
    if not pairs:
        raise ValueError(f"need at least 2 images for pairs, got {len(s)}")
    i, j = torch.tensor(pairs).T
    return (s[i] != s[j]).to(torch.float64).mean(1)


def _features(model: nn.Module, x: Tensor, layers: tuple[str, ...]) -> dict[str, Tensor]:
    return {k: v.reshape(len(x), -1) for k, v in capture(model, x, layers).items()}


def correspondence_score(
    model: nn.Module,
    images: Tensor,
    masks: Tensor,
    layers: tuple[str, ...] | list[str] = ("conv5", "fc7"),
    *,
    part_names: list[str] | None = None,
    random: Tensor | None = None,
    fill: float = 0.0,
) -> Correspondence:
    """Table 1: mean feature sign change when the same part is masked in every image.

    Args:
        model: a ConvNet (layer names as in ``model.features``) or any module (dotted names).
        images: (N, 3, H, W) normalized images, N >= 2.
        masks: (N, P, H, W) bool, True = masked; part p is the same part in every image.
        layers: feature layers (flattened).
        part_names: P names (default ``part0``...).
        random: optional (N, R, H, W) bool baseline masks (R repetitions, see :func:`random_masks`).
        fill: mask value in normalized space (0 = the mean).

    Returns:
        :class:`Correspondence` with rows ``part_names`` (+ ``random``).

    Example:
        >>> masks = square_masks(points, 30, 224, 224)          # points (N, P, 2)
        >>> corr = correspondence_score(model, images, masks, ["conv5", "fc7"],
        ...                             part_names=["right eye", "left eye", "nose"])
    """
    layers = tuple(layers)
    if images.dim() != 4 or masks.dim() != 4 or masks.shape[0] != images.shape[0] \
            or masks.shape[-2:] != images.shape[-2:]:
        raise ValueError(f"images must be (N, 3, H, W) and masks (N, P, H, W) with the same N, H, W; "
                         f"got {tuple(images.shape)} and {tuple(masks.shape)}")
    names = list(part_names or [f"part{p}" for p in range(masks.shape[1])])
    if len(names) != masks.shape[1]:
        raise ValueError(f"part_names has {len(names)} names for {masks.shape[1]} masks")
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            clean = _features(model, images, layers)
            scores = {n: _part_scores(model, images, masks[:, p], clean, layers, fill) for p, n in enumerate(names)}
            if random is not None:
                reps = [_part_scores(model, images, random[:, r], clean, layers, fill) for r in range(random.shape[1])]
                scores["random"] = torch.cat(reps, 1)
                names.append("random")
    finally:
        model.train(was_training)
    mean = torch.stack([scores[n].mean(1) for n in names])
    std = torch.stack([scores[n].std(1, correction=0) for n in names])
    n = images.shape[0]
    feat_dim = torch.tensor([float(clean[layer].shape[1]) for layer in layers], dtype=torch.float64)
    delta = mean * feat_dim * n * (n - 1)  # sum over ordered pairs i != j of raw Hamming distances
    return Correspondence(tuple(names), layers, scores, mean, std, delta)


def _part_scores(model: nn.Module, images: Tensor, mask: Tensor, clean: dict[str, Tensor],
                 layers: tuple[str, ...], fill: float) -> Tensor:
    masked = torch.where(mask[:, None], torch.as_tensor(fill, dtype=images.dtype, device=images.device), images)
    feats = _features(model, masked, layers)
    return torch.stack([sign_change(clean[layer] - feats[layer]) for layer in layers])  # (L, pairs)


def transform_points(points: Tensor, orig_hw: Tensor, resize: int, crop: int) -> Tensor:
    """Map (x, y) pixel points of original images through "resize smallest side, center crop".

    Follows :func:`convlens.images.sources.resize_center_crop` (rounded sizes, integer crop offsets),
    then the center ``crop`` of the ``resize`` square.

    Args:
        points: (N, P, 2) float, (x, y) in original pixels (pixel centres at integers).
        orig_hw: (N, 2) original (height, width).

    Returns:
        (N, P, 2) (x, y) in the crop.
    """
    h, w = orig_hw[:, 0].double(), orig_hw[:, 1].double()
    scale = resize / torch.minimum(h, w)
    nh = torch.maximum(torch.full_like(h, resize), (h * scale).round())
    nw = torch.maximum(torch.full_like(w, resize), (w * scale).round())
    nh = torch.where(torch.minimum(h, w) == resize, h, nh)
    nw = torch.where(torch.minimum(h, w) == resize, w, nw)
    top = torch.div(nh - resize, 2, rounding_mode="floor") + (resize - crop) // 2
    left = torch.div(nw - resize, 2, rounding_mode="floor") + (resize - crop) // 2
    x = (points[..., 0].double() + 0.5) * (nw / w)[:, None] - 0.5 - left[:, None]
    y = (points[..., 1].double() + 0.5) * (nh / h)[:, None] - 0.5 - top[:, None]
    return torch.stack([x, y], -1)


def square_masks(points: Tensor, size: int, H: int, W: int, names: list[str] | None = None) -> Tensor:
    """(N, P, H, W) bool squares of side ``size`` centred on (x, y) ``points`` (N, P, 2).

    A square that would stick out of the image is shifted inside it (all masks keep the same area).

    Raises:
        ValueError: a point outside the image, or ``size`` larger than the image.
    """
    if not 0 < size <= min(H, W):
        raise ValueError(f"mask size must be in 1..{min(H, W)}, got {size}")
    N, P, _ = points.shape
    for n, p in itertools.product(range(N), range(P)):
        x, y = (float(v) for v in points[n, p])
        if not (-0.5 <= x < W - 0.5 and -0.5 <= y < H - 0.5):
            part = names[p] if names else f"part {p}"
            raise ValueError(f"{part} of image {n} lands outside the {H}x{W} image at (x={x:.1f}, y={y:.1f}); "
                             "check the landmarks and the resize/crop")
    x0 = (points[..., 0] - (size - 1) / 2 + 0.5).floor().long().clamp(0, W - size)  # centre nearest the point
    y0 = (points[..., 1] - (size - 1) / 2 + 0.5).floor().long().clamp(0, H - size)
    return _boxes_to_masks(y0, x0, size, H, W)


def _boxes_to_masks(y0: Tensor, x0: Tensor, size: int, H: int, W: int) -> Tensor:
    ay, ax = torch.arange(H), torch.arange(W)
    in_y = (ay >= y0[..., None]) & (ay < y0[..., None] + size)  # (N, P, H)
    in_x = (ax >= x0[..., None]) & (ax < x0[..., None] + size)  # (N, P, W)
    return in_y[..., :, None] & in_x[..., None, :]


def face_box(points: Tensor, margin: float = 0.75) -> Tensor:
    """(N, 4) object box (y0, x0, y1, x1) around each image's part points (N, P, 2): their bounding
    box grown by ``margin`` times its larger side on every side (not clipped)."""
    lo, hi = points.amin(1), points.amax(1)  # (N, 2) (x, y)
    grow = margin * (hi - lo).amax(1, keepdim=True)
    lo, hi = lo - grow, hi + grow
    return torch.stack([lo[:, 1], lo[:, 0], hi[:, 1], hi[:, 0]], 1)


def random_masks(boxes: Tensor, size: int, H: int, W: int, repeats: int, *, seed: int = 0) -> Tensor:
    """(N, repeats, H, W) bool: squares of side ``size`` at uniform random positions inside each
    box (N, 4) (y0, x0, y1, x1), clipped to the image; seeded with ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    b = boxes.double()
    y_lo = b[:, 0].clamp(0, H - size)
    y_hi = (b[:, 2] - size).clamp(0, H - size).maximum(y_lo)
    x_lo = b[:, 1].clamp(0, W - size)
    x_hi = (b[:, 3] - size).clamp(0, W - size).maximum(x_lo)
    u = torch.rand(len(b), repeats, 2, generator=gen, dtype=torch.float64)
    y0 = (y_lo[:, None] + u[..., 0] * (y_hi - y_lo)[:, None]).round().long()
    x0 = (x_lo[:, None] + u[..., 1] * (x_hi - x_lo)[:, None]).round().long()
    return _boxes_to_masks(y0, x0, size, H, W)
