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

from convlens.commands._common import add_dataset_args, add_device_arg, add_model_args, add_out_arg, positive_int


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "diagnose",
        help="layer-1/2 diagnostics of Fig. 6: dominating, dead and near-zero filters, frequency bands, aliasing",
        description="Measure what Fig. 6 shows: per-filter RMS (one filter dominating), dead filters, the "
        "low/mid/high frequency energy of layer-1 filters, and grid (aliasing) energy of layer-2 deconvnet "
        "projections at the layer-1 stride's frequencies. Layers 1 and 2 are the first two convolutions the "
        "model runs, on any CNN. With --compare, a side-by-side table.",
        epilog="example: convlens diagnose --checkpoint runs/zf/checkpoints/last.pt --compare "
        "runs/alex/checkpoints/last.pt --dataset cifar10 --data-dir ../shared/data/cifar10 --out runs/zf/diagnose",
    )
    add_model_args(p)
    p.add_argument("--compare", default=None, metavar="SPEC",
                   help="a second model to put side by side: a convlens checkpoint or any model spec")
    p.add_argument("--compare-weights", default=None, metavar="FILE", help="state_dict for --compare")
    add_dataset_args(p, split="test", limit=64, batch_size=64)
    p.add_argument("--channels", type=positive_int, default=16, help="layer-2 channels projected (default 16)")
    p.add_argument("--threshold", type=float, default=3.0, help="dominance flag: max RMS / median RMS (default 3)")
    p.add_argument("--dead-eps", type=float, default=1e-3, help="dead: fraction of positive activations below this")
    add_device_arg(p)
    add_out_arg(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from convlens.commands._common import (
        load_model_from_args,
        model_spec,
        preprocessing_params,
        resolve_device_arg,
        say_preprocessing,
    )
    from convlens.diagnose.analysis import comparison_table, diagnose
    from convlens.diagnose.figures import diagnosis_figures
    from convlens.io.artifacts import markdown_table, write_result, write_text
    from convlens.nets.loading import load_model

    device = resolve_device_arg(args)
    if args.compare_weights is not None and args.compare is None:
        raise ValueError("--compare-weights goes with --compare SPEC (the model they fit)")
    models = [load_model_from_args(args, device)]
    specs = [str(model_spec(args))]
    if args.compare is not None:
        models.append(load_model(args.compare, weights=args.compare_weights, normalize=args.normalize,
                                 input_size=args.input_size, map_location=device))
        specs.append(args.compare)
        say_preprocessing(args, models[-1])
    diags = []
    for loaded in models:  # each model sees the sample through its own preprocessing
        images = _sample(args, loaded).to(device)
        diags.append(diagnose(loaded.model, images, channels=args.channels, dominance_threshold=args.threshold,
                              dead_eps=args.dead_eps, name=loaded.arch))
    tags = ["a", "b"][: len(diags)]
    names = [f"{tag}: {d.name} ({_short(s)})" for tag, d, s in zip(tags, diags, specs, strict=False)]
    cols, rows = comparison_table(diags[0], diags[1] if len(diags) > 1 else None, names=names)
    args.out.mkdir(parents=True, exist_ok=True)
    figures = [f for tag, d in zip(tags, diags, strict=False) for f in diagnosis_figures(d, tag, args.out)]
    table = {"title": "Fig. 6 diagnostics" + (" side by side" if len(diags) > 1 else ""), "columns": cols, "rows": rows}
    write_text(args.out / "diagnose.md", f"### {table['title']}\n\n" + markdown_table(cols, rows))
    main = dataclasses.replace(diags[0], compare=diags[1]) if len(diags) > 1 else diags[0]
    m = [d.metrics() for d in diags]
    summary = "; ".join(
        f"{n.split(' (')[0]}: dominance {x['RMS max / median (dominance)']:.2f}, mid-freq share "
        f"{x['layer-1 energy mid freq']:.2f}, layer-2 grid energy {x['layer-2 aliasing (grid energy)']:.4f}"
        for n, x in zip(names, m, strict=False))
    write_result(args.out, "diagnose", title="Architecture diagnostics (Fig. 6)", summary=summary,
                 params={"model": specs[0], "compare": args.compare, "dataset": args.dataset,
                         "split": args.split, "limit": args.limit, "channels": args.channels,
                         "threshold": args.threshold, "dead_eps": args.dead_eps, "layers": list(diags[0].layer_names)}
                 | preprocessing_params(models[0])
                 | ({"compare_preprocessing": preprocessing_params(models[1])["preprocessing"]} if len(models) > 1
                    else {}),
                 figures=figures, tables=[table], data=main.to_dict())
    print(markdown_table(cols, rows))
    print(f"wrote {args.out / 'result.json'}")
    return 0


def _short(spec: str) -> str:
    """RUN of RUN/checkpoints/last.pt; the spec itself otherwise."""
    p = Path(spec)
    return p.parent.parent.name if p.suffix and p.parent.name == "checkpoints" else spec


def _sample(args: argparse.Namespace, loaded: Any) -> Any:
    """The --limit images of the dataset (spread evenly over the split) as one (N, 3, H, W) batch."""
    from convlens.commands._common import open_dataset_from_args
    from convlens.images.data import collate_skip

    ds = open_dataset_from_args(args, loaded)
    batch = collate_skip([ds[i] for i in range(len(ds))])
    if len(batch[0]) == 0:
        raise ValueError(f"--dataset {args.dataset}: no readable images in the sample")
    return batch[0]
