"""``convlens invariance``: feature invariance to vertical translation, scale and rotation (Fig. 5).

Writes into ``--out``: ``invariance.png`` (rows: translate, scale, rotate; columns: example
transformed images, the feature distance of each ``--layers`` layer, P(true label); one curve
per image), ``result.json`` (kind ``invariance``, all curves in ``data``) and ``invariance.md``.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "invariance",
        help="feature distances and true-label probability under translation, scale, rotation (Fig. 5)",
        description="Translate (vertically), scale and rotate each image; plot the Euclidean distance between the "
        "feature vectors of the transformed and the original image at each layer, and the true-label probability.",
        epilog="example: convlens invariance --checkpoint C --images a.jpg b.jpg --layers conv1,fc7 --out runs/zf/invariance",
    )
    p.add_argument("--checkpoint", default=None, help="a convlens checkpoint")
    p.add_argument("--arch", default=None, help="instead of --checkpoint: torchvision:NAME")
    p.add_argument("--weights", default=None, help="state_dict file for --arch")
    p.add_argument("--images", nargs="+", required=True, help="image files")
    p.add_argument("--labels", default=None, help="comma-separated true class per image (default: predicted)")
    p.add_argument("--layers", default="conv1,fc7", help="comma-separated layers (default conv1,fc7)")
    p.add_argument("--translate", default=None,
                   help="vertical shifts in pixels, comma-separated (default: -60..60 step 10, scaled to the input size)")
    p.add_argument("--scale", default="0.6,0.7,0.8,0.9,1.0,1.1,1.2,1.3,1.4,1.5,1.6,1.7,1.8", help="scale factors")
    p.add_argument("--rotate", default=",".join(str(a) for a in range(0, 361, 15)), help="rotation angles in degrees")
    p.add_argument("--device", choices=("cpu", "cuda", "auto"), default="cpu")
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(func=run)


def _floats(text: str, flag: str) -> list[float]:
    try:
        vals = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"{flag} must be comma-separated numbers, got {text!r}") from None
    if not vals:
        raise ValueError(f"{flag} needs at least one value")
    return vals


def render(curves: dict[str, Any], examples: dict[str, torch.Tensor], names: list[str], layers: list[str]) -> Any:
    """Fig. 5 as a matplotlib Figure. ``examples[t]``: (K, 3, H, W) in [0, 1] (the first image transformed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..viz import make_grid

    units = {"translate": "vertical translation (pixels)", "scale": "scale factor", "rotate": "rotation (degrees)"}
    fig, ax = plt.subplots(len(curves), 2 + len(layers), figsize=(4.2 * (2 + len(layers)), 3.4 * len(curves)),
                           squeeze=False)
    for r, (t, c) in enumerate(curves.items()):
        strip = make_grid(examples[t], nrow=len(examples[t]), pad=2)
        ax[r, 0].imshow(strip.permute(1, 2, 0).numpy())
        ax[r, 0].set_axis_off()
        ax[r, 0].set_title(f"{t}: " + ", ".join(f"{v:g}" for v in _example_params(c.params)), fontsize=9)
        for j, layer in enumerate(layers):
            for i, n in enumerate(names):
                ax[r, 1 + j].plot(c.params.numpy(), c.distances[layer][i].cpu().numpy(), marker=".", label=n)
            ax[r, 1 + j].set_title(f"{layer}: Euclidean distance", fontsize=9)
        for i, n in enumerate(names):
            ax[r, -1].plot(c.params.numpy(), c.probs[i].cpu().numpy(), marker=".", label=n)
        ax[r, -1].set_ylim(-0.02, 1.02)
        ax[r, -1].set_title("P(true label)", fontsize=9)
        for a in ax[r, 1:]:
            a.set_xlabel(units[t], fontsize=8)
            a.grid(alpha=0.3)
    ax[0, -1].legend(fontsize=7, loc="best")
    fig.tight_layout()
    return fig


def _example_params(params: torch.Tensor, k: int = 5) -> list[float]:
    idx = torch.linspace(0, len(params) - 1, min(k, len(params))).round().long()
    return [float(params[i]) for i in idx]


def run(args: argparse.Namespace) -> int:
    from ..artifacts import markdown_table, write_result
    from ..invariance import invariance_curves, transform_images
    from ..train import resolve_device
    from .occlude import load

    device = resolve_device(args.device)
    loaded = load(args, device)
    pre = loaded.preprocessing
    for p in args.images:
        if not Path(p).is_file():
            raise FileNotFoundError(f"--images: not found: {p}")
    images = torch.stack([pre.load(p) for p in args.images]).to(device)
    layers = [s.strip() for s in args.layers.split(",") if s.strip()]
    labels = [int(v) for v in _floats(args.labels, "--labels")] if args.labels else None
    if labels is not None and len(labels) != len(images):
        raise ValueError(f"--labels has {len(labels)} values for {len(images)} images")
    H = images.shape[-2]
    translate = _floats(args.translate, "--translate") if args.translate else \
        [float(round(v * H / 224)) for v in range(-60, 61, 10)]
    sweeps = {"translate": translate, "scale": _floats(args.scale, "--scale"), "rotate": _floats(args.rotate, "--rotate")}
    curves = {t: invariance_curves(loaded.model, images, transform=t, params=v, layers=layers, labels=labels)
              for t, v in sweeps.items()}
    examples = {t: torch.stack([pre.denormalize(transform_images(images[:1], t, v)[0].cpu())
                                for v in _example_params(c.params)]) for t, c in curves.items()}
    names = [Path(p).stem[:24] for p in args.images]
    args.out.mkdir(parents=True, exist_ok=True)
    render(curves, examples, names, layers).savefig(args.out / "invariance.png", dpi=80)
    cls = loaded.class_names
    first = curves["translate"].labels
    cols = ["image", "true label", "clean P(true)"] + [f"max {t} distance {layer}" for t in sweeps for layer in layers[-1:]] \
        + [f"min P(true) under {t}" for t in sweeps]
    ident = {"translate": 0.0, "scale": 1.0, "rotate": 0.0}
    rows = []
    for i, n in enumerate(names):
        clean = _clean_prob(loaded.model, images[i:i + 1], int(first[i]))
        rows.append([n, cls[int(first[i])] if int(first[i]) < len(cls) else str(int(first[i])), f"{clean:.3f}"]
                    + [f"{float(curves[t].distances[layers[-1]][i].max()):.3g}" for t in sweeps]
                    + [f"{float(curves[t].probs[i].min()):.3f}" for t in sweeps])
    table = {"title": "Invariance summary (Fig. 5)", "columns": cols, "rows": rows}
    (args.out / "invariance.md").write_text(f"### {table['title']}\n\n" + markdown_table(cols, rows))
    summary = (f"{len(images)} images; translate {min(translate):g}..{max(translate):g} px, scale "
               f"{min(sweeps['scale']):g}..{max(sweeps['scale']):g}, rotate {min(sweeps['rotate']):g}.."
               f"{max(sweeps['rotate']):g} deg; distances at {', '.join(layers)}; fill = mean (0)")
    write_result(args.out, "invariance", title="Feature invariance (Fig. 5)", summary=summary,
                 params={k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "func"}
                 | {"identity": ident},
                 figures=[{"path": "invariance.png", "caption": "rows: vertical translation, scale, rotation; columns: "
                           "first image transformed, feature distance per layer, P(true label); one curve per image",
                           "group": "invariance"}],
                 tables=[table], data={"curves": {t: c.to_dict() for t, c in curves.items()}, "images": args.images})
    print(markdown_table(cols, rows))
    print(f"wrote {args.out / 'result.json'}")
    return 0


def _clean_prob(model: Any, x: torch.Tensor, label: int) -> float:
    with torch.no_grad():
        return float(model(x).softmax(1)[0, label])
