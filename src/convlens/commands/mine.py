"""``convlens mine``: top-9 activations of every feature map over a dataset, projected (Fig. 2).

Two passes, each with a progress bar: mining (one streaming pass over the dataset, resumable:
``OUT/mine.state``) and projecting (every map's top-k by default, ``--project all``; ``grid``: the figures' maps only;
``none``: nothing, the explorer projects a map when its page is first opened; per map chunk,
the top-k images are re-read by dataset index; resumable: finished maps are skipped). The rule is
``--rule auto`` by default: the paper's deconvnet where max-pool switches make it follow the image,
guided backprop elsewhere (printed per layer, with the reason, and stored in ``result.json``).

Writes ``OUT/<layer>_grid.png`` (+ ``<layer>_grid_2.png`` ... when ``--maps`` exceeds
``--maps-per-sheet``: labelled Fig. 2 sheets, per map a 3x3 block of projections beside a 3x3 block
of image patches), per-unit PNGs ``OUT/units/<layer>/<map>_<rank>_{proj,patch}.png`` and per-map
``OUT/units/<layer>/<map>.json`` (for the explorer), ``OUT/class_means.npz`` (per layer a float32
(maps, classes) array of the mean per-image ranking statistic per class, plus ``__counts__``),
``OUT/topk.pt`` (the raw top-k tensors) and ``OUT/result.json``. Under ``torchrun
--nproc-per-node P -m convlens mine ...`` the dataset is sharded over P processes and only rank 0
writes.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from convlens.commands._common import add_dataset_args, add_device_arg, add_model_args, add_out_arg, positive_int


def maps_arg(text: str) -> int | str:
    """argparse ``type`` of ``--maps``: ``all`` or a positive integer."""
    return "all" if text == "all" else positive_int(text)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "mine",
        help="top-k activations of every feature map over a dataset, projected to pixels (Fig. 2)",
        description="One streaming pass over a dataset keeps each feature map's k strongest activations "
                    "(one per image); they are projected back to pixels (the deconvnet on the paper's nets, "
                    "guided backprop on nets without max pooling: --rule) and shown beside their image "
                    "patches, as in Fig. 2 of Zeiler & Fergus.",
    )
    add_model_args(p)
    add_dataset_args(p, split="test", batch_size=64, workers=2)
    p.add_argument("--layers", default=None,
                   help="comma-separated layers (default: conv1..conv5 of a convlens model, else a few evenly "
                        "spaced blocks; see 'convlens summary')")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the random subset of maps shown and of the order among tied activations")
    p.add_argument("--k", type=positive_int, default=9, help="activations kept per map (default 9)")
    p.add_argument("--per-image", type=positive_int, default=1, help="entries one image may give one map (default 1)")
    p.add_argument("--rule", choices=("auto", "deconvnet", "guided", "gradient"), default="auto",
                   help="projection rule (default auto: deconvnet where max-pool switches make it follow the "
                        "image, guided backprop elsewhere)")
    p.add_argument("--maps", type=maps_arg, default=16,
                   help="maps per layer shown in the figures: N (random, seeded) or all (default 16)")
    p.add_argument("--maps-per-sheet", type=positive_int, default=16,
                   help="maps per figure sheet (4 per row; default 16, about 1700 px wide)")
    p.add_argument("--project", choices=["all", "grid", "none"], default="all",
                   help="project every map's top-k (per-unit PNGs for the explorer; default), only the figures' "
                        "maps, or none (fastest: no figures; the explorer projects a map when its page is opened)")
    p.add_argument("--save-every", type=positive_int, default=50, help="save resumable state every N batches")
    p.add_argument("--shard", default=None, metavar="I/N",
                   help="mine only the I-th of N contiguous parts of the dataset (0 <= I < N; e.g. one job of a "
                        "SLURM array each); merge the parts with 'convlens merge --out RUN SHARD...'")
    add_device_arg(p)
    add_out_arg(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch
    from torch.utils.data import DataLoader

    from convlens.commands._common import load_model_from_args, open_dataset_from_args, parse_layers, resolve_device_arg
    from convlens.images.data import collate_skip
    from convlens.nets.fingerprint import weights_fingerprint
    from convlens.topk.acttable import write_image_names
    from convlens.topk.mining import mine_top_activations
    from convlens.topk.shards import parse_shard, shard_range, write_shard_info
    from convlens.training import distributed

    shard = parse_shard(args.shard) if args.shard else None
    device = resolve_device_arg(args)
    info = distributed.setup(device)
    try:
        loaded = load_model_from_args(args, device)
        layers = parse_layers(args.layers, loaded)
        ds = open_dataset_from_args(args, loaded)
        part = shard_range(len(ds), *shard, args.batch_size) if shard else None
        if part is not None and not len(part):
            raise ValueError(f"--shard {args.shard}: this part holds no images ({len(ds)} images make "
                             f"{-(-len(ds) // args.batch_size)} batches); use at most "
                             f"{-(-len(ds) // args.batch_size)} parts")
        loader = DataLoader(ds, batch_size=args.batch_size, shuffle=False, num_workers=args.workers,
                            sampler=part, collate_fn=collate_skip, pin_memory=device.type == "cuda")
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        spec = args.checkpoint or f"{args.arch}:{args.weights}"
        args.weights_hash = weights_fingerprint(loaded.model)  # the model by value: once per run
        key = (f"{spec}@{args.weights_hash}|{args.dataset}|{args.data_dir}|{args.split}|{args.limit}|{args.normalize}|"
               f"{args.input_size}|{','.join(layers)}")
        tops = mine_top_activations(loaded.model, loader, layers, k=args.k, per_image=args.per_image,
                                    state_path=out / "mine.state", save_every=args.save_every,
                                    state_key=key + (f"|shard {shard[0]}/{shard[1]}" if shard else ""),
                                    progress=True, tie_seed=args.seed, num_classes=len(ds.classes) or None,
                                    table=out / "acts")
        if not info.main:
            return 0
        write_image_names(out / "acts", ds)
        if shard:
            write_shard_info(out, shard, {**vars(args), "num_classes": len(ds.classes) or None}, key, len(ds))
            print(f"shard {shard[0]}/{shard[1]}: {len(part or ())} images mined into {out}; "  # type: ignore[arg-type]
                  "merge all parts with 'convlens merge --out RUN SHARD...'")
            return 0
        from convlens.io.artifacts import atomic_write

        atomic_write(out / "topk.pt", lambda f: torch.save({n: t.to_dict() for n, t in tops.items()}, f), binary=True)
        write_mine_outputs(args, loaded, ds, tops, out)
        print(out / "result.json")
        return 0
    finally:
        distributed.teardown(info)


def write_mine_outputs(args: argparse.Namespace, loaded: Any, ds: Any, tops: dict[str, Any], out: Path) -> None:
    """Project (resumably), draw the labelled sheets, write class_means.npz and result.json."""
    import torch

    from convlens.commands._common import preprocessing_params
    from convlens.io.artifacts import save_png, write_result
    from convlens.io.progress import progress_bar
    from convlens.topk.record import mine_source
    from convlens.topk.units import display_class_names, layer_sheets, map_entries, project_mined

    names = display_class_names(getattr(ds, "classes", []), loaded.class_names)
    gen = torch.Generator().manual_seed(args.seed)
    shown = {}
    for layer, top in tops.items():
        c = top.values.shape[0]
        pick = range(c) if args.maps == "all" else torch.randperm(c, generator=gen)[:min(args.maps, c)].tolist()
        shown[layer] = sorted(pick)
    k = next(iter(tops.values())).values.shape[1]
    todo = {n: list(range(t.values.shape[0])) if args.project == "all" else shown[n] if args.project == "grid" else []
            for n, t in tops.items()}
    total = sum(len(maps) * k for maps in todo.values())
    describe = getattr(ds, "describe", None)
    figures, rows, layers_data = [], [], {}
    with progress_bar(total=total, unit="unit", desc="projecting", dynamic_ncols=True) as bar:
        for layer, top in tops.items():
            c = top.values.shape[0]
            maps = todo[layer]
            done = project_mined(loaded.model, ds, top, out, maps=maps, rule=args.rule,
                                 to_pixels=loaded.preprocessing.denormalize, class_names=names, progress=bar,
                                 weights=getattr(args, "weights_hash", None))
            sat = [int(m) for m in torch.nonzero(top.saturated).flatten().tolist()]
            bar.write(f"{layer}: rule {done.rule} ({done.reason})" + (f"; {len(sat)}/{c} maps saturate at "
                      f"{top.ceiling:g}: ranked by their pre-clip value" if top.ceiling is not None else "")
                      + (f"; {done.reused} maps already done" if done.reused else ""))
            sheets = layer_sheets(out, layer, done.entries, shown[layer], rule=done.rule, saturated=sat,
                                  maps_per_sheet=args.maps_per_sheet) if args.project != "none" else []
            for i, sheet in enumerate(sheets):
                path = f"{layer}_grid.png" if i == 0 else f"{layer}_grid_{i + 1}.png"
                save_png(sheet, out / path)
                part = shown[layer][i * args.maps_per_sheet:(i + 1) * args.maps_per_sheet]
                figures.append({"path": path, "group": layer,
                                "caption": f"{layer}: top-{k} activations of maps {', '.join(map(str, part))}; left: "
                                           f"{done.rule} projections (activation), right: image patches (class)"})
            # every map: the projected ones with their PNG paths, the others without (projected on demand)
            entries = {str(m): done.entries[m] if m in done.entries
                       else map_entries(top, m, names, describe, paths=False) for m in range(c)}
            all_k = int((top.values >= top.ceiling).all(1).sum()) if top.ceiling is not None else 0
            rows.append([layer, c, done.rule, f"{float(top.values[:, 0].mean()):.4g}",
                         f"{float(top.values[:, -1].mean()):.4g}", int((top.values[:, 0] <= 0).sum()), len(sat), all_k])
            layers_data[layer] = {"num_maps": c, "rule": done.rule, "rule_reason": done.reason, "ceiling": top.ceiling,
                                  "saturated_maps": sat, "shown_maps": shown[layer], "maps": entries}
    _save_class_means(out, tops)
    first = next(iter(tops.values()))
    write_result(
        out, "mine", title=f"Top-{args.k} activations per feature map (Fig. 2)",
        summary=f"Strongest activation of each map in each of {first.num_images} {args.split} images "
                f"({first.num_skipped} unreadable skipped), top {args.k} per map "
                f"({'one per image' if args.per_image == 1 else f'up to {args.per_image} per image'}), projected "
                f"({', '.join(n + ': ' + d['rule'] for n, d in layers_data.items())}) beside the receptive-field "
                "patches. Clipped activations (ReLU6) are ranked by their pre-clip value; remaining ties in a "
                f"seeded random order (seed {args.seed}).",
        params={"checkpoint": args.checkpoint, "arch": args.arch or loaded.arch, "weights": args.weights,
                "dataset": args.dataset, "split": args.split, "layers": list(tops), "k": args.k,
                "per_image": args.per_image, "maps": args.maps, "limit": args.limit, "seed": args.seed,
                "project": args.project, "rule": args.rule,
                "source": mine_source(checkpoint=args.checkpoint, arch=args.arch, weights=args.weights,
                                      normalize=args.normalize, input_size=args.input_size, classes=args.classes,
                                      dataset=args.dataset, data_dir=args.data_dir, split=args.split,
                                      limit=args.limit)} | preprocessing_params(loaded),
        figures=figures,
        tables=[{"title": "Mined activations per layer",
                 "columns": ["layer", "maps", "rule", "mean top-1 value", f"mean top-{args.k} value",
                             "dead maps (top-1 = 0)", "saturated maps (top-1 at the clip)",
                             f"maps with all top-{args.k} at the clip"],
                 "rows": rows}],
        data={"layers": layers_data, "skipped": first.num_skipped, "images": first.num_images,
              "class_names": names, "class_means": "class_means.npz", "input_size": loaded.input_size},
    )


def _save_class_means(out: Path, tops: dict[str, Any]) -> None:
    """``class_means.npz``: per layer a float32 (maps, classes) array, and ``__counts__`` (classes,) int64."""
    import numpy as np

    from convlens.io.artifacts import atomic_write

    arrays = {n: t.class_means.numpy().astype(np.float32) for n, t in tops.items() if t.class_means is not None}
    counts = next((t.class_counts for t in tops.values() if t.class_counts is not None), None)
    if counts is not None:
        arrays["__counts__"] = counts.numpy().astype(np.int64)
    atomic_write(out / "class_means.npz", lambda f: np.savez(f, **arrays), binary=True)
