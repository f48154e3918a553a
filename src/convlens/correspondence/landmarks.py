"""Landmark-based part masks for the correspondence analysis (Table 1, Fig. 8): the landmarks CSV
and the figure of the masked images. Scores: :mod:`convlens.correspondence.analysis`."""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import torch

__all__ = ["PARTS", "masked_images_grid", "read_landmarks"]

# CSV column prefix -> row name. "imgleft" is the eye on the left of the picture = the dog's right eye.
PARTS = {"eye_imgleft": "right eye", "eye_imgright": "left eye", "nose": "nose"}


def read_landmarks(csv_path: Path, root: Path) -> tuple[list[Path], torch.Tensor]:
    """(image paths, points (N, 3, 2) (x, y) in original pixels, parts in :data:`PARTS` order)."""
    if not csv_path.is_file():
        raise FileNotFoundError(f"--landmarks not found: {csv_path}")
    try:
        with open(csv_path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except (UnicodeDecodeError, csv.Error) as exc:
        raise ValueError(f"--landmarks {csv_path}: not a CSV text file ({exc}); expected columns "
                         "file, eye_imgleft_x, eye_imgleft_y, eye_imgright_x, eye_imgright_y, nose_x, nose_y") from None
    need = ["file"] + [f"{p}_{c}" for p in PARTS for c in "xy"]
    if not rows or any(c not in rows[0] for c in need):
        raise ValueError(f"--landmarks {csv_path} must have columns {', '.join(need)}")
    paths, points = [], []
    for r in rows:
        path = root / r["file"]
        if not r.get("file") or not path.is_file():
            raise FileNotFoundError(f"image {r['file']} of {csv_path} not found under --images {root}")
        paths.append(path)
        try:
            points.append([[float(r[f"{p}_x"]), float(r[f"{p}_y"])] for p in PARTS])
        except (TypeError, ValueError):
            raise ValueError(
                f"--landmarks {csv_path}: row of {r['file']} has a coordinate that is not a number"
            ) from None
    if len(paths) < 2:
        raise ValueError(f"--landmarks needs at least 2 images, got {len(paths)}")
    return paths, torch.tensor(points)


def masked_images_grid(
    pre: Any, images: torch.Tensor, masks: torch.Tensor, rand: torch.Tensor, n_random: int = 3
) -> torch.Tensor:
    """Fig. 8 grid: per image, the original, each part masked, then a few random masks."""
    from convlens.io.viz import make_grid

    tiles = []
    for i in range(len(images)):
        for m in [None, *masks[i], *rand[i, :n_random]]:
            x = images[i] if m is None else torch.where(m, torch.zeros(()), images[i])
            tiles.append(pre.denormalize(x))
    return make_grid(torch.stack(tiles), nrow=1 + masks.shape[1] + min(n_random, rand.shape[1]), pad=2)
