"""What ``convlens invariance`` writes (Fig. 5), callable from Python: the paper's sweeps, the curves,
the figure, the summary table and ``result.json``.

:func:`write_invariance` runs the three sweeps (:func:`paper_sweeps` gives the paper's, scaled to
the input size), and writes ``invariance.png`` (rows: translate, scale, rotate; columns: example
transformed images, the feature distance of each layer, the probability of the true label, or
without labels of the class predicted for the untransformed image), ``invariance.md`` and
``result.json`` (kind ``invariance``, all curves in ``data``).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

__all__ = ["paper_sweeps", "write_invariance"]

IDENTITY = {"translate": 0.0, "scale": 1.0, "rotate": 0.0}


def paper_sweeps(size: int) -> dict[str, list[float]]:
    """The sweeps of Fig. 5 for ``size``-pixel inputs: vertical shifts -60..60 px in steps of 10
    (scaled from the paper's 224 px), scales 0.6..1.8, rotations 0..360 degrees in steps of 15.

    Example:
        >>> paper_sweeps(224)["translate"][:3]
        [-60.0, -50.0, -40.0]
    """
    return {"translate": [float(round(v * size / 224)) for v in range(-60, 61, 10)],
            "scale": [0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.2, 1.3, 1.4, 1.5, 1.6, 1.7, 1.8],
            "rotate": [float(a) for a in range(0, 361, 15)]}


def _clean_prob(model: Any, x: torch.Tensor, label: int) -> float:
    with torch.no_grad():
        return float(model(x).softmax(1)[0, label])


def _table(loaded: Any, images: torch.Tensor, curves: dict[str, Any], names: list[str], layers: list[str],
           given: bool) -> dict[str, Any]:
    cls, first = loaded.class_names, curves["translate"].labels
    kind, short = ("true label", "true") if given else ("predicted class", "predicted")
    cols = ["image", kind, f"clean P({short})"] + [f"max {t} distance {layer}" for t in curves
                                                    for layer in layers[-1:]] \
        + [f"min P({short}) under {t}" for t in curves]
    rows = []
    for i, n in enumerate(names):
        clean = _clean_prob(loaded.model, images[i:i + 1], int(first[i]))
        rows.append([n, cls[int(first[i])] if int(first[i]) < len(cls) else str(int(first[i])), f"{clean:.3f}"]
                    + [f"{float(curves[t].distances[layers[-1]][i].max()):.3g}" for t in curves]
                    + [f"{float(curves[t].probs[i].min()):.3f}" for t in curves])
    return {"title": "Invariance summary (Fig. 5)", "columns": cols, "rows": rows}


def write_invariance(loaded: Any, images: torch.Tensor, out: str | Path, *, layers: list[str],
                     image_paths: Sequence[str | Path], sweeps: Mapping[str, Sequence[float]] | None = None,
                     labels: list[int] | None = None, params: Mapping[str, Any] | None = None) -> list[str]:
    """Fig. 5 for ``images``: sweep, draw and write ``invariance.png``, ``invariance.md`` and ``result.json``.

    Args:
        loaded: a :class:`convlens.nets.loading.Loaded` (model, preprocessing, class names).
        images: (N, 3, H, W) normalized images on the model's device.
        out: output folder (created).
        layers: the layers whose feature distances are plotted.
        image_paths: one file per image (named in the figure and ``result.json``).
        sweeps: ``{"translate": px, "scale": factors, "rotate": degrees}`` (default :func:`paper_sweeps`).
        labels: the true class of each image (default: the class predicted for the untransformed image).
        params: recorded first in ``result.json`` ``params`` (e.g. the command's flags).

    Returns:
        The lines to show the user (the summary table, the file written).

    Raises:
        ValueError: ``labels`` not one class index per image.

    Example:
        >>> x = torch.stack([pre.eval_transform()(load_image(p)) for p in ("a.jpg", "b.jpg")])
        >>> write_invariance(loaded, x, "out/inv", layers=["conv1", "fc7"], image_paths=["a.jpg", "b.jpg"])
    """
    from convlens.invariance.analysis import invariance_curves, transform_images
    from convlens.invariance.figures import example_params, render_invariance
    from convlens.io.artifacts import markdown_table, save_figure, write_result, write_text

    n_out, out = len(loaded.class_names), Path(out)
    if labels is not None and len(labels) != len(images):
        raise ValueError(f"--labels has {len(labels)} values for {len(images)} images; give one class index per image")
    if labels is not None and any(not 0 <= v < n_out for v in labels):
        raise ValueError(f"--labels {','.join(map(str, labels))}: expected class indices in 0..{n_out - 1}")
    sweeps = {**paper_sweeps(images.shape[-2]), **(sweeps or {})}
    curves = {t: invariance_curves(loaded.model, images, transform=t, params=list(v), layers=layers, labels=labels)
              for t, v in sweeps.items()}
    examples = {t: torch.stack([loaded.preprocessing.denormalize(transform_images(images[:1], t, v)[0].cpu())
                                for v in example_params(c.params)]) for t, c in curves.items()}
    names = [Path(p).stem[:24] for p in image_paths]
    out.mkdir(parents=True, exist_ok=True)
    save_figure(render_invariance(curves, examples, names, layers), out / "invariance.png", dpi=80)
    table = _table(loaded, images, curves, names, layers, labels is not None)
    cols, rows = table["columns"], table["rows"]
    write_text(out / "invariance.md", f"### {table['title']}\n\n" + markdown_table(cols, rows))
    kind = "true label" if labels is not None else "predicted class"
    translate, scale, rotate = sweeps["translate"], sweeps["scale"], sweeps["rotate"]
    summary = (f"{len(images)} images; translate {min(translate):g}..{max(translate):g} px, scale "
               f"{min(scale):g}..{max(scale):g}, rotate {min(rotate):g}..{max(rotate):g} deg; distances at "
               f"{', '.join(layers)}; fill = mean (0); probability of "
               + ("the true label (--labels)" if labels is not None else
                  "the class predicted for each untransformed image (no --labels)"))
    write_result(out, "invariance", title="Feature invariance (Fig. 5)", summary=summary,
                 params={**(params or {}), "identity": IDENTITY, "layers": layers},
                 figures=[{"path": "invariance.png", "caption": "rows: vertical translation, scale, rotation; columns: "
                           f"first image transformed, feature distance per layer, P({kind}); one curve per image",
                           "group": "invariance"}],
                 tables=[table], data={"curves": {t: c.to_dict() for t, c in curves.items()},
                                       "images": [str(p) if isinstance(p, Path) else p for p in image_paths]})
    return [markdown_table(cols, rows), f"wrote {out / 'result.json'}"]
