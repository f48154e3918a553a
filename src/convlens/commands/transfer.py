"""``convlens transfer``: frozen features + linear probes with the Caltech protocol (Tables 4-7, Fig. 9).

Writes into ``--out``: ``result.json`` (kind ``transfer``), ``transfer.md`` (the tables),
``accuracy_vs_n.png`` (Fig. 9 style), ``accuracy_by_layer.png`` (Table 7 style), and
``cache/*.npz`` (features per layer, keyed by a hash of model + layer + dataset + preprocessing).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


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
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="a convlens checkpoint")
    src.add_argument("--arch", help="torchvision:NAME (with --weights)")
    p.add_argument("--weights", help="state_dict file for --arch")
    p.add_argument("--dataset", required=True, help="ImageFolder directory (or fashion-mnist, cifar10)")
    p.add_argument("--data-dir", default=None, help="where a named dataset lives")
    p.add_argument("--per-class", default="15,30", help="training images per class, comma-separated (default 15,30)")
    p.add_argument("--folds", type=int, default=5, help="random train/test folds (default 5)")
    p.add_argument("--n-test", type=int, default=50, help="test images per class, at most (default 50)")
    p.add_argument("--layers", default=None, help="comma-separated layers (default conv1..conv5,fc6,fc7 of a ConvNet)")
    p.add_argument("--probe", default="svm,softmax", help="svm,logreg,softmax (default svm,softmax)")
    p.add_argument("--pool-size", type=int, default=2, help="conv maps are adaptive-avg-pooled to this side (default 2)")
    p.add_argument("--c", type=float, default=1.0, help="inverse L2 strength of the probes (default 1)")
    p.add_argument("--scratch", action="store_true", help="also train a small convnet from scratch on each fold")
    p.add_argument("--scratch-arch", default="zfnet-small", help="architecture trained from scratch (default zfnet-small)")
    p.add_argument("--scratch-epochs", type=int, default=5, help="epochs of the from-scratch baseline (default 5)")
    p.add_argument("--contamination", default=None, metavar="DIR",
                   help="also find near-duplicates of --dataset images in this dataset (e.g. the pretraining set)")
    p.add_argument("--threshold", type=float, default=0.95, help="normalized correlation of a duplicate (default 0.95)")
    p.add_argument("--cache", type=Path, default=None, help="feature cache folder (default OUT/cache)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--limit", type=int, default=None, help="use the first N images")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", choices=("cpu", "cuda", "auto"), default="auto")
    p.add_argument("--out", type=Path, required=True)
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
    from ..transfer import PROBES

    per_class = _csv(args.per_class, "--per-class", int)
    probes = _csv(args.probe, "--probe")
    if any(n < 1 for n in per_class):
        raise ValueError(f"--per-class values must be >= 1, got {args.per_class}")
    bad = [p for p in probes if p not in PROBES]
    if bad:
        raise ValueError(f"--probe: unknown {', '.join(bad)}; expected some of {', '.join(PROBES)}")
    if args.folds < 1 or args.n_test < 1:
        raise ValueError(f"--folds and --n-test must be >= 1, got {args.folds} and {args.n_test}")
    if args.arch and not args.arch.startswith("torchvision:"):
        raise ValueError(f"--arch must be torchvision:NAME (use --checkpoint for convlens models), got {args.arch!r}")
    return per_class, probes


# ----------------------------------------------------------------------------- feature cache


def file_fingerprint(path: str | os.PathLike[str] | None) -> str:
    """Cheap identity of a weights/checkpoint file: resolved path, size and mtime."""
    if path is None:
        return "none"
    p = Path(path).resolve()
    st = p.stat()
    return f"{p}:{st.st_size}:{int(st.st_mtime)}"


def cache_key(model_id: str, layer: str, dataset_id: str, extra: Mapping[str, object]) -> str:
    blob = json.dumps({"model": model_id, "layer": layer, "dataset": dataset_id, **extra}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def cached_features(extract: Callable[[list[str]], Any], layers: Sequence[str], cache_dir: Path, *,
                    model_id: str, dataset_id: str, extra: Mapping[str, object]) -> tuple[Any, dict[str, bool]]:
    """Load each layer's features from ``cache_dir`` (npz) or compute the missing ones in one pass.

    Returns:
        (:class:`convlens.transfer.Features`, {layer: came from the cache}).
    """
    import numpy as np
    import torch

    from ..transfer import Features

    cache_dir.mkdir(parents=True, exist_ok=True)
    paths = {name: cache_dir / f"{name.replace('/', '_')}-{cache_key(model_id, name, dataset_id, extra)}.npz"
             for name in layers}
    hit = {name: p.exists() for name, p in paths.items()}
    feats: dict[str, Any] = {}
    labels = indices = None
    for name in [n for n in layers if hit[n]]:
        with np.load(paths[name]) as z:
            feats[name] = torch.from_numpy(z["features"])
            labels, indices = torch.from_numpy(z["labels"]), torch.from_numpy(z["indices"])
    missing = [n for n in layers if not hit[n]]
    if missing:
        log.info("extracting %s (not cached)", ", ".join(missing))
        fresh = extract(missing)
        labels, indices = fresh.labels, fresh.indices
        for name in missing:
            feats[name] = fresh.features[name]
            tmp = paths[name].with_name(paths[name].stem + ".tmp.npz")
            np.savez(tmp, features=feats[name].numpy(), labels=labels.numpy(), indices=indices.numpy())
            os.replace(tmp, paths[name])
    assert labels is not None and indices is not None
    return Features({n: feats[n] for n in layers}, labels.long(), indices.long()), hit


# ----------------------------------------------------------------------------- outputs


def _fmt(mean: float, std: float) -> str:
    return f"{100 * mean:.1f} ± {100 * std:.1f}"


def protocol_tables(res: Any, *, title: str = "Mean per-class accuracy % (mean ± std over folds)",
                    scratch: Mapping[int, Sequence[float]] | None = None) -> list[dict[str, Any]]:
    """Table 7 layout: a row per (probe, layer), a column per training size (+ the scratch row)."""
    import numpy as np

    ns = sorted({n for (_, _, n) in res.scores})
    keys = list(dict.fromkeys((p, layer) for (layer, p, _) in res.scores))
    rows = [[f"{p} ({layer})", *(_fmt(*res.mean_std(layer, p, n)) if (layer, p, n) in res.scores else "-"
                                  for n in ns)] for p, layer in keys]
    if scratch:
        rows.append(["trained from scratch", *(_fmt(float(np.mean(scratch[n])), float(np.std(scratch[n])))
                                                if n in scratch else "-" for n in ns)])
    return [{"title": f"{title}, {res.folds} folds", "columns": ["probe (layer)", *(f"{n}/class" for n in ns)],
             "rows": rows}]


def per_class_table(res: Any, class_names: Sequence[str]) -> dict[str, Any]:
    """Table 6 style: per-class accuracy of the last layer, each probe, largest n (mean over folds)."""
    layer = list(dict.fromkeys(k[0] for k in res.scores))[-1]
    n = max(k[2] for k in res.scores)
    probes = [p for p in dict.fromkeys(k[1] for k in res.scores) if (layer, p, n) in res.scores]
    cols = ["class", *(f"{p} acc %" for p in probes)]
    rows = []
    for c, name in enumerate(class_names):
        vals = [float(res.per_class[(layer, p, n)][c]) for p in probes]
        rows.append([name, *("-" if v != v else f"{100 * v:.1f}" for v in vals)])
    return {"title": f"Per-class accuracy, {layer}, {n} training images/class (mean over folds)", "columns": cols,
            "rows": rows}


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_vs_n(res: Any, out: Path, scratch: Mapping[int, Sequence[float]] | None = None) -> dict[str, str]:
    """accuracy_vs_n.png (Fig. 9 style): the last layer's accuracy per probe vs training images per class."""
    import numpy as np

    plt = _plt()
    layer = list(dict.fromkeys(k[0] for k in res.scores))[-1]
    ns = sorted({k[2] for k in res.scores})
    fig, ax = plt.subplots(figsize=(5, 3.6), dpi=110)
    for p in dict.fromkeys(k[1] for k in res.scores):
        have = [n for n in ns if (layer, p, n) in res.scores]
        if not have:
            continue
        ms = np.array([res.mean_std(layer, p, n) for n in have]) * 100
        ax.errorbar(have, ms[:, 0], yerr=ms[:, 1], marker="o", capsize=3, label=f"{p} on {layer}")
    if scratch:
        sn = sorted(scratch)
        ax.errorbar(sn, [100 * np.mean(scratch[n]) for n in sn], yerr=[100 * np.std(scratch[n]) for n in sn],
                    marker="s", capsize=3, linestyle="--", label="trained from scratch")
    ax.set(xlabel="training images per class", ylabel="mean per-class accuracy %", ylim=(0, 100))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "accuracy_vs_n.png")
    plt.close(fig)
    return {"path": "accuracy_vs_n.png", "group": "transfer",
            "caption": f"Accuracy vs training images per class (Fig. 9 style), {layer}, mean ± std over folds"}


