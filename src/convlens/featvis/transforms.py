"""Lucid's standard transforms (pad, jitter, scale, rotate, jitter), drawn per image.

Lucid's and Lucent's ``standard_transforms`` are ``pad(12, 0.5)``, ``jitter(8)``,
``random_scale(0.9 .. 1.1)``, ``random_rotate(-10 .. 10 degrees, 0 five times more likely)``,
``jitter(4)``, with one draw shared by the whole batch. Here every image gets its own draw, from
its unit's generator (so a unit's result does not depend on which other units share the batch),
and the chain is one bilinear resampling per image (:func:`torch.nn.functional.grid_sample`)
instead of five steps. Departures, so that images with different draws share one batch: the
scale zooms about the centre instead of resizing the image (whose size would change with the
draw), and the jitters are crops as in Lucid (Lucent translates instead), so the size is always
``S + 2 * pad - jitter1 - jitter2`` (``S + 12``).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["TransformParams", "TransformSpec", "apply_transforms", "draw_transforms", "output_size"]


@dataclass(frozen=True)
class TransformSpec:
    """Lucent's ``standard_transforms`` (the defaults)."""

    pad: int = 12
    pad_value: float = 0.5
    jitter1: int = 8
    scales: tuple[float, ...] = tuple(1 + (i - 5) / 50.0 for i in range(11))
    angles: tuple[float, ...] = tuple(float(a) for a in [*range(-10, 11), 0, 0, 0, 0, 0])
    jitter2: int = 4


@dataclass(frozen=True)
class TransformParams:
    """One draw per image: offsets (N, 2) of each jitter in pixels (y, x), scale (N,), angle (N,) degrees."""

    shift1: torch.Tensor
    scale: torch.Tensor
    angle: torch.Tensor
    shift2: torch.Tensor


def output_size(size: int, spec: TransformSpec) -> int:
    """Side of the transformed image: ``size + 2 * pad - jitter1 - jitter2``."""
    return size + 2 * spec.pad - spec.jitter1 - spec.jitter2


def draw_transforms(generators: Sequence[torch.Generator], per_generator: int, spec: TransformSpec) -> TransformParams:
    """``per_generator`` draws from each generator, in order (images of unit 0, then unit 1, ...)."""
    parts: list[list[torch.Tensor]] = [[], [], [], []]
    n = per_generator
    for g in generators:
        parts[0].append(torch.randint(0, max(spec.jitter1, 1), (n, 2), generator=g))
        parts[1].append(torch.tensor(spec.scales, dtype=torch.float64)[torch.randint(0, len(spec.scales), (n,),
                                                                                      generator=g)])
        parts[2].append(torch.tensor(spec.angles, dtype=torch.float64)[torch.randint(0, len(spec.angles), (n,),
                                                                                      generator=g)])
        parts[3].append(torch.randint(0, max(spec.jitter2, 1), (n, 2), generator=g))
    return TransformParams(*(torch.cat(p) for p in parts))


def apply_transforms(images: torch.Tensor, params: TransformParams, spec: TransformSpec) -> torch.Tensor:
    """(N, 3, S, S) pixels -> (N, 3, O, O) transformed pixels, ``O = output_size(S, spec)``.

    Output pixel ``q`` reads the padded image at ``c + R(-angle) (q + shift2 - c) / scale + shift1``
    (``c`` the centre of the jittered image), with ``pad_value`` outside the image.
    """
    s = images.shape[-1]
    o = output_size(s, spec)
    c = (s + 2 * spec.pad - spec.jitter1 - 1) / 2.0  # centre of the first jitter's crop
    dt, dev = images.dtype, images.device
    a = params.angle.to(torch.float64) * (math.pi / 180.0)
    inv = 1.0 / params.scale.to(torch.float64)
    cos, sin = torch.cos(a) * inv, torch.sin(a) * inv  # R(-angle) / scale
    ys, xs = torch.meshgrid(torch.arange(o, dtype=torch.float64), torch.arange(o, dtype=torch.float64), indexing="ij")
    qy = ys[None] + params.shift2[:, 0, None, None].double() - c  # (N, O, O)
    qx = xs[None] + params.shift2[:, 1, None, None].double() - c
    py = c + cos[:, None, None] * qy - sin[:, None, None] * qx + params.shift1[:, 0, None, None] - spec.pad
    px = c + sin[:, None, None] * qy + cos[:, None, None] * qx + params.shift1[:, 1, None, None] - spec.pad
    grid = torch.stack([(2 * px + 1) / s - 1, (2 * py + 1) / s - 1], dim=-1)  # (N, O, O, 2) as (x, y)
    grid = grid.to(dtype=dt, device=dev)
    out = F.grid_sample(images - spec.pad_value, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out + spec.pad_value
