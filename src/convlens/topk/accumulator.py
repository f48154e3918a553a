"""Top-k activations per feature map over a whole dataset (Sec. 4, "Feature Visualization", Fig. 2).

:class:`TopKAccumulator` keeps, for every feature map of every requested layer, the ``k`` (default
9) strongest activations with their dataset index, class label and position, fed one batch at a
time. Memory is O(layers x maps x k): activations are reduced per batch and never stored. The pass
over a dataset (resuming, sharding) is :func:`convlens.topk.mining.mine_top_activations`; the Fig. 2
tiles are :func:`convlens.topk.tiles.unit_tiles`.

Definitions (what "the top 9" means here, exactly):

* **Ranking statistic** (``scores``): the activation, or for a clipped activation (ReLU6,
  Hardtanh: many maps saturate at the ceiling, 6.0) the value *before* the clip, so that saturated
  images are still ordered by how far they exceed the ceiling. ``values`` are always the layer's
  output at the chosen position (6.0 for a saturated unit).
* **One entry per image per map** (``per_image=1``, the paper's figure: 9 different images). An
  image's entry is its maximum score over the map; its position is the *first* maximum in
  row-major order (smallest ``y * W + x``). ``per_image=p`` keeps the p largest positions of each
  image (ties again to the smaller row-major position).
* **Order**: score descending, then a seeded pseudo-random order of the dataset indices
  (``tie_seed``; a fixed bijective hash of the index, never file order: ties such as the all-zero
  maps of a rectified layer would otherwise all go to the first images, i.e. the first classes of
  a sorted folder), then row-major position. This total order makes the result independent of
  batch size, DataLoader workers, shuffling and the number of processes; it equals a brute-force
  sort of all per-image candidates at once (``tests/test_topk.py``).
* fc layers ``(B, F)`` are maps of size 1x1 (position (0, 0)).
* **Class means** (for the explorer's "which classes drive this map"): with labels, the mean over
  each class's images of the per-image ranking statistic (the image's maximum score), per map;
  one ``index_add`` per layer and batch.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["STATE_VERSION", "TopActivations", "TopKAccumulator", "tie_key"]

STATE_VERSION = 2
_MASK = 0xFFFFFFFF


def tie_key(indices: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """A pseudo-random sort key for dataset indices: a bijective 32-bit integer hash of
    ``index ^ seed`` (indices below 2**32 never collide), int64, same on every device."""
    x = (indices.long() ^ (int(seed) & _MASK)) & _MASK
    x = (((x >> 16) ^ x) * 0x45D9F3B) & _MASK
    x = (((x >> 16) ^ x) * 0x45D9F3B) & _MASK
    return (x >> 16) ^ x


@dataclass(frozen=True)
class TopActivations:
    """The k strongest activations of every map of one layer.

    Attributes:
        values: (C, K) the layer's activation at each entry, strongest first.
        dataset_indices: (C, K) dataset index of the image each came from.
        positions: (C, K, 2) (y, x) in the layer's map ((0, 0) for fc layers).
        layer: the layer name.
        num_images: images that were mined.
        num_skipped: unreadable images that were skipped (and counted).
        scores: (C, K) the ranking statistic (the pre-clip value for clipped activations, else
            equal to ``values``); None for results built by hand.
        labels: (C, K) class label of each entry's image (-1: unknown).
        ceiling: the clip's upper bound (6.0 for ReLU6) when the layer's output is clipped, else None.
        class_means: (C, n_classes) float32 mean per-image ranking statistic per class (NaN for a
            class without images); ``class_counts`` (n_classes,) images per class.
    """

    values: torch.Tensor
    dataset_indices: torch.Tensor
    positions: torch.Tensor
    layer: str = ""
    num_images: int = 0
    num_skipped: int = 0
    scores: torch.Tensor | None = None
    labels: torch.Tensor | None = None
    ceiling: float | None = None
    class_means: torch.Tensor | None = None
    class_counts: torch.Tensor | None = None

    @property
    def saturated(self) -> torch.Tensor:
        """(C,) bool: the map's strongest entry reaches the clip's ceiling (ranked by pre-clip value)."""
        if self.ceiling is None or self.values.shape[1] == 0:
            return torch.zeros(self.values.shape[0], dtype=torch.bool)
        return (self.values[:, 0] >= self.ceiling).cpu()

    def to_dict(self) -> dict[str, Any]:
        return {"layer": self.layer, "values": self.values, "dataset_indices": self.dataset_indices,
                "positions": self.positions, "num_images": self.num_images, "num_skipped": self.num_skipped,
                "scores": self.scores, "labels": self.labels, "ceiling": self.ceiling,
                "class_means": self.class_means, "class_counts": self.class_counts}


class _Top:
    """Running top-k of one layer: scores/values/indices/labels/flat positions (C, K), in the total order."""

    FIELDS = ("scores", "values", "indices", "labels", "flat")

    def __init__(self, scores: torch.Tensor, values: torch.Tensor, indices: torch.Tensor, labels: torch.Tensor,
                 flat: torch.Tensor, hw: tuple[int, int]):
        self.scores, self.values, self.indices, self.labels, self.flat = scores, values, indices, labels, flat
        self.hw = hw

    @classmethod
    def of(cls, t: Sequence[torch.Tensor], hw: tuple[int, int]) -> _Top:
        return cls(t[0], t[1], t[2], t[3], t[4], hw)

    @classmethod
    def empty(cls, channels: int, k: int, hw: tuple[int, int], like: torch.Tensor) -> _Top:
        minus = torch.full((channels, k), -1, dtype=torch.long, device=like.device)  # empty slots: score -inf
        inf = torch.full((channels, k), float("-inf"), dtype=like.dtype, device=like.device)
        return cls(inf, inf.clone(), minus, minus.clone(), minus.clone(), hw)

    def tensors(self) -> tuple[torch.Tensor, ...]:
        return tuple(getattr(self, f) for f in self.FIELDS)

    def to(self, device: torch.device) -> None:
        for f in self.FIELDS:
            setattr(self, f, getattr(self, f).to(device))

    def push(self, cand: Sequence[torch.Tensor], k: int, by_pos: bool, seed: int) -> None:
        """Merge candidates (C, M) (same fields) into the running top-k with one sort on the concatenation."""
        s, v, i, lab, f = (torch.cat([mine, new.to(mine.dtype)], 1) for mine, new in zip(self.tensors(), cand,
                                                                                       strict=True))
        # Stable sorts from the least to the most significant key: (position), random key of the
        # index, -score. Empty slots (score -inf) sort last whatever their index.
        key = tie_key(i, seed)
        order = torch.sort(key * (self.hw[0] * self.hw[1]) + f if by_pos else key, dim=1, stable=True).indices
        order = order.gather(1, torch.sort(s.gather(1, order), dim=1, descending=True, stable=True).indices[:, :k])
        self.scores, self.values, self.indices, self.labels, self.flat = (t.gather(1, order) for t in (s, v, i, lab, f))


def _candidates(score: torch.Tensor, per_image: int) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int],
                                                               torch.Tensor]:
    """Per image and map, its ``per_image`` largest scores: values, flat positions (C, B*p), (H, W),
    and each image's maximum (C, B).

    One ``max`` (values and first indices in one pass) per layer and batch: measured against
    ``amax`` plus an argmax restricted to the images that can still enter the top-k, it was faster.
    """
    if score.dim() == 2:
        score = score[:, :, None, None]
    if score.dim() != 4:
        raise ValueError(f"activations must be (B, C, H, W) or (B, F), got shape {tuple(score.shape)}")
    b, c, h, w = score.shape
    flat = score.reshape(b, c, h * w)
    if per_image == 1 or h * w == 1:
        values, pos = flat.max(dim=2)  # first maximal index (documented for torch.max along a dim)
        return values.t(), pos.t(), (h, w), values.t()
    p = min(per_image, h * w)
    values, pos = torch.sort(flat, dim=2, descending=True, stable=True)  # ties: smaller position first
    values, pos = values[:, :, :p], pos[:, :, :p]  # (B, C, p)
    return (values.permute(1, 0, 2).reshape(c, b * p), pos.permute(1, 0, 2).reshape(c, b * p), (h, w),
            values[:, :, 0].t())


def _gather_output(act: torch.Tensor, flat: torch.Tensor) -> torch.Tensor:
    """The layer's output (B, C, H, W) or (B, F) at candidate positions ``flat`` (C, B*p) -> (C, B*p)."""
    b, c = act.shape[:2]
    a = act.reshape(b, c, -1).transpose(0, 1)  # (C, B, HW)
    p = flat.shape[1] // max(b, 1)
    return a.gather(2, flat.reshape(c, b, p)).reshape(c, b * p)


