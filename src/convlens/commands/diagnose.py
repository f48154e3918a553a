"""``convlens diagnose``: Fig. 6 as numbers, for one checkpoint or two side by side.

Writes into ``--out``: ``result.json`` (kind ``diagnose``), ``diagnose.md`` (the comparison
table), and per model ``<tag>_conv1_filters.png`` (each filter contrast-normalized),
``<tag>_conv1_filters_shared.png`` (one scale for all filters: a dominating filter stands out,
Fig. 6a) and ``<tag>_layer2_projections.png`` (deconvnet projections of layer-2 channels, Fig. 6d/e).
"""
from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "diagnose",
        help="layer-1/2 diagnostics of Fig. 6: dominating, dead and near-zero filters, frequency bands, aliasing",
        description="Measure what Fig. 6 shows: per-filter RMS (one filter dominating), dead filters, the "
        "low/mid/high frequency energy of layer-1 filters, and grid (aliasing) energy of layer-2 deconvnet "
        "projections at the layer-1 stride's frequencies. With --compare, a side-by-side table.",
        epilog="example: convlens diagnose --checkpoint runs/zf/checkpoints/last.pt --compare "
        "runs/alex/checkpoints/last.pt --dataset cifar10 --data-dir ../shared/data/cifar10 --out runs/zf/diagnose",
    )
    p.add_argument("--checkpoint", required=True, help="a convlens checkpoint")
    p.add_argument("--compare", default=None, help="a second convlens checkpoint to put side by side")
    p.add_argument("--dataset", required=True, help="fashion-mnist, cifar10 or an ImageFolder directory")
    p.add_argument("--data-dir", default=None, help="where a named dataset lives")
    p.add_argument("--split", default="test", choices=("train", "test"), help="data sample's split (default test)")
    p.add_argument("--limit", type=int, default=64, help="images in the data sample (random, seeded; default 64)")
    p.add_argument("--channels", type=int, default=16, help="layer-2 channels projected (default 16)")
    p.add_argument("--threshold", type=float, default=3.0, help="dominance flag: max RMS / median RMS (default 3)")
    p.add_argument("--dead-eps", type=float, default=1e-3, help="dead: fraction of positive activations below this")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", choices=("cpu", "cuda", "auto"), default="auto")
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(func=run)


def _sample(args: argparse.Namespace, preprocessing: Any) -> Any:
    import torch

    from ..data import collate_skip, open_dataset

    ds = open_dataset(args.dataset, args.split, preprocessing, data_dir=args.data_dir)
    if len(ds) == 0:
        raise ValueError(f"--dataset {args.dataset} has no images")
    idx = torch.randperm(len(ds), generator=torch.Generator().manual_seed(args.seed))[: args.limit].sort().values
    batch = collate_skip([ds[int(i)] for i in idx])
    if len(batch[0]) == 0:
        raise ValueError(f"no readable images in the sample of --dataset {args.dataset}")
    return batch[0]


def _figures(d: Any, tag: str, out: Path) -> list[dict[str, str]]:
    from ..artifacts import save_png
    from ..viz import make_grid, normalize_for_display, upscale_nearest

    w = d.filters  # (C, 3, k, k)
    factor = max(1, 48 // w.shape[-1])
    each = upscale_nearest(make_grid(normalize_for_display(w), nrow=16, pad=1), factor)
    shared = (w / (2 * w.abs().max().clamp_min(1e-12)) + 0.5).clamp(0, 1)  # one scale for every filter
    shared = upscale_nearest(make_grid(shared, nrow=16, pad=1), factor)
    proj = make_grid(normalize_for_display(d.projections), nrow=8, pad=2)
    proj = upscale_nearest(proj, max(1, 640 // max(proj.shape[-2:])))
    figs = []
    for name, img, caption in (
        ("conv1_filters", each, f"{d.name}: layer-1 filters, each contrast-normalized"),
        ("conv1_filters_shared", shared, f"{d.name}: layer-1 filters on one shared scale; dominance "
                                         f"{d.dominance:.2f} (filter {d.dominant_filter})"),
        ("layer2_projections", proj, f"{d.name}: deconvnet projections of layer-2 channels (strongest image each); "
                                     f"grid energy {float(d.aliasing.nanmean()):.4f}"),
    ):
        save_png(img, out / f"{tag}_{name}.png")
        figs.append({"path": f"{tag}_{name}.png", "caption": caption, "group": tag})
    return figs


def run(args: argparse.Namespace) -> int:
    from ..artifacts import markdown_table, write_result
    from ..checkpoint import load_model
    from ..diagnose import comparison_table, diagnose
    from ..train import resolve_device

    if args.limit < 1 or args.channels < 1:
        raise ValueError(f"--limit and --channels must be >= 1, got {args.limit} and {args.channels}")
    device = resolve_device(args.device)
    specs = [args.checkpoint] + ([args.compare] if args.compare else [])
    diags = []
    for spec in specs:  # each model sees the sample through its own preprocessing
        loaded = load_model(spec, map_location=device)
        images = _sample(args, loaded.preprocessing).to(device)
        model: Any = loaded.model  # a ConvNet: diagnose raises TypeError for other models
        diags.append(diagnose(model, images, channels=args.channels, dominance_threshold=args.threshold,
                              dead_eps=args.dead_eps))
    tags = ["a", "b"][: len(diags)]
    names = [f"{tag}: {d.name} ({Path(s).parent.parent.name or Path(s).name})" for tag, d, s in zip(tags, diags, specs, strict=False)]
    cols, rows = comparison_table(diags[0], diags[1] if len(diags) > 1 else None, names=names)
    args.out.mkdir(parents=True, exist_ok=True)
    figures = [f for tag, d in zip(tags, diags, strict=False) for f in _figures(d, tag, args.out)]
    table = {"title": "Fig. 6 diagnostics" + (" side by side" if len(diags) > 1 else ""), "columns": cols, "rows": rows}
    (args.out / "diagnose.md").write_text(f"### {table['title']}\n\n" + markdown_table(cols, rows))
    main = dataclasses.replace(diags[0], compare=diags[1]) if len(diags) > 1 else diags[0]
    m = [d.metrics() for d in diags]
    summary = "; ".join(
        f"{n.split(' (')[0]}: dominance {x['RMS max / median (dominance)']:.2f}, mid-freq share "
        f"{x['layer-1 energy mid freq']:.2f}, layer-2 grid energy {x['layer-2 aliasing (grid energy)']:.4f}"
        for n, x in zip(names, m, strict=False))
    write_result(args.out, "diagnose", title="Architecture diagnostics (Fig. 6)", summary=summary,
                 params={"checkpoint": args.checkpoint, "compare": args.compare, "dataset": args.dataset,
                         "split": args.split, "limit": args.limit, "channels": args.channels,
                         "threshold": args.threshold, "dead_eps": args.dead_eps, "seed": args.seed},
                 figures=figures, tables=[table], data=main.to_dict())
    print(markdown_table(cols, rows))
    print(f"wrote {args.out / 'result.json'}")
    return 0