def plot_by_layer(res: Any, out: Path) -> dict[str, str]:
    """accuracy_by_layer.png (Table 7 style): each probe's accuracy per layer at the largest n."""
    import numpy as np

    plt = _plt()
    layers = list(dict.fromkeys(k[0] for k in res.scores))
    n = max(k[2] for k in res.scores)
    fig, ax = plt.subplots(figsize=(5.5, 3.6), dpi=110)
    for p in dict.fromkeys(k[1] for k in res.scores):
        have = [i for i, layer in enumerate(layers) if (layer, p, n) in res.scores]
        ms = np.array([res.mean_std(layers[i], p, n) for i in have]) * 100
        ax.errorbar([i + 1 for i in have], ms[:, 0], yerr=ms[:, 1], marker="o", capsize=3, label=p)
    ax.set_xticks(range(1, len(layers) + 1), [f"{i}\n{layer}" for i, layer in enumerate(layers, 1)], fontsize=7)
    ax.set(ylabel=f"accuracy % ({n}/class)", ylim=(0, 100), title="Linear probes per layer (Table 7 style)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "accuracy_by_layer.png")
    plt.close(fig)
    return {"path": "accuracy_by_layer.png", "group": "transfer",
            "caption": f"Probe accuracy per layer, {n} training images per class, mean ± std over folds"}


def write_transfer_outputs(out: Path, res: Any, *, curve: Any = None, class_names: Sequence[str] = (),
                           params: Mapping[str, Any] | None = None, scratch: Mapping[int, Sequence[float]] | None = None,
                           duplicates: list[list[Any]] | None = None) -> Path:
    """result.json (kind transfer), transfer.md and the two PNGs. ``curve``: an extra protocol result
    (e.g. many n on the top layer) plotted as accuracy-vs-n instead of ``res``."""
    from ..artifacts import markdown_table, write_result

    out.mkdir(parents=True, exist_ok=True)
    tables = protocol_tables(res, scratch=scratch)
    if curve is not None:
        tables += protocol_tables(curve, title="Accuracy vs training images per class")
    if class_names:
        tables.append(per_class_table(res, class_names))
    if duplicates is not None:
        tables.append({"title": "Near-duplicates (normalized correlation of 32x32 grey images)",
                       "columns": ["image in other set", "image in dataset", "correlation"], "rows": duplicates})
    figures = [plot_vs_n(curve if curve is not None else res, out, scratch), plot_by_layer(res, out)]
    md = "".join(f"### {t['title']}\n\n{markdown_table(t['columns'], t['rows'])}\n" for t in tables)
    (out / "transfer.md").write_text(md)
    best = max(res.scores, key=lambda k: float(res.scores[k].mean()))
    summary = (f"Linear probes on frozen features, {res.folds} folds: best {best[1]} on {best[0]} with "
               f"{best[2]}/class = {_fmt(*res.mean_std(*best))} % mean per-class accuracy")
    data = {"protocol": res.to_dict(), "curve": curve.to_dict() if curve is not None else None,
            "scratch": {str(k): list(v) for k, v in (scratch or {}).items()}, "duplicates": duplicates}
    return write_result(out, "transfer", title="Feature generalization: linear probes (Tables 4-7, Fig. 9)",
                        summary=summary, params=dict(params or {}), figures=figures, tables=tables, data=data)


# ----------------------------------------------------------------------------- the command


def _default_layers(model: Any) -> list[str]:
    names = getattr(model, "layer_names", None)
    if names is None:
        raise ValueError("--layers is required for torchvision models, e.g. --layers features.3,features.6,"
                         "features.10,features.13,features.16,features.18 for mobilenet_v2")
    return [n for n in names if n != "fc8"]


def run(args: argparse.Namespace) -> int:
    from torch.utils.data import DataLoader

    from ..checkpoint import load_model
    from ..data import collate_skip, open_dataset
    from ..train import resolve_device
    from ..transfer import evaluate_probes, extract_features

    per_class, probes = _check_args(args)
    loaded = load_model(args.checkpoint or args.arch, weights=args.weights)
    device = resolve_device(args.device)
    model = loaded.model.to(device)
    layers = _csv(args.layers, "--layers") if args.layers else _default_layers(model)
    ds = open_dataset(args.dataset, "train", loaded.preprocessing, data_dir=args.data_dir, limit=args.limit)
    loader = DataLoader(ds, batch_size=args.batch_size, collate_fn=collate_skip)
    model_id = file_fingerprint(args.checkpoint or args.weights) + f":{loaded.arch}"
    feats, hit = cached_features(
        lambda names: extract_features(model, loader, names, pool_size=args.pool_size, progress=True),
        layers, args.cache or args.out / "cache", model_id=model_id,
        dataset_id=f"{Path(args.dataset).resolve() if Path(args.dataset).exists() else args.dataset}:{len(ds)}",
        extra={"pool": args.pool_size, "pre": loaded.preprocessing.to_dict()})
    res = evaluate_probes(feats, n_train=per_class, probes=probes, folds=args.folds, n_test=args.n_test,
                          seed=args.seed, c=args.c, progress=True)
    scratch = _scratch(args, feats, per_class) if args.scratch else None
    dups = _contamination(args, ds) if args.contamination else None
    write_transfer_outputs(args.out, res, class_names=ds.classes, scratch=scratch, duplicates=dups,
                           params={"model": loaded.arch, "checkpoint": args.checkpoint, "weights": args.weights,
                                   "dataset": args.dataset, "images": len(feats.labels), "layers": layers,
                                   "per_class": per_class, "folds": args.folds, "n_test": args.n_test,
                                   "probes": probes, "pool_size": args.pool_size, "c": args.c, "seed": args.seed,
                                   "cached_layers": [k for k, v in hit.items() if v]})
    for t in protocol_tables(res, scratch=scratch):
        print(t["title"])
        for row in t["rows"]:
            print("  ", *row)
    print(f"wrote {args.out / 'result.json'}")
    return 0


def _scratch(args: argparse.Namespace, feats: Any, per_class: list[int]) -> dict[int, list[float]]:
    """The paper's "trained from scratch" baseline on the same folds (small model, few epochs)."""
    import tempfile

    import torch
    from torch.utils.data import DataLoader, Subset

    from ..checkpoint import load_model
    from ..data import Preprocessing, collate_skip, open_dataset
    from ..model import get_config
    from ..train import RunData, TrainConfig, fit
    from ..transfer import caltech_folds, per_class_accuracy

    crop = get_config(args.scratch_arch).input_size
    pre = Preprocessing(round(crop * 8 / 7), crop, torch.full((3, 1, 1), 127.5), torch.full((3, 1, 1), 64.0))
    train_ds = open_dataset(args.dataset, "train", pre, data_dir=args.data_dir, mode="train", limit=args.limit)
    eval_ds = open_dataset(args.dataset, "train", pre, data_dir=args.data_dir, limit=args.limit)
    k = int(feats.labels.max()) + 1
    out: dict[int, list[float]] = {}
    for n in per_class:
        for tr, te in caltech_folds(feats.labels, n, n_test=args.n_test, folds=args.folds, seed=args.seed):
            tr_idx, te_idx = feats.indices[tr].tolist(), feats.indices[te].tolist()
            with tempfile.TemporaryDirectory() as tmp:
                cfg = TrainConfig(arch=args.scratch_arch, dataset=args.dataset, out=tmp, epochs=args.scratch_epochs,
                                  batch_size=64, init="kaiming", seed=args.seed, device="cpu")
                fit(cfg, datasets=RunData(Subset(train_ds, tr_idx), None, tuple(train_ds.classes), pre))
                model = load_model(Path(tmp) / "checkpoints" / "last.pt").model
            loader = DataLoader(Subset(eval_ds, te_idx), batch_size=128, collate_fn=collate_skip)
            preds, ys = [], []
            with torch.no_grad():
                for x, y, _ in loader:
                    preds.append(model(x).argmax(1))
                    ys.append(y)
            acc = per_class_accuracy(torch.cat(ys), torch.cat(preds), k)
            out.setdefault(n, []).append(float(acc.nanmean()))
            log.info("scratch n=%d fold %d: %.4f", n, len(out[n]), out[n][-1])
    return out


def _contamination(args: argparse.Namespace, ds: Any) -> list[list[Any]]:
    """Pairs (other image, dataset image, correlation) above --threshold."""
    import torch
    from torch.utils.data import DataLoader

    from ..sources import open_raw
    from ..transfer import find_duplicates, image_signatures

    def signatures(raw: Any) -> Any:
        loader = DataLoader(raw, batch_size=256, collate_fn=lambda items: items)
        sig, keep = [], []
        for start, items in zip(range(0, len(raw), 256), loader, strict=False):
            good = [(i, x) for i, (x, _) in enumerate(items, start) if x is not None]
            if good:
                keep += [i for i, _ in good]
                sig.append(image_signatures(torch.stack([x for _, x in good])))
        return torch.cat(sig), keep

    other = open_raw(args.contamination, "train", size=32)
    mine = open_raw(args.dataset, "train", size=32, data_dir=args.data_dir)
    (sa, ka), (sb, kb) = signatures(other), signatures(mine)
    dup = find_duplicates(sa, sb, threshold=args.threshold)
    name = lambda raw, i: getattr(raw, "describe", str)(i)  # noqa: E731
    return [[name(other, ka[i]), name(mine, kb[j]), round(s, 4)]
            for (i, j), s in zip(dup.pairs.tolist(), dup.scores.tolist(), strict=False)]
