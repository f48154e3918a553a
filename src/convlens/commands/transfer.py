"""``convlens transfer``: frozen features + linear probes with the Caltech protocol (Tables 4-7, Fig. 9).

Writes into ``--out``: ``result.json`` (kind ``transfer``), ``transfer.md`` (the tables),
``accuracy_vs_n.png`` (Fig. 9 style), ``accuracy_by_layer.png`` (Table 7 style), and
``cache/*.npz`` (features per layer, keyed by a hash of model + layer + dataset + preprocessing).
The protocol lives in :mod:`convlens.transfer.probes`, the cache in :mod:`convlens.transfer.feature_cache`, the
outputs in :mod:`convlens.transfer.report`, the baselines in :mod:`convlens.transfer.baselines`.
"""
from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from convlens.commands._common import add_dataset_args, add_device_arg, add_out_arg
from convlens.commands._model import add_model_args
from convlens.commands._numbers import positive_int


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "transfer",
        help="linear probes on frozen features, Caltech protocol (Tables 4-7, Fig. 9)",
        description="Extract frozen features of several layers (conv maps adaptive-pooled), train linear "
        "probes (svm: LinearSVC, logreg: LogisticRegression, softmax: torch L-BFGS) on n images per class "
        "over random folds, test on up to --n-test of the rest; report mean per-class accuracy +- std.",
        epilog="example: convlens transfer --arch torchvision:mobilenet_v2 --weights mobilenet_v2_imagenet.pt "
        "--dataset caltech101 --per-class 15,30 --folds 5 --layers features.3,features.6,features.13,features.18 "
        "--out runs/transfer",
    )
    add_model_args(p)
    add_dataset_args(p, split="train", batch_size=32, workers=0)
    p.add_argument("--per-class", default="15,30", help="training images per class, comma-separated (default 15,30)")
    p.add_argument("--folds", type=positive_int, default=5, help="random train/test folds (default 5)")
    p.add_argument("--n-test", type=positive_int, default=50, help="test images per class, at most (default 50)")
    p.add_argument("--layers", default=None,
                   help="comma-separated layers (default conv1..conv5,fc6,fc7 of a convlens model, else a few evenly "
                        "spaced blocks; see 'convlens summary')")
    p.add_argument("--probe", default="svm,softmax", help="svm,logreg,softmax (default svm,softmax)")
    p.add_argument("--pool-size", type=positive_int, default=2,
                   help="conv maps are adaptive-avg-pooled to this side (default 2)")
    p.add_argument("--c", type=float, default=1.0, help="inverse L2 strength of the probes (default 1)")
    p.add_argument("--scratch", action="store_true", help="also train a small convnet from scratch on each fold")
    p.add_argument("--scratch-arch", default="zfnet-small",
                   help="architecture trained from scratch (default zfnet-small)")
    p.add_argument("--scratch-epochs", type=positive_int, default=5,
                   help="epochs of the from-scratch baseline (default 5)")
    p.add_argument("--contamination", default=None, metavar="DIR",
                   help="also find near-duplicates of --dataset images in this dataset (e.g. the pretraining set)")
    p.add_argument("--threshold", type=float, default=0.95, help="normalized correlation of a duplicate (default 0.95)")
    p.add_argument("--cache", type=Path, default=None, help="feature cache folder (default OUT/cache)")
    p.add_argument("--seed", type=int, default=0)
    add_device_arg(p)
    add_out_arg(p)
    p.set_defaults(func=run)


def _csv(text: str, name: str, cast: Callable[[str], Any] = str) -> list[Any]:
    try:
        items = [cast(v.strip()) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"{name} must be comma-separated values, got {text!r}") from None
    if not items:
        raise ValueError(f"{name} is empty; e.g. {name} 15,30")
    return items


def _check_args(args: argparse.Namespace) -> tuple[list[int], list[str]]:
    from convlens.transfer.probes import PROBES

    per_class = _csv(args.per_class, "--per-class", int)
    probes = _csv(args.probe, "--probe")
    if any(n < 1 for n in per_class):
        raise ValueError(f"--per-class values must be >= 1, got {args.per_class}")
    bad = [p for p in probes if p not in PROBES]
    if bad:
        raise ValueError(f"--probe: unknown {', '.join(bad)}; expected some of {', '.join(PROBES)}")
    return per_class, probes


def _layers(args: argparse.Namespace, loaded: Any) -> list[str]:
    """--layers, or conv1..conv5,fc6,fc7 of a convlens model, or the model's default layers."""
    from convlens.commands._common import parse_layers

    names = getattr(loaded.model, "layer_names", None)
    if args.layers is None and names is not None:
        return [n for n in names if n != "fc8"]
    return parse_layers(args.layers, loaded)


def run(args: argparse.Namespace) -> int:
    from torch.utils.data import DataLoader

    from convlens.commands._common import open_dataset_from_args, resolve_device_arg
    from convlens.commands._model import load_model_from_args, model_spec, run_params
    from convlens.images.data import collate_skip
    from convlens.transfer.baselines import contamination_pairs, scratch_baseline
    from convlens.transfer.feature_cache import cached_features, file_fingerprint
    from convlens.transfer.probes import evaluate_probes, extract_features
    from convlens.transfer.report import protocol_tables, write_transfer_outputs

    per_class, probes = _check_args(args)
    device = resolve_device_arg(args)
    loaded = load_model_from_args(args, device)
    model = loaded.model
    layers = _layers(args, loaded)
    ds = open_dataset_from_args(args, loaded)
    n_classes = len(set(ds.labels()))
    if n_classes < 2:
        raise ValueError(f"--dataset {args.dataset}: the probes need images of at least 2 classes, got {n_classes} "
                         f"class in {len(ds)} images; raise --limit or give a dataset with more classes")
    loader = DataLoader(ds, batch_size=args.batch_size, num_workers=args.workers, collate_fn=collate_skip)
    source = args.weights if args.arch else model_spec(args)
    model_id = (file_fingerprint(source) if source and Path(source).is_file() else "none") + f":{loaded.arch}"
    feats, hit = cached_features(
        lambda names: extract_features(model, loader, names, pool_size=args.pool_size, progress=True),
        layers, args.cache or args.out / "cache", model_id=model_id,
        dataset_id=f"{Path(args.dataset).resolve() if Path(args.dataset).exists() else args.dataset}:"
                   f"{args.split}:{len(ds)}",
        extra={"pool": args.pool_size, "pre": loaded.preprocessing.to_dict()})
    res = evaluate_probes(feats, n_train=per_class, probes=probes, folds=args.folds, n_test=args.n_test,
                          seed=args.seed, c=args.c, progress=True)
    scratch = scratch_baseline(args.dataset, feats, per_class, data_dir=args.data_dir, arch=args.scratch_arch,
                               epochs=args.scratch_epochs, folds=args.folds, n_test=args.n_test, seed=args.seed,
                               limit=args.limit) if args.scratch else None
    dups = contamination_pairs(args.contamination, args.dataset, data_dir=args.data_dir,
                               threshold=args.threshold) if args.contamination else None
    write_transfer_outputs(args.out, res, class_names=ds.classes, scratch=scratch, duplicates=dups,
                           params=run_params(args, loaded) | {
                               "images": len(feats.labels), "layers": layers, "per_class": per_class,
                               "probes": probes, "cached_layers": [k for k, v in hit.items() if v]})
    for t in protocol_tables(res, scratch=scratch):
        print(t["title"])
        for row in t["rows"]:
            print("  ", *row)
    print(f"wrote {args.out / 'result.json'}")
    return 0
