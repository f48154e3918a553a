"""Evaluate occluded images for :func:`convlens.occlusion.maps.occlusion_map`: the fastest exact path
a model allows, and only what the maps need (the logits and one map's total activation).

* :class:`~convlens.nets.convnet.ConvNet`: stage-by-stage incremental inference (``_incremental_convnet``).
* Any model ``torch.fx`` can trace: generic incremental inference over the graph's local prefix
  (``_incremental``), in ``inference_mode`` and channels-last.
* Anything else (or ``incremental=False``): batched forwards of the occluded images, channels-last.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch
from torch import Tensor, nn

from convlens.core.capture import record_activations
from convlens.nets.convnet import ConvNet
from convlens.occlusion.incremental import IncrementalPlan, _Patch
from convlens.occlusion.incremental_convnet import _Incremental

log = logging.getLogger(__name__)

# occluders per batch on the generic paths; measured on mobilenet_v2/resnet18 at 224 on 2 CPU cores
# (depthwise convolutions gain nothing from large batches, the incremental patches are small)
GRAPH_BATCH = 32
PLAIN_BATCH = 8
WORKERS = 2  # Python threads over occluder batches on the generic incremental path (CPU)
BATCH_MEMORY = 1 << 30
"""Bytes of occluder patches in flight (all workers) on the generic incremental path: the batch is
cut so that a model with large activations stays bounded (timm:efficientnet_b0 at 224 px: 32 -> 8
occluders per batch, peak RSS 3.9 -> 1.6 GB; resnet18 keeps 32)."""


def occluded_images(image: Tensor, ys: Tensor, xs: Tensor, window: int, fill: float | Tensor) -> Tensor:
    """(B, 3, H, W) copies of ``image`` (1, 3, H, W) with a square at each ``(ys[b], xs[b])``."""
    H, W = image.shape[-2:]
    ar_y = torch.arange(H, device=image.device)
    ar_x = torch.arange(W, device=image.device)
    in_y = (ar_y[None] >= ys[:, None]) & (ar_y[None] < ys[:, None] + window)  # (B, H)
    in_x = (ar_x[None] >= xs[:, None]) & (ar_x[None] < xs[:, None] + window)  # (B, W)
    mask = (in_y[:, :, None] & in_x[:, None, :])[:, None]  # (B, 1, H, W)
    fill_t = torch.as_tensor(fill, dtype=image.dtype, device=image.device).reshape(1, -1, 1, 1)
    return torch.where(mask, fill_t, image)



def _in_workers(fn: Callable[[Tensor], Any], items: list[Tensor], workers: int) -> list[Any]:
    """``[fn(item) for item in items]`` in ``inference_mode``; on CPU with ``workers`` > 1, as many
    Python threads, each with its share of torch's threads (restored afterwards). The incremental
    path is many small ops that one thread pool does not fill: measured on MobileNetV2 with 2 cores,
    two workers of one thread each take 0.75x the time of one worker with two."""
    threads = torch.get_num_threads()
    workers = min(workers, threads, len(items))

    def one(item: Tensor) -> Any:
        with torch.inference_mode():
            return fn(item)

    if workers <= 1:
        return [one(item) for item in items]
    torch.set_num_threads(threads // workers)
    try:
        with ThreadPoolExecutor(workers) as pool:
            return list(pool.map(one, items))
    finally:
        torch.set_num_threads(threads)


def _memory_bound_batch(clean: dict[Any, Any]) -> int:
    """Occluders per batch that keep the patches in flight under :data:`BATCH_MEMORY`. One occluder's
    patches take about half the clean image's activations of every node (measured 0.36 on
    efficientnet_b0 at 224 px)."""
    total = sum(t.numel() * t.element_size() for t in clean.values() if isinstance(t, Tensor))
    return max(1, int(BATCH_MEMORY // (WORKERS * max(1, total // 2))))


def forward(model: nn.Module, x: Tensor, layer: str) -> tuple[Tensor, Tensor]:
    """(logits, activation of ``layer``) for a batch."""
    if isinstance(model, ConvNet):
        out = model.features(x, [layer, "fc8"])
        return out["fc8"], out[layer]
    with record_activations(model, [layer]) as acts:
        logits = model(x)
    return logits, acts[layer]


def map_total(act: Tensor, channel: int) -> Tensor:
    a = act[:, channel]
    return a.reshape(a.shape[0], -1).sum(1)


class Engine:
    """Clean pass at construction (``logits0``, ``act0``); :meth:`evaluate` for occluder positions.

    ``threshold`` (approximate mode, generic graphs only) caps the recomputed boxes (Krypton's
    projective-field thresholding); ``None`` is exact.
    """

    def __init__(self, model: nn.Module, image: Tensor, layer: str, fill: float, window: int, batch_size: int | None,
                 incremental: bool, threshold: float | None = None, full_fraction: float = 0.5) -> None:
        self.model, self.image, self.layer, self.fill, self.window = model, image, layer, fill, window
        self.plan: IncrementalPlan | None = None
        self.convnet = isinstance(model, ConvNet) and incremental
        if incremental and not isinstance(model, ConvNet):
            try:
                self.plan = IncrementalPlan(model, image, layer, fill, window, threshold=threshold,
                                            full_fraction=full_fraction)
            except Exception as exc:  # fx cannot trace it, or the layer is not in the trace
                log.info("occlusion: plain batched forwards (%s cannot be traced: %s)", type(model).__name__, exc)
        if self.plan is not None:
            self.logits0, self.act0 = self.plan.logits0, self.plan.act0
        else:
            self.logits0, self.act0 = forward(model, image, layer)
        default = 64 if isinstance(model, ConvNet) else GRAPH_BATCH if self.plan is not None else PLAIN_BATCH
        if self.plan is not None and batch_size is None:
            default = min(default, _memory_bound_batch(self.plan.clean))
        self.batch_size = max(1, batch_size or default)
        self._convnet_inc: _Incremental | None = None

    @property
    def method(self) -> str:
        return "incremental" if self.convnet or self.plan is not None else "batched"

    def evaluate(self, grid: Tensor, channel: int) -> tuple[Tensor, Tensor]:
        """(logits (G, K), activity (G,)) for occluders at ``grid`` (G, 2) top-left positions."""
        workers = WORKERS if self.plan is not None and grid.device.type == "cpu" else 1
        bs = min(self.batch_size, -(-len(grid) // workers))  # every worker gets a batch
        batches = [torch.arange(i, min(i + bs, len(grid))) for i in range(0, len(grid), bs)]
        head = None
        if self.convnet:
            if self._convnet_inc is None:
                self._convnet_inc = _Incremental(self.model, self.image, self.layer, channel,  # type: ignore[arg-type]
                                                 self.fill, self.window)
            inc = self._convnet_inc
            run, head = inc.run, self.model.forward_head  # type: ignore[union-attr]
            batches = inc.batches(grid, bs)
        elif self.plan is not None:
            def run(ys: Tensor, xs: Tensor) -> tuple[Tensor, Tensor]:
                logits, value = self.plan.run(ys, xs)  # type: ignore[union-attr]
                return logits, self._activity(value, channel)
        else:
            def run(ys: Tensor, xs: Tensor) -> tuple[Tensor, Tensor]:
                x = occluded_images(self.image, ys, xs, self.window, self.fill)
                if not isinstance(self.model, ConvNet):
                    x = x.contiguous(memory_format=torch.channels_last)
                logits, act = forward(self.model, x, self.layer)
                return logits, map_total(act, channel)
        results = _in_workers(lambda idx: run(grid[idx, 0], grid[idx, 1]), batches, workers)
        logits = [lg for lg, _ in results]
        activity = [ac for _, ac in results]
        if head is not None:  # fc head on many full vectors at once: fewer passes over the fc weights
            flat = torch.cat(logits)
            logits = [head(flat[i:i + 256]) for i in range(0, len(flat), 256)]  # type: ignore[operator]
        order = torch.cat(batches).argsort().to(grid.device)  # back to the order of ``grid``
        return torch.cat(logits)[order], torch.cat(activity)[order]

    def _activity(self, value: Any, channel: int) -> Tensor:
        if not isinstance(value, _Patch):
            return map_total(value, channel)
        clean = self.act0[0, channel]
        (_, _, sy, ly), (_, _, sx, lx) = value.box
        iy = sy[:, None] + torch.arange(ly, device=sy.device)
        ix = sx[:, None] + torch.arange(lx, device=sx.device)
        old = clean[iy[:, :, None], ix[:, None, :]].sum((1, 2))
        return clean.sum() - old + value.data[:, channel].sum((1, 2))
