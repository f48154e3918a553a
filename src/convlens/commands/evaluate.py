"""``convlens evaluate``: top-1/top-5 error of checkpoints, center crop or 10-crop, and their ensemble
(the softmax averaged over models: the paper's multi-convnet rows of Table 2)."""
from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from ..artifacts import write_result
from ..checkpoint import load_model
from ..data import collate_skip, open_dataset
from ..evaluation import average_log_proba, predict_log_proba, topk_errors
from ..train import random_subset, resolve_device

COLUMNS = ["model", "crops", "top-1 err", "top-5 err", "loss", "images"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="top-1/top-5 error of checkpoints (center or 10-crop) and of their ensemble",
        description="Evaluate one or more convlens checkpoints on a dataset's test split. With several "
        "checkpoints, their softmax outputs are also averaged (an ensemble, as in Table 2).",
        epilog="example: convlens evaluate --checkpoint runs/a/checkpoints/last.pt runs/b/checkpoints/last.pt "
        "--dataset fashion-mnist --ten-crop --out runs/eval",
    )
    p.add_argument("--checkpoint", nargs="+", required=True, help="convlens checkpoint file(s)")
    p.add_argument("--dataset", required=True, help="fashion-mnist, cifar10 or an ImageFolder directory")
    p.add_argument("--data-dir", default=None, help="where the named dataset lives")
    p.add_argument("--split", default="test", choices=("test", "val", "train"), help="default test")
    p.add_argument("--ten-crop", action="store_true", help="average the softmax over the paper's 10 crops")
    p.add_argument("--limit", type=int, default=None, help="use a fixed random N images (all classes)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--out", default=None, help="write OUT/result.json (kind 'evaluate')")
    p.set_defaults(func=run)


def _check(args: argparse.Namespace) -> None:
    if args.limit is not None and args.limit <= 0:
        raise ValueError(f"--limit must be a positive number of images, got {args.limit}")
    if args.batch_size <= 0:
        raise ValueError(f"--batch-size must be positive, got {args.batch_size}")
    for c in args.checkpoint:
        if not Path(c).is_file():
            raise FileNotFoundError(f"--checkpoint {c}: no such file (a convlens checkpoint, e.g. RUN/checkpoints/last.pt)")


def run(args: argparse.Namespace) -> int:
    _check(args)
    device = resolve_device(args.device)
    mode = "tencrop" if args.ten_crop else "eval"
    rows: list[list] = []
    log_probas: list[torch.Tensor] = []
    labels = torch.empty(0, dtype=torch.long)
    for spec in args.checkpoint:
        loaded = load_model(spec, map_location=device)
        ds = random_subset(open_dataset(args.dataset, args.split, loaded.preprocessing, data_dir=args.data_dir,
                                        mode=mode), args.limit)
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
        last = rows[-1]
        write_result(Path(args.out), "evaluate", title="Classification error (Table 2)",
                     summary=f"{last[0]} on {args.dataset} ({args.split}, {last[1]}): top-1 error {last[2]}, "
                     f"top-5 error {last[3]}",
                     params={k: v for k, v in vars(args).items() if k != "func"}, figures=[],
                     tables=[{"title": "Top-1 / top-5 error", "columns": COLUMNS, "rows": rows}],
                     data={"rows": [dict(zip(COLUMNS, r, strict=False)) for r in rows]})
        print(f"wrote {Path(args.out) / 'result.json'}")
    return 0


def _row(name: str, ten_crop: bool, res: dict[str, float]) -> list:
    return [name, "10" if ten_crop else "1", f"{res['top1_err']:.4f}", f"{res['top5_err']:.4f}",
            f"{res['loss']:.4f}", int(res["images"])]


def _print_table(rows: list[list]) -> None:
    width = max(len(str(r[0])) for r in [*rows, COLUMNS])
    print(f"{COLUMNS[0]:<{width}}  " + "  ".join(f"{c:>9}" for c in COLUMNS[1:]))
    for r in rows:
        print(f"{r[0]:<{width}}  " + "  ".join(f"{v!s:>9}" for v in r[1:]))
