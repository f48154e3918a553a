"""The transfer protocol's two checks beside the probes: a small convnet trained from scratch on the
same folds (the paper's "trained from scratch" rows), and near-duplicates between the dataset and
another one (e.g. the pretraining set: contamination would inflate probe accuracy)."""
from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["contamination_pairs", "scratch_baseline"]

log = logging.getLogger(__name__)


def scratch_baseline(dataset: str, features: Any, per_class: Sequence[int], *, data_dir: str | Path | None = None,
                     arch: str = "zfnet-small", epochs: int = 5, folds: int = 5, n_test: int = 50, seed: int = 0,
                     limit: int | None = None, batch_size: int = 64) -> dict[int, list[float]]:
    """Mean per-class accuracy of ``arch`` trained from scratch on each fold of the Caltech protocol.

    The folds are :func:`convlens.transfer.probes.caltech_folds`'s.

    Args:
        dataset: the dataset the probes ran on (same ``limit``), so that fold indices match ``features``.
        features: the probes' :class:`convlens.transfer.probes.Features` (their labels and dataset
            indices define the folds).
        per_class: training images per class, one protocol per value.

    Returns:
        {n: [accuracy of each fold]}.
    """
    import tempfile

    import torch
    from torch.utils.data import DataLoader, Subset

    from convlens.images.data import Preprocessing, collate_skip, open_dataset
    from convlens.nets.convnet import get_config
    from convlens.nets.loading import load_model
    from convlens.training.recipe import RunData, TrainConfig, fit
    from convlens.transfer.probes import caltech_folds, per_class_accuracy

    crop = get_config(arch).input_size
    pre = Preprocessing(round(crop * 8 / 7), crop, torch.full((3, 1, 1), 127.5), torch.full((3, 1, 1), 64.0))
    train_ds = open_dataset(dataset, "train", pre, data_dir=data_dir, mode="train", limit=limit)
    eval_ds = open_dataset(dataset, "train", pre, data_dir=data_dir, limit=limit)
    k = int(features.labels.max()) + 1
    out: dict[int, list[float]] = {}
    for n in per_class:
        for tr, te in caltech_folds(features.labels, n, n_test=n_test, folds=folds, seed=seed):
            tr_idx, te_idx = features.indices[tr].tolist(), features.indices[te].tolist()
            with tempfile.TemporaryDirectory() as tmp:
                cfg = TrainConfig(arch=arch, dataset=dataset, out=tmp, epochs=epochs, batch_size=batch_size,
                                  init="kaiming", seed=seed, device="cpu")
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


def contamination_pairs(other: str | Path, dataset: str | Path, *, data_dir: str | Path | None = None,
                        threshold: float = 0.95) -> list[list[Any]]:
    """Rows ``[image in other, image in dataset, correlation]`` of near-duplicates (normalized correlation of
    32x32 grey images above ``threshold``; see :func:`convlens.transfer.probes.find_duplicates`)."""
    import torch
    from torch.utils.data import DataLoader

    from convlens.images.sources import open_raw
    from convlens.transfer.probes import find_duplicates, image_signatures

    def signatures(raw: Any) -> Any:
        loader = DataLoader(raw, batch_size=256, collate_fn=lambda items: items)
        sig, keep = [], []
        for start, items in zip(range(0, len(raw), 256), loader, strict=False):
            good = [(i, x) for i, (x, _) in enumerate(items, start) if x is not None]
            if good:
                keep += [i for i, _ in good]
                sig.append(image_signatures(torch.stack([x for _, x in good])))
        if not sig:
            raise ValueError(f"no readable images in {getattr(raw, 'root', raw)} for the contamination check")
        return torch.cat(sig), keep

    raw_other = open_raw(str(other), "train", size=32)
    raw_mine = open_raw(str(dataset), "train", size=32, data_dir=data_dir)
    (sa, ka), (sb, kb) = signatures(raw_other), signatures(raw_mine)
    dup = find_duplicates(sa, sb, threshold=threshold)

    def name(raw: Any, i: int) -> str:
        return str(getattr(raw, "describe", str)(i))

    return [[name(raw_other, ka[i]), name(raw_mine, kb[j]), round(s, 4)]
            for (i, j), s in zip(dup.pairs.tolist(), dup.scores.tolist(), strict=False)]
