"""Feature invariance (Sec. 4.2, Fig. 5): how far the feature vectors of a layer move when the
image is translated vertically, scaled or rotated, and what happens to the probability of the
image's class: its true label when labels are given, else the class the model predicts for the
untransformed image (then called the prediction, never the true label).

Transforms act on the normalized image and keep its size; whatever comes in from outside the
image is filled with 0 (the training mean, the paper's grey):

* ``translate``: vertical shift by ``param`` pixels (positive = down). Whole pixels are an exact
  shift with the vacated rows set to 0; fractional shifts use bilinear sampling.
* ``scale``: zoom by ``param`` about the image centre (> 1 enlarges and crops the border away,
  < 1 shrinks and pads with 0), bilinear.
* ``rotate``: ``param`` degrees counter-clockwise about the centre, bilinear, corners filled with 0.

The identity parameter (0, 1, 0) returns the images unchanged. The distance is the Euclidean
norm of the difference of the flattened feature vectors (rectified outputs for ``convN``/``fcN``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from convlens.core.capture import record_activations

__all__ = ["TRANSFORMS", "InvarianceCurves", "invariance_curves", "shift_images", "transform_images"]

TRANSFORMS = ("translate", "scale", "rotate")
_IDENTITY = {"translate": 0.0, "scale": 1.0, "rotate": 0.0}


@dataclass(frozen=True)
class InvarianceCurves:
    """Result of :func:`invariance_curves`.

    Attributes:
        transform: ``translate`` | ``scale`` | ``rotate``.
        params: (P,) the transform parameters (pixels, factors or degrees).
        distances: {layer: (N, P) Euclidean distance to the untransformed image's features}.
        probs: (N, P) probability of each image's class (``labels``).
        labels: (N,) the classes followed: the true labels given, else the untransformed images' predictions.
        top_labels: (N, P) most probable class of each transformed image.
        labels_given: True when ``labels`` are true labels given by the caller, False when predicted.
    """

    transform: str
    params: Tensor
    distances: dict[str, Tensor]
    probs: Tensor
    labels: Tensor
    top_labels: Tensor
    labels_given: bool = False

    @property
    def label_kind(self) -> str:
        """What ``labels`` are, for people: ``true label`` or ``predicted class``."""
        return "true label" if self.labels_given else "predicted class"

    def to_dict(self) -> dict[str, Any]:
        return {"transform": self.transform, "params": self.params.tolist(),
                "distances": {k: v.tolist() for k, v in self.distances.items()},
                "probs": self.probs.tolist(), "labels": self.labels.tolist(), "label_kind": self.label_kind,
                "top_labels": self.top_labels.tolist()}


def shift_images(images: Tensor, dy: int, dx: int = 0, *, circular: bool = False) -> Tensor:
    """Shift (N, C, H, W) by whole pixels (positive = down/right); vacated pixels are 0 unless ``circular``."""
    out = torch.roll(images, (dy, dx), (-2, -1))
    if not circular:
        if dy > 0:
            out[..., :dy, :] = 0
        elif dy < 0:
            out[..., dy:, :] = 0
        if dx > 0:
            out[..., :, :dx] = 0
        elif dx < 0:
            out[..., :, dx:] = 0
    return out


def transform_images(images: Tensor, transform: str, param: float) -> Tensor:
    """Apply one transform (see the module docstring) to (N, C, H, W) normalized images."""
    if transform not in TRANSFORMS:
        raise ValueError(f"unknown transform {transform!r}; expected one of {', '.join(TRANSFORMS)}")
    if param == _IDENTITY[transform]:
        return images
    if transform == "translate" and float(param).is_integer():
        return shift_images(images, int(param))
    if transform == "scale" and param <= 0:
        raise ValueError(f"scale factors must be > 0, got {param}")
    H, W = images.shape[-2:]
    theta = torch.zeros(2, 3, dtype=images.dtype, device=images.device)
    if transform == "translate":  # output(y) = input(y - t); normalized coords span 2 over H
        theta[0, 0] = theta[1, 1] = 1.0
        theta[1, 2] = -2.0 * param / H
    elif transform == "scale":
        theta[0, 0] = theta[1, 1] = 1.0 / param
    else:  # rotate counter-clockwise on screen (y axis points down)
        a = math.radians(param)
        cos, sin = math.cos(a), math.sin(a)
        theta[0, :2] = torch.tensor([cos, -sin * H / W])
        theta[1, :2] = torch.tensor([sin * W / H, cos])
    grid = F.affine_grid(theta.expand(len(images), 2, 3), list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _features(model: nn.Module, x: Tensor, layers: tuple[str, ...]) -> tuple[dict[str, Tensor], Tensor]:
    with record_activations(model, layers) as acts:
        logits = model(x)
    out = dict(acts)
    return {k: v.reshape(len(x), -1) for k, v in out.items()}, logits


def invariance_curves(
    model: nn.Module,
    images: Tensor,
    *,
    transform: str,
    params: list[float] | tuple[float, ...],
    layers: tuple[str, ...] | list[str] = ("conv1", "fc7"),
    labels: Tensor | list[int] | None = None,
) -> InvarianceCurves:
    """Fig. 5: feature distances and the class probability as a function of a transform.

    Args:
        model: a ConvNet (layer names as in ``model.features``) or any classifier (dotted names).
        images: (N, 3, H, W) normalized images.
        transform: ``translate`` (vertical, pixels) | ``scale`` (factor) | ``rotate`` (degrees).
        params: the values to sweep.
        layers: feature layers whose distances are reported.
        labels: (N,) true labels (default: the class predicted for the untransformed image, and the result
            says so: ``labels_given`` False).

    Returns:
        :class:`InvarianceCurves`.

    Example:
        >>> curves = invariance_curves(model, images, transform="rotate", params=range(0, 360, 30))
        >>> curves.distances["fc7"].shape    # (N, 12)
    """
    if images.dim() != 4:
        raise ValueError(f"images must have shape (N, 3, H, W), got {tuple(images.shape)}; "
                         "add a batch dim with images[None]")
    if transform not in TRANSFORMS:
        raise ValueError(f"unknown transform {transform!r}; expected one of {', '.join(TRANSFORMS)}")
    if len(params) == 0:
        raise ValueError("params must list at least one transform value")
    layers = tuple(layers)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            base, logits = _features(model, images, layers)
            lab = logits.argmax(1) if labels is None else torch.as_tensor(labels, device=images.device).long()
            if lab.shape != (len(images),) or int(lab.max()) >= logits.shape[1] or int(lab.min()) < 0:
                raise ValueError(f"labels must be {len(images)} class indices in 0..{logits.shape[1] - 1}, "
                                 f"got {lab.tolist()}")
            dists: dict[str, list[Tensor]] = {layer: [] for layer in layers}
            probs, tops = [], []
            for p in params:
                feats, lg = _features(model, transform_images(images, transform, float(p)), layers)
                for layer in layers:
                    dists[layer].append((feats[layer] - base[layer]).norm(dim=1))
                pr = lg.softmax(1)
                probs.append(pr.gather(1, lab[:, None])[:, 0])
                tops.append(pr.argmax(1))
    finally:
        model.train(was_training)
    return InvarianceCurves(transform, torch.tensor([float(p) for p in params]),
                            {k: torch.stack(v, 1) for k, v in dists.items()}, torch.stack(probs, 1), lab,
                            torch.stack(tops, 1), labels is not None)
