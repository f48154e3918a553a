"""What ``convlens correspond`` writes (Table 1, Fig. 8), callable from Python.

:func:`write_correspondence` masks each part (and random squares on the face) in every image,
scores the consistency of the feature change (:mod:`convlens.correspondence.analysis`) and
writes ``correspondence.md`` (the Table 1 analog), ``masked_images.png`` (Fig. 8) and
``result.json`` (kind ``correspond``).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

__all__ = ["CorrespondSettings", "write_correspondence"]


@dataclass(frozen=True)
class CorrespondSettings:
    """The ``layers`` scored, the ``mask`` side in input pixels, the random masks (``repeats`` draws,
    ``seed``) inside the face box (the parts' bounding box grown by ``margin`` x its size)."""

    layers: tuple[str, ...]
    mask: int = 30
    margin: float = 0.75
    repeats: int = 10
    seed: int = 0


def write_correspondence(loaded: Any, images: torch.Tensor, out: str | Path, settings: CorrespondSettings, *,
                         paths: Sequence[Path], points: torch.Tensor,
                         params: Mapping[str, Any] | None = None) -> list[str]:
    """Table 1 and Fig. 8 for ``images``: mask the parts, score, write the table, figure and ``result.json``.

    Args:
        loaded: a :class:`convlens.nets.loading.Loaded` (model and preprocessing).
        images: (N, 3, H, W) normalized images on the model's device.
        out: output folder (created).
        settings: see :class:`CorrespondSettings`.
        paths: the N image files; points: their landmarks in original pixels
            (:func:`convlens.correspondence.landmarks.read_landmarks` gives both).
        params: recorded first in ``result.json`` ``params`` (e.g. the command's flags).

    Returns:
        The lines to show the user (the table, the file written).

    Example:
        >>> paths, points = read_landmarks("dog-faces/landmarks.csv", "dog-faces")
        >>> x = torch.stack([loaded.preprocessing.eval_transform()(load_image(p)) for p in paths])
        >>> settings = CorrespondSettings(("conv5", "fc7"))
        >>> write_correspondence(loaded, x, "out/corr", settings, paths=paths, points=points)
    """
    from convlens.correspondence.analysis import (
        correspondence_score,
        face_box,
        random_masks,
        square_masks,
        transform_points,
    )
    from convlens.correspondence.landmarks import PARTS, masked_images_grid
    from convlens.images.data import load_image
    from convlens.io.artifacts import markdown_table, save_png, write_result, write_text

    s, pre, out, layers = settings, loaded.preprocessing, Path(out), list(settings.layers)
    sizes = torch.tensor([load_image(p).size[::-1] for p in paths])  # (N, 2) (h, w)
    H, W = images.shape[-2:]
    pts = transform_points(points, sizes, pre.resize, pre.crop)
    names = list(PARTS.values())
    device = images.device
    masks = square_masks(pts, s.mask, H, W, names=names).to(device)
    rand = random_masks(face_box(pts, s.margin), s.mask, H, W, s.repeats, seed=s.seed).to(device)
    corr = correspondence_score(loaded.model, images, masks, layers, part_names=names, random=rand)
    cols, rows = corr.table()
    table = {"title": f"Mean feature sign change over {len(paths) * (len(paths) - 1) // 2} image pairs "
                      f"(Table 1 analog; {s.mask}px masks, random: {s.repeats} draws)",
             "columns": cols, "rows": rows}
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "correspondence.md", f"### {table['title']}\n\n" + markdown_table(cols, rows))
    save_png(masked_images_grid(pre, images.cpu(), masks.cpu(), rand.cpu()), out / "masked_images.png")
    summary = "; ".join(f"{r[0]}: "
                        + ", ".join(f"{layer} {c.split(' ±')[0]}" for layer, c in zip(layers, r[1:], strict=False))
                        for r in rows)
    data = corr.to_dict()
    data.update(images=[str(p) for p in paths], points=pts.tolist(), mask=s.mask)
    write_result(out, "correspond", title="Correspondence analysis (Table 1, Fig. 8)", summary=summary,
                 params={**(params or {}), "layers": layers},
                 figures=[{"path": "masked_images.png", "caption": "Fig. 8: original, then the right eye, left eye "
                           "and nose masked, then random masks on the face (one row per image)", "group": "masks"}],
                 tables=[table], data=data)
    return [markdown_table(cols, rows), f"wrote {out / 'result.json'}"]
