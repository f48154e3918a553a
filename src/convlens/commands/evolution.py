"""``convlens evolution``: how chosen feature maps change over training (Fig. 4).

Reads ``RUN/checkpoints/epoch_NNN.pt`` (all of them when there are at most 8, else the paper's
epochs 1, 2, 5, 10, 20, 30, 40, 64 that exist, or 8 spread over the run), mines the strongest activation of each chosen map
over the training set at each checkpoint, projects it, and writes per layer
``OUT/<layer>_evolution.png`` (rows = maps, columns = epochs, with the mean correlation of
consecutive columns underneath) and ``OUT/result.json``.
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

from .mine import add_model_args, check_positive, parse_layers, resolve_device


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evolution",
        help="strongest activation of chosen maps at each training checkpoint, projected (Fig. 4)",
        description="For each checkpoint of a training run, find each chosen map's strongest activation over "
                    "the training set and project it with the deconvnet: Fig. 4 of Zeiler & Fergus, with a "
                    "per-layer number for when the features stop changing.",
    )
    p.add_argument("--run", required=True, help="run directory with checkpoints/epoch_NNN.pt")
    add_model_args(p)
    p.add_argument("--split", default="train", help="split searched (default train, as in the paper)")
    p.add_argument("--maps", type=int, default=8, help="random maps per layer (seeded)")
    p.add_argument("--epochs", default=None,
                   help="comma-separated epochs (default: all if <= 8, else the paper's 1,2,5,10,20,30,40,64 that exist)")
    p.add_argument("--threshold", type=float, default=0.9, help="correlation that counts as 'stopped changing'")
    p.add_argument("--out", default=None, help="output folder (default RUN/evolution)")
    p.set_defaults(func=run)


def _epochs(args: argparse.Namespace, available: dict[int, Path]) -> list[int]:
    from ..evolution import pick_epochs

    if args.epochs is None:
        return pick_epochs(list(available))
    try:
        wanted = [int(e) for e in args.epochs.split(",") if e.strip()]
    except ValueError:
        raise ValueError(f"--epochs must be comma-separated integers, got {args.epochs!r}") from None
    missing = [e for e in wanted if e not in available]
    if missing or not wanted:
        raise ValueError(f"--epochs {args.epochs}: no checkpoint for {missing or 'any'}; "
                         f"available: {', '.join(map(str, available))}")
    return wanted


def run(args: argparse.Namespace) -> int:
    import torch
    from torch.utils.data import DataLoader

    from ..checkpoint import load_model
    from ..data import collate_skip, open_dataset
    from ..evolution import feature_evolution, find_checkpoints
    from ..hooks import capture

    check_positive(args, "maps", "limit", "batch-size")
    checkpoints = find_checkpoints(args.run)
    epochs = _epochs(args, checkpoints)
    device = resolve_device(args.device)
    last = load_model(checkpoints[epochs[-1]], map_location=device)
    layers = parse_layers(args.layers, last.model)
    ds = open_dataset(args.dataset, args.split, last.preprocessing, data_dir=args.data_dir, limit=args.limit)
    loader = DataLoader(ds, batch_size=args.batch_size, shuffle=False, num_workers=args.workers,
                        collate_fn=collate_skip)
    size = last.preprocessing.crop
    shapes = capture(last.model.eval(), torch.zeros(1, 3, size, size, device=device), layers)
    gen = torch.Generator().manual_seed(args.seed)
    maps = {layer: sorted(torch.randperm(a.shape[1], generator=gen)[:args.maps].tolist()) for layer, a in shapes.items()}
    models = ((e, load_model(checkpoints[e], map_location=device).model) for e in epochs)
    evo = feature_evolution(models, loader, ds, maps, threshold=args.threshold, progress=True)
    out = Path(args.out or Path(args.run) / "evolution")
    write_evolution_outputs(args, evo, out, num_images=len(ds))
    print(out / "result.json")
    return 0


def write_evolution_outputs(args: argparse.Namespace, evo: Any, out: Path, num_images: int) -> None:
    from ..artifacts import save_png, write_result

    out.mkdir(parents=True, exist_ok=True)
    pairs = [f"{a}→{b}" for a, b in zip(evo.epochs, evo.epochs[1:], strict=False)]
    figures, rows, layers = [], [], {}
    for layer in evo.maps:
        mean = evo.mean_correlation(layer).tolist()
        stable = evo.converged_epoch(layer)
        save_png(evolution_grid(evo, layer), out / f"{layer}_evolution.png")
        figures.append({"path": f"{layer}_evolution.png", "group": layer,
                        "caption": f"{layer}: strongest activation of maps {', '.join(map(str, evo.maps[layer].tolist()))} "
                                   f"(rows) at epochs {', '.join(map(str, evo.epochs))} (columns); below: mean "
                                   f"correlation of consecutive columns; stable (r >= {evo.threshold}) from epoch "
                                   f"{stable if stable is not None else '- (never)'}"})
        rows.append([layer] + [_fmt(v) for v in mean] + [stable if stable is not None else "-"])
        layers[layer] = {
            "maps": evo.maps[layer].tolist(), "mean_correlation": [_num(v) for v in mean], "converged_epoch": stable,
            "correlation": [[_num(v) for v in r] for r in evo.correlations[layer].tolist()],
            "values": evo.values[layer].tolist(), "indices": evo.indices[layer].tolist(),
        }
    write_result(
        out, "evolution", title="Feature evolution during training (Fig. 4)",
        summary=f"Strongest activation over {num_images} {args.split} images of {args.maps} random maps per layer, "
                f"at epochs {', '.join(map(str, evo.epochs))}, projected with the deconvnet; a layer counts as "
                f"converged from the first epoch after which consecutive projections keep correlation >= {evo.threshold}.",
        params={"run": str(args.run), "dataset": args.dataset, "split": args.split, "layers": list(evo.maps),
                "maps": args.maps, "epochs": evo.epochs, "limit": args.limit, "seed": args.seed,
                "threshold": evo.threshold},
        figures=figures,
        tables=[{"title": "Mean correlation of each map's projection between consecutive epochs",
                 "columns": ["layer", *pairs, "stable from epoch"], "rows": rows}],
        data={"epochs": evo.epochs, "threshold": evo.threshold, "layers": layers, "images": num_images},
    )


def _num(v: float) -> float | None:
    return None if v != v else round(float(v), 4)  # NaN (dead map) -> null


def _fmt(v: float) -> str:
    return "-" if v != v else f"{v:.2f}"


def evolution_grid(evo: Any, layer: str) -> Any:
    """Rows = maps, columns = epochs; epoch labels on top, mean correlations of neighbours below."""
    import numpy as np
    from PIL import Image, ImageDraw

    from ..viz import make_grid, normalize_for_display, to_uint8, upscale_nearest

    proj = evo.projections[layer]  # (M, E, 3, S, S)
    tiles = upscale_nearest(normalize_for_display(proj), max(1, math.ceil(48 / proj.shape[-1])))
    m, e = tiles.shape[:2]
    pad = 4
    grid = make_grid(tiles.reshape(m * e, *tiles.shape[2:]), nrow=e, pad=pad, pad_value=1.0)
    img = Image.fromarray(to_uint8(grid))
    side = tiles.shape[-1] + pad
    canvas = Image.new("RGB", (img.width + 60, img.height + 44), "white")
    canvas.paste(img, (60, 18))
    draw = ImageDraw.Draw(canvas)
    for j, epoch in enumerate(evo.epochs):
        draw.text((60 + pad + j * side, 3), f"ep {epoch}", fill="black")
    for i, ch in enumerate(evo.maps[layer].tolist()):
        draw.text((4, 18 + pad + i * side + side // 2 - 6), f"{layer}:{ch}", fill="black")
    for j, r in enumerate(evo.mean_correlation(layer).tolist()):
        draw.text((60 + pad + (j + 1) * side - 14, img.height + 20), _fmt(r), fill="black")
    stable = evo.converged_epoch(layer)
    draw.text((4, img.height + 20), "r:", fill="black")
    draw.text((60, img.height + 32), f"stable (r>={evo.threshold}) from epoch {stable if stable is not None else '-'}",
              fill="black")
    return np.asarray(canvas)
