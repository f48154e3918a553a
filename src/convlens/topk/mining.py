"""One streaming pass over a dataset: the top-k activations of every map (Fig. 2), resumable and sharded.

:func:`mine_top_activations` feeds a :class:`~convlens.topk.accumulator.TopKAccumulator` batch by batch (see
:mod:`convlens.topk.accumulator` for what "the top 9" means exactly). It saves its state atomically every
``save_every`` batches and, on restart, skips the finished batches without loading them; under
``torchrun`` the dataset is split into contiguous index ranges, one per process (no padding: no
image counted twice, none dropped), and the per-process top-k are gathered and merged exactly.

Clipped activations: when a mined layer's output is the output of a clip module (``nn.ReLU6``,
``nn.Hardtanh``; directly or as the last module of a block such as torchvision's
``Conv2dNormActivation``), the clip's *input* is captured too and ranks the entries (the
``scores`` of :class:`~convlens.topk.accumulator.TopActivations`), so that saturated units (all at 6.0) are
ordered by their pre-clip value instead of tying. In-place clips are made out-of-place for the
pass (restored afterwards).
"""
from __future__ import annotations

import itertools
import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, RandomSampler, Sampler

from convlens.images.sources import note_skipped, skip_reason
from convlens.io.progress import progress_bar
from convlens.topk.accumulator import TopActivations, TopKAccumulator
from convlens.topk.acttable import ActTableWriter, merge_tables

log = logging.getLogger(__name__)

__all__ = ["ShardSampler", "clip_modules", "layer_features", "mine_top_activations"]


# ----------------------------------------------------------------------------- mining a dataset

class ShardSampler(Sampler[int]):
    """Indices ``0..n-1`` split into ``world`` contiguous ranges, no padding: rank r gets its own range.

    Unlike ``DistributedSampler`` (which repeats indices to equalize shards) every index is
    visited exactly once over all ranks.
    """

    def __init__(self, n: int, rank: int, world: int) -> None:
        if not 0 <= rank < world:
            raise ValueError(f"rank must be in [0, {world}), got {rank}")
        self.start, self.stop = rank * n // world, (rank + 1) * n // world

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.start, self.stop))

    def __len__(self) -> int:
        return self.stop - self.start


