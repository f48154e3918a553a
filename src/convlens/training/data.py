"""The data side of a training run (:func:`convlens.training.recipe.fit`): the datasets, their loaders and
the seeded subsets.

Every random choice here is seeded from the run's seed and never draws from the global RNG, so
what is cached (the mean image in ``RUN/mean.pt``) cannot change the numbers of a run:

- the mean image and the pixel std are computed in file order over a fixed, seeded subset;
- ``limit_train`` / ``limit_val`` pick a seeded random subset (:func:`random_subset`);
- the training order comes from ``seed + epoch`` (the ``DistributedSampler`` rule, one process too).

Augmentation (random crops and flips) and dropout draw from the global RNG, which ``fit`` seeds
from the run's seed just before the first epoch (and restores from the checkpoint on resume).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import DataLoader, Dataset, default_collate
from torch.utils.data.distributed import DistributedSampler

from convlens.images import data
from convlens.nets.convnet import get_config
from convlens.training.distributed import DistInfo

if TYPE_CHECKING:
    from convlens.training.config import TrainConfig

__all__ = ["RunData", "collate", "identity_preprocessing", "make_loader", "open_run_data", "pixel_std",
           "random_subset"]


@dataclass(frozen=True)
class RunData:
    """What ``fit`` trains on: datasets yielding ``(x, y, ...)``, class names, the preprocessing."""

    train: Dataset
    val: Dataset | None
    class_names: tuple[str, ...]
    preprocessing: Any = None  # data.Preprocessing; saved with every checkpoint


def make_loader(
    dataset: Dataset, batch_size: int, *, train: bool, seed: int = 0, workers: int = 0,
    dist_info: DistInfo | None = None,
) -> DataLoader:
    """A DataLoader with the DistributedSampler rule in one process too (shuffle from seed + epoch).

    ``batch_size`` is global; each rank gets ``batch_size // world_size``. Call
    ``loader.sampler.set_epoch(epoch)`` before each epoch (``fit`` does).
    """
    info = dist_info or DistInfo()
    sampler: DistributedSampler = DistributedSampler(dataset, num_replicas=info.world_size, rank=info.rank,
                                                     shuffle=train, seed=seed)
    per_rank = max(1, batch_size // info.world_size)
    return DataLoader(dataset, per_rank, sampler=sampler, num_workers=workers, collate_fn=collate,
                      persistent_workers=workers > 0)


def open_run_data(cfg: TrainConfig, out: Path | None, *, progress: bool = False,
                  dist_info: DistInfo | None = None) -> RunData:
    """Open ``cfg.dataset`` the paper's way: per-pixel mean of the training split (cached in
    ``out/mean.pt``), random crops + flips for training, center crops of the test split for validation.

    With ``normalize_std`` (default: on for ``init="kaiming"``) inputs are also divided by the
    pixel std of the training set, so that He initialization sees unit-variance inputs.
    Under DDP rank 0 computes (and caches) the mean first; the other ranks then read the cache.
    """
    info = dist_info or DistInfo()
    crop = get_config(cfg.arch).input_size
    if info.enabled and not info.main:
        torch.distributed.barrier()  # wait for rank 0 to write out/mean.pt
    pre = data.dataset_preprocessing(cfg.dataset, crop=crop, data_dir=cfg.data_dir,
                                     cache=out / "mean.pt" if out else None, progress=progress and info.main)
    if info.enabled and info.main:
        torch.distributed.barrier()
    if cfg.normalize_std if cfg.normalize_std is not None else cfg.init == "kaiming":
        pre = dataclasses.replace(pre, std=torch.full((3, 1, 1), pixel_std(cfg, pre)))
    train = data.open_dataset(cfg.dataset, "train", pre, data_dir=cfg.data_dir, mode="train")
    val = data.open_dataset(cfg.dataset, "test", pre, data_dir=cfg.data_dir, mode="eval")
    classes = tuple(train.classes)
    return RunData(random_subset(train, cfg.limit_train, cfg.seed), random_subset(val, cfg.limit_val, cfg.seed),
                   classes, pre)


def random_subset(ds: Dataset, n: int | None, seed: int = 0) -> Dataset:
    """A fixed random subset of ``n`` items (kept in file order), drawn from its own generator seeded
    with ``seed``. Not the first ``n``: an ImageFolder is sorted by class, so its first images would
    cover only the first classes."""
    if n is None or n >= len(ds):  # type: ignore[arg-type]
        return ds
    idx = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed))[:n].sort().values  # type: ignore[arg-type]
    return torch.utils.data.Subset(ds, idx.tolist())


def pixel_std(cfg: TrainConfig, pre: data.Preprocessing, n: int = 2048) -> float:
    """Std of mean-subtracted pixels (0..255 units) over a fixed random ``n`` training images."""
    ds = random_subset(data.open_dataset(cfg.dataset, "train", pre, data_dir=cfg.data_dir, mode="eval"), n)
    loader = DataLoader(ds, 256, collate_fn=collate, generator=torch.Generator().manual_seed(0))
    xs = torch.cat([b[0] for b in loader])
    return float(xs.double().std())


def collate(items: list[tuple]) -> Any:
    """convlens datasets' ``(x, y, index, description)`` items skip unreadable images; others collate as usual."""
    if len(items[0]) == 4 and isinstance(items[0][3], str):
        return data.collate_skip(items)
    return default_collate(items)


def identity_preprocessing(size: int) -> data.Preprocessing:
    """No mean, no scaling: for datasets that are already network inputs."""
    return data.Preprocessing(size, size, torch.zeros(3, 1, 1), torch.ones(3, 1, 1), scale=1.0)
