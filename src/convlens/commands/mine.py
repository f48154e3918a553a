"""``convlens mine``: top-9 activations of every feature map over a dataset, projected (Fig. 2).

Writes ``OUT/<layer>_grid.png`` (for a subset of maps: a 3x3 block of deconvnet projections
beside a 3x3 block of the image patches, as in the paper), per-unit PNGs
``OUT/units/<layer>/<map>_<rank>_{proj,patch}.png`` for the explorer, ``OUT/topk.pt`` (the raw
top-k tensors) and ``OUT/result.json``. Under ``torchrun --nproc-per-node P -m convlens mine ...``
the dataset is sharded over P processes and only rank 0 writes.
"""
from __future__ import annotations

import argparse
import math
import os
from pathlib import Path
from typing import Any

from ._common import add_dataset_args, add_device_arg, add_model_args, add_out_arg, positive_int


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "mine",
        help="top-k activations of every feature map over a dataset, projected to pixels (Fig. 2)",
        description="One streaming pass over a dataset keeps each feature map's k strongest activations "
                    "(one per image); they are projected with the deconvnet and shown beside their image "
                    "patches, as in Fig. 2 of Zeiler & Fergus.",
    )
    add_model_args(p)
    add_dataset_args(p, split="test", batch_size=64, workers=2)
    p.add_argument("--layers", default=None,
                   help="comma-separated layers (default: conv1..conv5 of a convlens model, else a few evenly "
                        "spaced blocks; see 'convlens summary')")
    p.add_argument("--seed", type=int, default=0, help="seed of the random subset of maps shown")
    p.add_argument("--k", type=positive_int, default=9, help="activations kept per map (default 9)")
    p.add_argument("--per-image", type=positive_int, default=1, help="entries one image may give one map (default 1)")
    p.add_argument("--maps", type=positive_int, default=16, help="maps per layer in the grid figure (random, seeded)")
    p.add_argument("--project", choices=["all", "grid"], default="all",
                   help="project every map's top-k (per-unit PNGs for the explorer) or only the grid's")
    p.add_argument("--save-every", type=positive_int, default=50, help="save resumable state every N batches")
    add_device_arg(p)
    add_out_arg(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch
    from torch.utils.data import DataLoader

    from .. import distributed
    from ..data import collate_skip
    from ..topk import mine_top_activations
    from ._common import load_model_from_args, open_dataset_from_args, parse_layers, resolve_device_arg

    device = resolve_device_arg(args)
    info = distributed.setup(device)
    try:
        loaded = load_model_from_args(args, device)
        layers = parse_layers(args.layers, loaded)
        ds = open_dataset_from_args(args, loaded)
        loader = DataLoader(ds, batch_size=args.batch_size, shuffle=False, num_workers=args.workers,
                            collate_fn=collate_skip, pin_memory=device.type == "cuda")
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        spec = args.checkpoint or f"{args.arch}:{args.weights}"
        stamp = os.stat(args.checkpoint or args.weights).st_mtime if (args.checkpoint or args.weights) else 0
        key = (f"{spec}@{stamp}|{args.dataset}|{args.data_dir}|{args.split}|{args.limit}|{args.normalize}|"
               f"{args.input_size}|{','.join(layers)}")
        tops = mine_top_activations(loaded.model, loader, layers, k=args.k, per_image=args.per_image,
                                    state_path=out / "mine.state", save_every=args.save_every, state_key=key,
                                    progress=True)
        if not info.main:
            return 0
        torch.save({name: t.to_dict() for name, t in tops.items()}, out / "topk.pt")
        write_mine_outputs(args, loaded, ds, tops, out)
        print(out / "result.json")
        return 0
    finally:
        distributed.teardown(info)


def write_mine_outputs(args: argparse.Namespace, loaded: Any, ds: Any, tops: dict[str, Any], out: Path) -> None:
    import torch
    from tqdm import tqdm

    from ..artifacts import write_result
    from ..topk import unit_tiles

    gen = torch.Generator().manual_seed(args.seed)
    figures, rows, layers_data = [], [], {}
    for layer, top in tops.items():
        c = top.values.shape[0]
        grid_maps = sorted(torch.randperm(c, generator=gen)[:min(args.maps, c)].tolist())
        maps = list(range(c)) if args.project == "all" else grid_maps
        tiles = unit_tiles(loaded.model, ds, top, maps, to_pixels=loaded.preprocessing.denormalize)
        proj, patch = display_tiles(tiles.projections, tiles.patches)
        entries = {}
        for i, m in enumerate(tqdm(maps, desc=f"{layer} PNGs", unit="map", leave=False)):
            entries[str(m)] = save_unit_pngs(out, layer, m, top, tiles, proj[i], patch[i], ds)
        rows_of = [maps.index(m) for m in grid_maps]
        save_png_(fig2_grid(proj[rows_of], patch[rows_of]), out / f"{layer}_grid.png")
        figures.append({"path": f"{layer}_grid.png", "group": layer,
                        "caption": f"{layer}: top-{top.values.shape[1]} activations of {len(grid_maps)} random maps "
                                   f"(maps {', '.join(map(str, grid_maps))}); left: deconvnet projections, "
                                   "right: image patches"})
        dead = int((top.values[:, 0] <= 0).sum())
        rows.append([layer, c, f"{float(top.values[:, 0].mean()):.4g}", f"{float(top.values[:, -1].mean()):.4g}", dead])
        layers_data[layer] = {"num_maps": c, "maps": entries}
    first = next(iter(tops.values()))
    write_result(
        out, "mine", title=f"Top-{args.k} activations per feature map (Fig. 2)",
        summary=f"Strongest activation of each map in each of {first.num_images} {args.split} images "
                f"({first.num_skipped} unreadable skipped), top {args.k} per map "
                f"({'one per image' if args.per_image == 1 else f'up to {args.per_image} per image'}), projected "
                "with the deconvnet beside the receptive-field patches.",
        params={"checkpoint": args.checkpoint or args.arch, "dataset": args.dataset, "split": args.split,
                "layers": list(tops), "k": args.k, "per_image": args.per_image, "maps": args.maps,
                "limit": args.limit, "seed": args.seed, "project": args.project},
        figures=figures,
        tables=[{"title": "Mined activations per layer",
                 "columns": ["layer", "maps", "mean top-1 value", f"mean top-{args.k} value", "dead maps (top-1 = 0)"],
                 "rows": rows}],
        data={"layers": layers_data, "skipped": first.num_skipped, "images": first.num_images},
    )


def display_tiles(projections: Any, patches: Any, min_side: int = 48) -> tuple[Any, Any]:
    """Paper-style contrast normalization of projections; nearest upscaling of small tiles."""
    from ..viz import normalize_for_display, upscale_nearest

    factor = max(1, math.ceil(min_side / projections.shape[-1]))
    return upscale_nearest(normalize_for_display(projections), factor), upscale_nearest(patches.clamp(0, 1), factor)


def fig2_grid(proj: Any, patch: Any, per_row: int = 4) -> Any:
    """(M, K, 3, S, S) projections and patches -> one image: per map, a 3x3 block of projections
    beside a 3x3 block of patches (missing ranks left white); ``per_row`` maps per row."""
    import torch

    from ..viz import make_grid

    m, k = proj.shape[:2]
    side = max(1, math.ceil(math.sqrt(k)))
    blank = torch.ones((side * side - k, *tuple(proj.shape[2:])))
    pairs = []
    for i in range(m):
        left = make_grid(torch.cat([proj[i], blank]), nrow=side, pad=1, pad_value=1.0)
        right = make_grid(torch.cat([patch[i], blank]), nrow=side, pad=1, pad_value=1.0)
        pairs.append(torch.cat([left, torch.ones(3, left.shape[1], 4), right], -1))
    return make_grid(torch.stack(pairs), nrow=per_row, pad=8, pad_value=1.0)


def save_png_(img: Any, path: Path) -> str:
    from ..artifacts import save_png

    save_png(img, path)
    return str(path)


def save_unit_pngs(out: Path, layer: str, m: int, top: Any, tiles: Any, proj: Any, patch: Any, ds: Any) -> list[dict]:
    """PNGs and result.json entries for the top-k of map ``m``."""
    rel = Path("units") / layer
    entries = []
    i = tiles.maps.tolist().index(m)
    for r in range(top.values.shape[1]):
        save_png_(proj[r], out / rel / f"{m}_{r}_proj.png")
        save_png_(patch[r], out / rel / f"{m}_{r}_patch.png")
        idx = int(top.dataset_indices[m, r])
        describe = getattr(ds, "describe", None)
        entries.append({
            "rank": r, "value": float(top.values[m, r]), "index": idx,
            "image": describe(idx) if describe else f"dataset:{idx}",
            "y": int(top.positions[m, r, 0]), "x": int(top.positions[m, r, 1]),
            "box": [int(v) for v in tiles.boxes[i, r]],
            "projection": f"{rel}/{m}_{r}_proj.png", "patch": f"{rel}/{m}_{r}_patch.png",
        })
    return entries