class TopKAccumulator:
    """Streaming top-k per feature map (see the module docstring for the exact order).

    Args:
        layers: layer names (maps are counted on the first update).
        k: entries kept per map.
        per_image: entries one image may contribute to one map (1: its maximum only).
        tie_seed: seed of the order among equal scores (never dataset order).

    Example:
        >>> acc = TopKAccumulator(["conv1", "conv5"], k=9)
        >>> acc.update(model.features(x, ["conv1", "conv5"]), indices, labels)  # once per batch
        >>> top = acc.result()["conv5"]  # TopActivations, values (C, 9)
    """

    def __init__(self, layers: Sequence[str], *, k: int = 9, per_image: int = 1, tie_seed: int = 0) -> None:
        if k < 1 or per_image < 1:
            raise ValueError(f"k and per_image must be >= 1, got k={k}, per_image={per_image}")
        if isinstance(layers, str) or not layers:
            raise ValueError(f"layers must be a non-empty list of layer names, got {layers!r}")
        self.layers, self.k, self.per_image, self.tie_seed = list(layers), k, per_image, int(tie_seed)
        self.num_images = 0
        self.num_skipped = 0
        self.skipped: dict[str, str] = {}  # unreadable images: description -> reason (kept for resumed runs)
        self.ceilings: dict[str, float] = {}
        self.class_counts = torch.zeros(0, dtype=torch.long)
        self._class_sums: dict[str, torch.Tensor] = {}
        self._tops: dict[str, _Top] = {}
        self.last_image_max: dict[str, torch.Tensor] = {}  # per layer, the last batch's (C, B) per-image maxima

    def update(self, acts: Mapping[str, torch.Tensor], indices: torch.Tensor, labels: torch.Tensor | None = None,
               *, rank_by: Mapping[str, torch.Tensor] | None = None,
               ceilings: Mapping[str, float] | None = None) -> None:
        """Add one batch: ``acts[layer]`` (B, C, H, W) or (B, F); ``indices`` (B,) dataset indices;
        ``labels`` (B,) class labels (for the class means; None: not tracked); ``rank_by[layer]``
        the pre-clip values of a clipped layer (same shape), ``ceilings[layer]`` its clip's bound."""
        for layer in self.layers:
            self.update_layer(layer, acts[layer], indices, labels, rank_by=(rank_by or {}).get(layer),
                              ceiling=(ceilings or {}).get(layer))
        self.num_images += len(indices)
        if labels is not None and len(labels):
            self._grow(int(labels.max()) + 1)
            self.class_counts += torch.bincount(labels.long().cpu(), minlength=len(self.class_counts))

    def _grow(self, n: int) -> None:
        if n > len(self.class_counts):
            self.class_counts = torch.cat([self.class_counts, self.class_counts.new_zeros(n - len(self.class_counts))])

    def update_layer(self, layer: str, act: torch.Tensor, indices: torch.Tensor, labels: torch.Tensor | None = None,
                     *, rank_by: torch.Tensor | None = None, ceiling: float | None = None) -> None:
        """Add one layer of a batch (the caller counts the images: ``num_images``, ``class_counts``)."""
        act = act.detach()
        if act.shape[0] != len(indices):
            raise ValueError(f"{layer}: {act.shape[0]} activations but {len(indices)} indices")
        if rank_by is not None and rank_by.shape != act.shape:
            raise ValueError(f"{layer}: rank_by has shape {tuple(rank_by.shape)}, expected {tuple(act.shape)}")
        top = self._tops.get(layer)
        if top is not None and top.values.device != act.device:  # e.g. state loaded on the CPU, mining on a GPU
            top.to(act.device)
        score = act if rank_by is None else rank_by.detach()
        scores, flat, hw, image_max = _candidates(score, self.per_image)
        self.last_image_max[layer] = image_max
        values = scores if rank_by is None else _gather_output(act, flat)
        per = scores.shape[1] // max(len(indices), 1)
        idx = indices.to(device=act.device, dtype=torch.long)
        lab = idx.new_full(idx.shape, -1) if labels is None else labels.to(device=act.device, dtype=torch.long)
        idx, lab = (t.repeat_interleave(per)[None].expand_as(scores) for t in (idx, lab))
        if top is None:
            top = self._tops[layer] = _Top.empty(scores.shape[0], self.k, hw, scores)
        top.push((scores, values, idx, lab, flat), self.k, self.per_image > 1, self.tie_seed)
        if ceiling is not None:
            self.ceilings[layer] = float(ceiling)
        if labels is not None and len(labels):
            self._add_class_sums(layer, image_max, labels)

    def _add_class_sums(self, layer: str, image_max: torch.Tensor, labels: torch.Tensor) -> None:
        n = max(int(labels.max()) + 1, len(self.class_counts))
        sums = self._class_sums.get(layer)
        if sums is None:
            sums = torch.zeros(image_max.shape[0], n, dtype=torch.float64, device=image_max.device)
        elif sums.shape[1] < n:
            sums = torch.cat([sums, sums.new_zeros(sums.shape[0], n - sums.shape[1])], 1)
        self._class_sums[layer] = sums.to(image_max.device).index_add_(
            1, labels.to(image_max.device, torch.long), image_max.double())

    def merge(self, other: TopKAccumulator) -> None:
        """Fold in an accumulator that saw *other* images (another shard): exact union top-k."""
        if (other.k, other.per_image, other.tie_seed, other.layers) != (self.k, self.per_image, self.tie_seed,
                                                                        self.layers):
            raise ValueError("can only merge accumulators with the same layers, k, per_image and tie_seed")
        for layer, top in other._tops.items():
            mine = self._tops.get(layer)
            if mine is None:
                self._tops[layer] = _Top.of([t.clone() for t in top.tensors()], top.hw)
            else:
                mine.push(tuple(t.to(mine.values.device) for t in top.tensors()), self.k, self.per_image > 1,
                          self.tie_seed)
        self._grow(len(other.class_counts))
        self.class_counts[:len(other.class_counts)] += other.class_counts
        for layer, sums in other._class_sums.items():
            mine_sums = self._class_sums.get(layer)
            n = len(self.class_counts)
            acc = torch.zeros(sums.shape[0], n, dtype=torch.float64)
            acc[:, :sums.shape[1]] += sums.cpu()
            if mine_sums is not None:
                acc[:, :mine_sums.shape[1]] += mine_sums.cpu()
            self._class_sums[layer] = acc
        self.ceilings.update(other.ceilings)
        self.num_images += other.num_images
        self.num_skipped += other.num_skipped
        self.skipped.update(other.skipped)

    def result(self, num_classes: int | None = None) -> dict[str, TopActivations]:
        """Per layer, the top-k so far (K = min(k, entries seen); empty slots are dropped); class
        means padded to ``num_classes`` classes when given."""
        out = {}
        n = max(len(self.class_counts), num_classes or 0)
        counts = torch.zeros(n, dtype=torch.long)
        counts[:len(self.class_counts)] = self.class_counts
        for layer in self.layers:
            top = self._tops.get(layer)
            if top is None:
                raise ValueError(f"no activations seen for layer {layer!r}: the dataset yielded no images")
            kk = int((top.indices[0] >= 0).sum())
            w = top.hw[1]
            flat = top.flat[:, :kk]
            means = None
            sums = self._class_sums.get(layer)
            if sums is not None:
                full = torch.zeros(sums.shape[0], n, dtype=torch.float64)
                full[:, :sums.shape[1]] = sums.cpu()
                means = (full / counts.clamp(min=1)).masked_fill(counts == 0, float("nan")).float()
            out[layer] = TopActivations(top.values[:, :kk], top.indices[:, :kk], torch.stack([flat // w, flat % w], -1),
                                        layer, self.num_images, self.num_skipped, top.scores[:, :kk],
                                        top.labels[:, :kk], self.ceilings.get(layer), means,
                                        counts.clone() if means is not None else None)
        return out

    def state_dict(self) -> dict[str, Any]:
        tops = {name: {**{f: t.cpu() for f, t in zip(_Top.FIELDS, top.tensors(), strict=True)}, "hw": list(top.hw)}
                for name, top in self._tops.items()}
        return {"version": STATE_VERSION, "layers": list(self.layers), "k": self.k, "per_image": self.per_image,
                "tie_seed": self.tie_seed, "num_images": self.num_images, "num_skipped": self.num_skipped,
                "skipped": dict(self.skipped), "tops": tops, "ceilings": dict(self.ceilings),
                "class_counts": self.class_counts.clone(),
                "class_sums": {name: s.cpu() for name, s in self._class_sums.items()}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        mine = (STATE_VERSION, self.layers, self.k, self.per_image, self.tie_seed)
        theirs = (state.get("version"), list(state["layers"]), state["k"], state["per_image"], state.get("tie_seed"))
        if theirs != mine:
            raise ValueError(f"state is for (version, layers, k, per_image, tie_seed) = {theirs}, not {mine}; "
                             "delete the state file to restart")
        self.num_images, self.num_skipped = int(state["num_images"]), int(state["num_skipped"])
        self.skipped = {str(k): str(v) for k, v in state.get("skipped", {}).items()}
        self._tops = {name: _Top.of([t[f] for f in _Top.FIELDS], (int(t["hw"][0]), int(t["hw"][1])))
                      for name, t in state["tops"].items()}
        self.ceilings = {k: float(v) for k, v in state["ceilings"].items()}
        self.class_counts = state["class_counts"].clone()
        self._class_sums = {name: s.clone() for name, s in state["class_sums"].items()}

