"""``convlens evaluate``: top-1/top-5 error of checkpoints, center crop or 10-crop, and their ensemble
(the softmax averaged over models: the paper's multi-convnet rows of Table 2)."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from convlens.commands._common import add_dataset_args, add_device_arg, add_out_arg
from convlens.commands._model import add_model_args

COLUMNS = ["model", "crops", "top-1 err", "top-5 err", "loss", "images"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="top-1/top-5 error of checkpoints (center or 10-crop) and of their ensemble",
        description="Evaluate one or more convlens checkpoints (or one model spec with --arch) on a dataset's "
        "test split. With several checkpoints, their softmax outputs are also averaged (an ensemble, as in Table 2).",
        epilog="example: convlens evaluate --checkpoint runs/a/checkpoints/last.pt runs/b/checkpoints/last.pt "
        "--dataset fashion-mnist --ten-crop --out runs/eval",
    )
    add_model_args(p, multiple=True)
    add_dataset_args(p, split="test", batch_size=128)
    p.add_argument("--ten-crop", action="store_true", help="average the softmax over the paper's 10 crops")
    add_device_arg(p)
    add_out_arg(p, required=False, help="write OUT/result.json (kind 'evaluate')")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch
    from torch.utils.data import DataLoader

    from convlens.commands._common import open_dataset_from_args, resolve_device_arg
    from convlens.commands._model import load_model_from_args, model_spec
    from convlens.images.data import collate_skip
    from convlens.io.artifacts import write_result
    from convlens.training.evaluation import average_log_proba, predict_log_proba, topk_errors

    device = resolve_device_arg(args)
    mode = "tencrop" if args.ten_crop else "eval"
    rows: list[list] = []
    log_probas: list[torch.Tensor] = []
    labels = torch.empty(0, dtype=torch.long)
    if args.checkpoint and len(args.checkpoint) > 1:
        if args.arch is not None:
            raise ValueError("--checkpoint with several files and --arch both given; expected one of them")
        specs = list(args.checkpoint)
    else:
        specs = [str(model_spec(args))]
    for spec in specs:
        loaded = load_model_from_args(args, device, spec=spec)
        ds = open_dataset_from_args(args, loaded, mode=mode, check_classes=True)
        loader = DataLoader(ds, args.batch_size, num_workers=args.workers, collate_fn=collate_skip)
        logp, y = predict_log_proba(loaded.model, loader, ten_crop=args.ten_crop, progress=True)
        if log_probas and not torch.equal(labels, y):
            raise ValueError(f"--checkpoint {spec} saw different images than the first checkpoint; "
                             "ensemble members must read the same dataset")
        labels = y
        log_probas.append(logp)
        rows.append(_row(spec, args.ten_crop, topk_errors(logp, y)))
    if len(log_probas) > 1:
        ensemble = topk_errors(average_log_proba(log_probas), labels)
        rows.append(_row(f"ensemble of {len(log_probas)}", args.ten_crop, ensemble))
    _print_table(rows)
    if args.out:
        from convlens.commands._model import run_params

        last = rows[-1]
        write_result(Path(args.out), "evaluate", title="Classification error (Table 2)",
                     summary=f"{last[0]} on {args.dataset} ({args.split}, {last[1]}): top-1 error {last[2]}, "
                     f"top-5 error {last[3]}",
                     params=run_params(args, loaded), figures=[],
                     tables=[{"title": "Top-1 / top-5 error", "columns": COLUMNS, "rows": rows}],
                     data={"rows": [dict(zip(COLUMNS, r, strict=False)) for r in rows]})
        print(f"wrote {Path(args.out) / 'result.json'}")
    return 0


def _row(name: str, ten_crop: bool, res: dict[str, float]) -> list[Any]:
    return [name, "10" if ten_crop else "1", f"{res['top1_err']:.4f}", f"{res['top5_err']:.4f}",
            f"{res['loss']:.4f}", int(res["images"])]


def _print_table(rows: list[list]) -> None:
    width = max(len(str(r[0])) for r in [*rows, COLUMNS])
    print(f"{COLUMNS[0]:<{width}}  " + "  ".join(f"{c:>9}" for c in COLUMNS[1:]))
    for r in rows:
        print(f"{r[0]:<{width}}  " + "  ".join(f"{v!s:>9}" for v in r[1:]))
