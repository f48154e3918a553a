"""Mining a dataset in disjoint shards (job arrays, preemptible nodes) and merging them exactly.

``convlens mine ... --shard I/N --out SHARD_I`` mines the I-th of N contiguous parts of the dataset
(:func:`shard_range`: whole batches of the one-process pass; resumable like any mining run) and
writes its mining state, its activation table and ``shard.json`` (the settings it ran with).
:func:`merge_shards` checks that the shards
belong together (same model, data and settings; every part 0..N-1 once, each complete), folds
their top-k accumulators in part order (:meth:`convlens.topk.accumulator.TopKAccumulator.merge`: exact) and
their tables (:func:`convlens.topk.acttable.merge_tables`). Top-k, class means and tables are then
identical to a one-process run over the whole dataset (``tests/test_shards.py``).
"""
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from convlens.io.artifacts import write_json
from convlens.topk.accumulator import TopActivations, TopKAccumulator
from convlens.topk.acttable import ActTable, merge_tables

__all__ = ["MergedShards", "merge_shards", "parse_shard", "shard_range", "write_shard_info"]

SHARD_FILE = "shard.json"
# settings that may differ between the shards of one run (where and how fast each part ran)
LOCAL_SETTINGS = frozenset({"out", "shard", "device", "workers", "save_every", "func", "command", "config"})


def parse_shard(text: str) -> tuple[int, int]:
    """``"I/N"`` -> (I, N) with 0 <= I < N."""
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise ValueError(f"shard must be I/N (e.g. 0/4, the first of 4 parts), got {text!r}") from None
    if not 0 <= i < n:
        raise ValueError(f"shard must be I/N with 0 <= I < N, got {text!r}")
    return i, n


def shard_range(size: int, i: int, n: int, batch_size: int = 1) -> range:
    """Dataset indices of part ``i`` of ``n``: the batches ``[i * B // n, (i + 1) * B // n)`` of the
    ``B = ceil(size / batch_size)`` batches of a one-process pass, so that every shard computes the
    very same batches (floating-point results can depend on a batch's size and content)."""
    batches = -(-size // batch_size)
    return range(min(i * batches // n * batch_size, size), min((i + 1) * batches // n * batch_size, size))


def write_shard_info(out: str | Path, shard: tuple[int, int], settings: Mapping[str, Any], key: str,
                     size: int) -> None:
    """``OUT/shard.json``: the part, the dataset's size, the run's key and its settings."""
    keep = {k: v for k, v in settings.items() if k not in LOCAL_SETTINGS and not callable(v)}
    write_json({"shard": list(shard), "dataset_size": size, "key": key, "settings": keep}, Path(out) / SHARD_FILE)


@dataclass(frozen=True)
class MergedShards:
    """The merged run: ``tops`` (as :func:`convlens.topk.mining.mine_top_activations` returns),
    ``table`` (the merged activation table), ``settings`` (the shards' common settings)."""

    tops: dict[str, TopActivations]
    table: ActTable | None
    settings: dict[str, Any]


def _read_info(folder: Path) -> dict[str, Any]:
    try:
        return json.loads((folder / SHARD_FILE).read_text())
    except (OSError, ValueError):
        raise ValueError(f"shards must be folders written by 'convlens mine --shard I/N', got {str(folder)!r} "
                         f"(no readable {SHARD_FILE})") from None


def _check(infos: Sequence[dict[str, Any]], folders: Sequence[Path]) -> int:
    """Raise unless the shards are the N parts of one run; returns N."""
    first = infos[0]
    for info, folder in zip(infos[1:], folders[1:], strict=True):
        diff = sorted(k for k in set(first["settings"]) | set(info["settings"])
                      if first["settings"].get(k) != info["settings"].get(k))
        if diff or info["key"] != first["key"] or info["dataset_size"] != first["dataset_size"]:
            what = ", ".join(f"{k}: {first['settings'].get(k)!r} vs {info['settings'].get(k)!r}" for k in diff)
            raise ValueError(f"shards must come from one model, dataset and settings: {folders[0]} and {folder} "
                             f"differ ({what or 'model file or dataset'}); mine every part with the same command")
    n = int(first["shard"][1])
    parts = sorted(int(i["shard"][0]) for i in infos)
    if any(int(i["shard"][1]) != n for i in infos) or parts != list(range(n)):
        raise ValueError(f"shards must be the parts 0..{n - 1} of {n}, each once; got parts {parts} "
                         f"of {sorted({int(i['shard'][1]) for i in infos})}")
    return n


def _load_state(folder: Path, info: dict[str, Any]) -> TopKAccumulator:
    """The shard's finished accumulator (``mine.state``, or under torchrun its ranks' states merged)."""
    paths = [folder / "mine.state"] if (folder / "mine.state").is_file() else \
        sorted(folder.glob("mine.state.rank*"), key=lambda p: int(p.suffix.removeprefix(".rank") or 0))
    acc = None
    for path in paths:
        state = torch.load(path, map_location="cpu", weights_only=True)["accumulator"]
        part = TopKAccumulator(state["layers"], k=state["k"], per_image=state["per_image"], tie_seed=state["tie_seed"])
        part.load_state_dict(state)
        if acc is None:
            acc = part
        else:
            acc.merge(part)
    i, n = info["shard"]
    if acc is None:
        raise ValueError(f"shard {i}/{n} in {folder} has no mining state; run its 'convlens mine ... --shard {i}/{n}'")
    size = len(shard_range(int(info["dataset_size"]), int(i), int(n), int(info["settings"]["batch_size"])))
    if acc.num_images + acc.num_skipped != size:
        raise ValueError(f"shard {i}/{n} in {folder} is not finished ({acc.num_images + acc.num_skipped} of "
                         f"{size} images); run its 'convlens mine ... --shard {i}/{n}' again to complete it")
    return acc


def merge_shards(out: str | Path, shards: Sequence[str | Path]) -> MergedShards:
    """Merge the shard folders into ``out`` (its activation table in ``out/acts``); see the module docstring.

    Raises:
        ValueError: a folder is not a shard, the shards differ in model, data or settings, a part is
            missing, repeated or unfinished.
    """
    if not shards:
        raise ValueError("shards must name at least one folder written by 'convlens mine --shard I/N'")
    folders = [Path(s) for s in shards]
    infos = [_read_info(f) for f in folders]
    _check(infos, folders)
    ordered = sorted(zip(infos, folders, strict=True), key=lambda p: int(p[0]["shard"][0]))
    merged = None
    for info, folder in ordered:
        acc = _load_state(folder, info)
        if merged is None:
            merged = TopKAccumulator(acc.layers, k=acc.k, per_image=acc.per_image, tie_seed=acc.tie_seed)
        merged.merge(acc)
    assert merged is not None
    settings = dict(infos[0]["settings"])
    out = Path(out)
    table = None
    if all((f / "acts" / "table.json").is_file() for _, f in ordered):
        table = merge_tables(out / "acts", [f / "acts" for _, f in ordered])
    classes = settings.get("num_classes")
    return MergedShards(merged.result(int(classes) if classes else None), table, settings)
