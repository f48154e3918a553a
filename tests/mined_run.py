"""Synthetic mined runs for the explorer's tests and benchmark, in the format ``convlens mine`` writes.

``mine/result.json``: ``data.layers[L] = {num_maps, rule, maps: {m: [entries]}}`` (or, with
``meta=True``, ``{m: {"entries": [...], "saturation": s}}``), each entry with rank, value, index,
image, label, class_name, y, x, box, projection, patch; ``data.class_names``; ``mine/class_means.npz``
(per layer (n_maps, n_classes) float32 + ``__counts__``). Tiles are real PNGs: distinct ones for the
first ``distinct`` maps of each layer, shared ones beyond (enough for server-time measurements).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ["goldfish", "tabby cat", "tiger", "daisy", "volcano", "espresso", "zebra", "airliner"]


def _png(path: Path, rng: np.random.Generator, side: int = 16) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(path)


def make_mined_run(root: Path, layers: dict[str, int] | None = None, *, k: int = 9, distinct: int = 20,
                   classes: list[str] | None = None, images: int = 48, input_size: int = 224, meta: bool = False,
                   figure: bool = True, seed: int = 0) -> Path:
    """Write a run folder with ``mine/`` (and an ``occlusion/`` analysis with one figure); returns ``root``."""
    layers = layers or {"features.3": 24, "features.6": 32, "features.13": 96}
    classes = classes or CLASSES
    rng = np.random.default_rng(seed)
    mine = root / "mine"
    shared = [f"units/shared/{i}_{kind}.png" for i in range(4) for kind in ("proj", "patch")]
    for rel in shared:
        _png(mine / rel, rng)
    labels = rng.integers(0, len(classes), images)
    data_layers, means = {}, {}
    for li, (layer, n) in enumerate(layers.items()):
        maps: dict[str, object] = {}
        saturated: list[int] = []
        for m in range(n):
            scores = np.sort(rng.gamma(2.0, 1.0 + m % 7, k))[::-1].round(4)
            if m % 5 == 0:
                scores[: 3 + m % 4] += 6.0  # a saturated (ReLU6-like) map: the top ones clip at 6
            values = np.minimum(scores, 6.0)
            idx = rng.choice(images, k, replace=False)
            entries = []
            for r in range(k):
                if m < distinct:
                    proj, patch = f"units/{layer}/{m}_{r}_proj.png", f"units/{layer}/{m}_{r}_patch.png"
                    _png(mine / proj, rng)
                    _png(mine / patch, rng)
                else:
                    proj, patch = shared[2 * (r % 4)], shared[2 * (r % 4) + 1]
                y0, x0 = int(rng.integers(0, input_size - 40)), int(rng.integers(0, input_size - 40))
                side = 20 + 12 * li
                lab = int(labels[idx[r]])
                entries.append({
                    "rank": r, "value": float(values[r]), "score": float(scores[r]), "index": int(idx[r]),
                    "image": f"/data/imagenet/{classes[lab]}/img_{int(idx[r]):04d}.JPEG",
                    "label": lab, "class": classes[lab], "y": r, "x": r,
                    "box": [y0, x0, min(input_size, y0 + side), min(input_size, x0 + side)],
                    "projection": proj, "patch": patch,
                })
            maps[str(m)] = {"entries": entries, "saturation": float((values >= 6.0).mean())} if meta else entries
            if values[0] >= 6.0:
                saturated.append(m)
        data_layers[layer] = {"num_maps": n, "rule": "guided", "rule_reason": "no max pooling below it",
                              "ceiling": 6.0, "saturated_maps": saturated, "maps": maps}
        means[layer] = rng.gamma(1.5, 1.0, (n, len(classes))).astype(np.float32)
    counts = np.bincount(labels, minlength=len(classes)).astype(np.int64)
    np.savez(mine / "class_means.npz", __counts__=counts, **means)
    figures = []
    if figure:
        first = next(iter(layers))
        _png(mine / f"{first}_grid.png", rng, 64)
        figures.append({"path": f"{first}_grid.png", "group": first, "caption": f"{first}: top-{k} of 16 maps"})
    result = {
        "schema": "convlens.result/1", "kind": "mine", "title": f"Top-{k} activations per feature map (Fig. 2)",
        "summary": "synthetic", "params": {"k": k, "rule": "auto", "layers": list(layers)},
        "figures": figures, "tables": [],
        "data": {"layers": data_layers, "class_names": classes, "class_means": "class_means.npz",
                 "images": images, "skipped": 0, "input_size": input_size},
    }
    (mine / "result.json").write_text(json.dumps(result))
    if figure:
        occ = root / "occlusion" / "img0"
        _png(occ / "occlusion.png", rng, 48)
        (occ / "result.json").write_text(json.dumps({
            "schema": "convlens.result/1", "kind": "occlusion", "title": "Occlusion of img0 (Fig. 7)",
            "summary": "synthetic", "params": {}, "tables": [], "data": {},
            "figures": [{"path": "occlusion.png", "caption": "occlusion maps of img0"}]}))
    return root


def make_ranged_run(root: Path, per_class: int = 12) -> Path:
    """A run mined by ``convlens mine`` (zfnet-tiny, conv1 and conv5, no projections) over an
    ImageFolder of two classes whose images differ in brightness (class ``b`` brighter, so some maps
    get a label), WITH activation tables; returns the run folder (``root/run``; data in ``root/images``)."""
    from convlens.cli import main
    from convlens.images.data import dataset_preprocessing
    from convlens.nets.checkpoint import save_checkpoint
    from convlens.nets.convnet import build_model

    rng = np.random.default_rng(1)
    images = root / "images"
    for c, (lo, hi) in {"a": (0, 140), "b": (110, 256)}.items():
        (images / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(lo, hi, (40, 44, 3), dtype=np.uint8)).save(images / c / f"{i:03d}.png")
    model = build_model("zfnet-tiny", num_classes=2, init="kaiming", seed=0)
    pre = dataset_preprocessing(str(images), crop=32)
    ckpt = save_checkpoint(root / "tiny.pt", model, preprocessing=pre, class_names=["a", "b"], epoch=1)
    run = root / "run"
    assert main(["mine", "--checkpoint", str(ckpt), "--dataset", str(images), "--split", "train",
                 "--layers", "conv1,conv5", "--k", "3", "--batch-size", "8", "--workers", "0",
                 "--project", "none", "--device", "cpu", "--out", str(run / "mine")]) == 0
    return run