def _batches(loader: Iterable[Any], start: int, rank: int, world: int) -> tuple[Iterable[Any], int | None]:
    """The loader's batches from batch ``start`` on, for this rank, and how many images they hold.

    A ``DataLoader`` is rebuilt over explicit batch lists, so skipped batches are never loaded and
    each rank reads only its contiguous share of the sampler's order.
    """
    if not isinstance(loader, DataLoader) or loader.batch_sampler is None:
        if world > 1:
            raise ValueError("distributed mining needs a torch DataLoader (to shard its dataset)")
        return itertools.islice(loader, start, None), None
    if isinstance(loader.sampler, RandomSampler) and (start or world > 1):
        raise ValueError("resuming or sharding needs a fixed order: build the DataLoader with shuffle=False")
    if start == 0 and (world == 1 or isinstance(loader.sampler, ShardSampler)):
        return loader, len(loader.sampler)  # type: ignore[arg-type]
    order = list(loader.sampler)
    if world > 1 and not isinstance(loader.sampler, ShardSampler):
        order = order[rank * len(order) // world:(rank + 1) * len(order) // world]
    bs = loader.batch_size or 1
    chunks = [order[i:i + bs] for i in range(0, len(order), bs)]
    if loader.drop_last and chunks and len(chunks[-1]) < bs:
        chunks.pop()
    rebuilt = DataLoader(loader.dataset, batch_sampler=chunks[start:], num_workers=loader.num_workers,
                         collate_fn=loader.collate_fn, pin_memory=loader.pin_memory,
                         worker_init_fn=loader.worker_init_fn)
    return rebuilt, sum(len(c) for c in chunks[start:])


def clip_modules(model: nn.Module, layers: Sequence[str]) -> dict[str, nn.Hardtanh]:
    """Per layer, the clip module (``nn.ReLU6``/``nn.Hardtanh``) whose output may be the layer's
    output: the layer itself, or the last leaf module registered in it. Which of them really
    produce the layer's output is checked on every batch (:func:`layer_features`)."""
    if hasattr(model, "resolve") and callable(getattr(model, "features", None)):
        return {}  # convlens ConvNets rectify with nn.ReLU
    from convlens.core.capture import get_module

    out = {}
    for name in layers:
        module = get_module(model, name)
        leaves = [m for m in module.modules() if not list(m.children())]
        if leaves and isinstance(leaves[-1], nn.Hardtanh):
            out[name] = leaves[-1]
    return out


def layer_features(model: nn.Module, x: torch.Tensor, layers: Sequence[str],
                   clips: dict[str, nn.Hardtanh] | None = None) -> dict[str, torch.Tensor]:
    """Activations of ``layers``, stopping the forward at the deepest one.

    ``ConvNet`` has ``features`` (which stops early); any other module is hooked and the forward
    is interrupted once every layer has been recorded. With ``clips`` (:func:`clip_modules`), the
    pre-clip input of each layer whose output comes from its clip is returned too, under the key
    ``"<layer>:preclip"`` (the clip must not be in-place).
    """
    features = getattr(model, "features", None)
    if callable(features) and hasattr(model, "resolve"):
        return features(x, list(layers))
    from convlens.core.capture import StopForward, hooked

    store: dict[str, torch.Tensor] = {}
    pre: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def hook(key: str) -> Any:
        def fn(_m: nn.Module, _i: Any, out: torch.Tensor) -> None:
            store[key] = out
            if len(store) == len(layers):
                raise StopForward
        return fn

    def clip_hook(key: str) -> Any:
        def fn(_m: nn.Module, inputs: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
            pre[key] = (inputs[0], out)
        return fn

    # clip hooks first: when the layer *is* the clip, its own hook must not end the pass before them
    hooks = [(c, clip_hook(n)) for n, c in (clips or {}).items()] + [(n, hook(n)) for n in layers]
    with hooked(model, hooks):
        model(x)
    acts = {n: store[n] for n in layers}
    for n, (before, after) in pre.items():
        if after is acts[n] and before is not after:
            acts[f"{n}:preclip"] = before
    return acts


def _save_state(path: Path, state: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def mine_top_activations(
    model: nn.Module,
    loader: Iterable[Any],
    layers: Sequence[str],
    *,
    k: int = 9,
    per_image: int = 1,
    state_path: str | Path | None = None,
    save_every: int = 50,
    state_key: str | None = None,
    progress: bool = False,
    tie_seed: int = 0,
    rank_pre_clip: bool = True,
    num_classes: int | None = None,
    table: str | Path | None = None,
) -> dict[str, TopActivations]:
    """One streaming pass over ``loader``: the top-k activations of every map of ``layers``.

    Args:
        model: on its device; put in eval mode for the pass (its mode is restored).
        loader: yields ``(images, labels, indices)`` batches (``data.collate_skip``; its
            ``batch.skipped`` lists unreadable images, which are counted). For resuming and
            sharding, a ``DataLoader`` with a fixed order (no shuffle).
        layers: layer names (``conv1`` .. ``fc7``; any submodule name for other models).
        k, per_image: see :class:`TopKAccumulator`.
        state_path: save the state here every ``save_every`` batches, and resume from it if it
            exists (one file per rank under torchrun: ``.rankR`` is appended).
        state_key: identifies the run (e.g. checkpoint and dataset); a state saved under another
            key, batch size, dataset size or process count is ignored (with a warning), not resumed.
        progress: show a progress bar (images/s).
        tie_seed: seed of the order among equal scores (:mod:`convlens.topk.accumulator`; never dataset order).
        rank_pre_clip: rank clipped layers (ReLU6, Hardtanh) by their pre-clip value.
        num_classes: pad the class means to this many classes (default: ``len(dataset.classes)``
            when the loader's dataset has ``classes``, else the largest label seen + 1).
        table: write the activation tables (:mod:`convlens.topk.acttable`) into this folder, resumably
            with the state (under torchrun each rank writes ``table/rankR``, merged by rank 0).

    Returns:
        dict layer -> :class:`TopActivations` (with ``labels``, ``class_means`` and, for clipped
        layers, ``ceiling`` and pre-clip ``scores``), identical on every rank.

    Example:
        >>> loader = DataLoader(open_dataset("cifar10", "test", data_dir=D), batch_size=64, collate_fn=collate_skip)
        >>> tops = mine_top_activations(model, loader, ["conv1", "conv5"], k=9)
        >>> tops["conv5"].dataset_indices[42]  # the 9 images that excite map 42 most
    """
    on = dist.is_available() and dist.is_initialized()
    rank, world = (dist.get_rank(), dist.get_world_size()) if on else (0, 1)
    acc = TopKAccumulator(layers, k=k, per_image=per_image, tie_seed=tie_seed)
    path = None if state_path is None else Path(f"{state_path}.rank{rank}" if world > 1 else state_path)
    dataset = getattr(loader, "dataset", None)
    key = {"state_key": state_key, "world": world, "batch_size": getattr(loader, "batch_size", None),
           "dataset_size": len(dataset) if isinstance(loader, DataLoader) else None,  # type: ignore[arg-type]
           "rank_pre_clip": rank_pre_clip}
    if num_classes is None and getattr(dataset, "classes", None):
        num_classes = len(dataset.classes)  # type: ignore[union-attr]
    clips = clip_modules(model, layers) if rank_pre_clip else {}
    inplace = [c for c in clips.values() if c.inplace]
    done = _resume(path, key, acc) if path is not None else 0
    writer = None
    if table is not None:
        if not isinstance(loader, DataLoader):
            raise ValueError("table needs a torch DataLoader (its dataset's size gives the table's rows)")
        writer = ActTableWriter(Path(table) / f"rank{rank}" if world > 1 else table, len(dataset), layers, key)  # type: ignore[arg-type]
        if not writer.open(resume=done > 0) and done:
            log.warning("the activation table in %s belongs to another run: mining again from the start", table)
            acc, done = TopKAccumulator(layers, k=k, per_image=per_image, tie_seed=tie_seed), 0
    batches, todo = _batches(loader, done, rank, world)
    param = next(model.parameters())
    was_training = model.training
    model.eval()
    bar = progress_bar(total=todo, unit="img", unit_scale=world, desc=f"mining {','.join(layers)}",
               disable=not progress or rank != 0)
    try:
        for c in inplace:  # the pre-clip input must survive the clip
            c.inplace = False
        with torch.inference_mode():
            for b, batch in enumerate(batches, start=done):
                bar.update(_mine_batch(model, acc, batch, param, layers, clips, writer))
                done = b + 1
                if path is not None and done % save_every == 0:
                    if writer is not None:
                        writer.flush()
                    _save_state(path, {"accumulator": acc.state_dict(), "batches": done, "key": key})
    finally:
        bar.close()
        model.train(was_training)
        for c in inplace:
            c.inplace = True
    if writer is not None:
        writer.flush()
    if path is not None:
        _save_state(path, {"accumulator": acc.state_dict(), "batches": done, "key": key})
    if world > 1:
        acc = _gather(acc, world)  # also waits for every rank's table
        if writer is not None and rank == 0:
            merge_tables(table, [Path(table) / f"rank{r}" for r in range(world)])  # type: ignore[arg-type]
    return acc.result(num_classes)


def _resume(path: Path, key: dict[str, Any], acc: TopKAccumulator) -> int:
    """Load a saved state into ``acc`` if it belongs to this run; returns the finished batches."""
    if not path.is_file():
        return 0
    state = torch.load(path, map_location="cpu", weights_only=True)
    try:
        if state.get("key") != key:
            raise ValueError("another key")
        acc.load_state_dict(state["accumulator"])
    except (ValueError, KeyError):
        log.warning("ignoring %s: it was saved by another mining run (model, data, settings or version differ)", path)
        return 0
    log.info("resuming from %s: %d batches done", path, state["batches"])
    for name, reason in acc.skipped.items():  # named again in this run's report (result.json, the warning)
        note_skipped(name, reason)
    return int(state["batches"])


def _mine_batch(model: nn.Module, acc: TopKAccumulator, batch: Any, param: torch.Tensor,
                layers: Sequence[str], clips: dict[str, nn.Hardtanh] | None = None,
                writer: ActTableWriter | None = None) -> int:
    """Mine one batch; returns the number of images it held (read or skipped)."""
    names = list(getattr(batch, "skipped", ()))
    skipped = len(names)
    acc.num_skipped += skipped
    for name in names:
        acc.skipped.setdefault(str(name), skip_reason(str(name)))
    if not isinstance(batch, (tuple, list)) or len(batch) < 3:
        raise ValueError("loader must yield (images, labels, indices) batches; use data.collate_skip")
    images, labels, indices = batch[0], batch[1], batch[2]
    if len(indices):
        x = images.to(device=param.device, dtype=param.dtype, non_blocking=True)
        acts = layer_features(model, x, layers, clips)
        rank_by = {n: acts[f"{n}:preclip"] for n in layers if f"{n}:preclip" in acts}
        ceilings = {n: float(clips[n].max_val) for n in rank_by} if clips else {}
        labels = torch.as_tensor(labels) if labels is not None else None
        labels = labels if labels is not None and labels.dim() == 1 else None
        acc.update(acts, indices, labels, rank_by=rank_by, ceilings=ceilings)
        if writer is not None:
            for n in layers:
                writer.write(n, indices, acc.last_image_max[n])
            writer.mark(indices, labels)
    return len(indices) + skipped


def _gather(acc: TopKAccumulator, world: int) -> TopKAccumulator:
    """All-gather every rank's state and merge them in rank order (same result on every rank)."""
    states: list[Any] = [None] * world
    dist.all_gather_object(states, acc.state_dict())
    merged = TopKAccumulator(acc.layers, k=acc.k, per_image=acc.per_image, tie_seed=acc.tie_seed)
    for s in states:
        part = TopKAccumulator(acc.layers, k=acc.k, per_image=acc.per_image, tie_seed=acc.tie_seed)
        part.load_state_dict(s)
        merged.merge(part)
    return merged
