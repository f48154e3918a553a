"""The paper's training recipe (Sec. 3 "Training Details") and top-1/top-5 evaluation (Table 2).

Defaults follow the paper: SGD with mini-batches of 128, learning rate 1e-2, momentum 0.9,
dropout 0.5 in fc6/fc7 (in the model), weights drawn from N(0, 1e-2^2) and biases 0
(``init="paper"``), the learning rate multiplied by 0.1 when the validation error plateaus, and
**feature-scale clipping**: after every update, each conv filter whose RMS exceeds 0.1 is
rescaled to RMS 0.1 (:func:`renormalize_filters`; ``clip_radius=None`` turns it off, Fig. 6(a)).

Departures from the paper: the annealing is automatic (``ReduceLROnPlateau`` on the validation
top-1 error, ``plateau_patience`` epochs) rather than manual; ``init="kaiming"`` offers He-normal
weights, which train small nets from scratch without the paper init's long initial plateau;
``warmup_epochs`` ramps the learning rate linearly from 0.1x over the first epochs.

Determinism: every random stream comes from the run's seed, whatever is cached in the run folder
(see :mod:`convlens.training.data`): each epoch's shuffle comes from ``seed + epoch`` (the
DistributedSampler rule, also used in one process), and the global RNG (augmentation, dropout) is
seeded just before the first epoch. Checkpoints hold the RNG states and the metrics history, so on
CPU (``workers=0``) ``2 epochs`` equals ``1 epoch + resume + 1 epoch`` bit for bit, and a run
killed at any point and continued with ``resume`` ends with the same weights and ``metrics.csv``.

Kill safety: the checkpoint is the single source of truth. ``checkpoints/last.pt`` (and
``epoch_NNN.pt``) are written atomically first, then ``metrics.csv`` is rewritten whole from the
checkpoint's history; ``resume`` takes the newest checkpoint that loads (``last.pt``, else the
highest ``epoch_NNN.pt``), rewrites ``metrics.csv`` and ``result.json`` from it, and continues. A
second ``fit`` into a folder that holds a run refuses unless ``resume`` is set.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from convlens.io.progress import progress_bar
from convlens.nets.checkpoint import save_checkpoint
from convlens.nets.convnet import ConvNet, get_config, init_weights
from convlens.nets.device import resolve_device
from convlens.training import distributed
from convlens.training.config import TrainConfig
from convlens.training.data import RunData, identity_preprocessing, make_loader, open_run_data, random_subset
from convlens.training.data import collate as _collate
from convlens.training.distributed import DistInfo, all_reduce_sum
from convlens.training.evaluation import (
    average_log_proba,
    device_of,
    evaluate,
    predict_log_proba,
    topk_correct,
    topk_errors,
)
from convlens.training.rundir import (
    METRICS_COLUMNS,
    atomic_write_text,
    defer_sigint,
    existing_run,
    find_resume_checkpoint,
    lock_output,
    rng_state,
    set_rng_state,
    write_metrics,
    write_train_result,
)

__all__ = [
    "METRICS_COLUMNS",
    "RunData",
    "TrainConfig",
    "average_log_proba",
    "build_train_model",
    "evaluate",
    "fit",
    "make_loader",
    "open_run_data",
    "predict_log_proba",
    "random_subset",
    "renormalize_filters",
    "resolve_device",
    "topk_errors",
    "train_one_epoch",
]

log = logging.getLogger(__name__)



@torch.no_grad()
def renormalize_filters(model: nn.Module, radius: float) -> None:
    """The paper's feature-scale clipping: rescale every conv filter whose RMS exceeds ``radius``.

    A filter is one output channel's weights ``w[o]`` (all input channels and taps); its RMS is
    ``sqrt(mean(w[o] ** 2))``. Filters at or under the radius are left untouched; larger ones are
    scaled to RMS exactly ``radius``. Biases are not changed. Works in place.

    Example:
        >>> conv = nn.Conv2d(1, 2, 1); conv.weight.data[:] = torch.tensor([0.05, 3.0]).view(2, 1, 1, 1)
        >>> renormalize_filters(conv, 0.1); conv.weight.flatten().tolist()
        [0.05, 0.1]
    """
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            w = m.weight  # (out, in, kh, kw), any memory format (channels_last too)
            rms = w.float().pow(2).mean(dim=(1, 2, 3), keepdim=True).sqrt()  # (out, 1, 1, 1)
            scale = torch.where(rms > radius, radius / rms, torch.ones_like(rms))
            w.mul_(scale.to(w.dtype))


def _autocast(device: torch.device, amp: bool) -> contextlib.AbstractContextManager:
    if not amp or device.type != "cuda":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast("cuda", dtype=dtype)


def train_one_epoch(
    model: nn.Module,
    loader: Iterable,
    optimizer: torch.optim.Optimizer,
    *,
    clip_radius: float | None = 0.1,
    amp: bool = False,
    scaler: torch.amp.GradScaler | None = None,
    channels_last: bool = False,
    dist_info: DistInfo | None = None,
    progress: bool = False,
) -> dict[str, float]:
    """One pass of SGD over ``loader`` (batches ``(x, y, ...)``), clipping filters after each step.

    Args:
        model: in train mode afterwards; may be DDP- or compile-wrapped (clipping reaches inside).
        loader: yields ``(x (B, 3, H, W), y (B,))`` (extra items, e.g. indices, are ignored).
        optimizer: stepped once per batch.
        clip_radius: feature-scale clipping radius, None = off.
        amp: autocast on CUDA (bf16 where supported, else fp16; ignored on CPU).
        scaler: a ``GradScaler`` for fp16 autocast (``fit`` makes one when bf16 is unsupported).
        dist_info: the process group (metrics are summed over ranks).

    Returns:
        ``loss``, ``top1_err``, ``top5_err`` over the epoch's training batches, ``images``, ``seconds``.
    """
    model.train()
    device = device_of(model)
    sums = torch.zeros(4, dtype=torch.float64, device=device)  # loss*n, top1, top5, n
    start = time.perf_counter()
    bar = progress_bar(loader, disable=not progress, unit="batch", leave=False, dynamic_ncols=True)
    for batch in bar:
        x, y = batch[0].to(device, non_blocking=True), batch[1].to(device, non_blocking=True)
        if len(y) == 0:  # every image of the batch was unreadable (logged by the dataset)
            continue
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with _autocast(device, amp):
            logits = model(x)
            loss = F.cross_entropy(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        if clip_radius is not None:
            renormalize_filters(model, clip_radius)
        with torch.no_grad():
            sums += torch.cat([(loss.detach() * len(y))[None].double(), topk_correct(logits, y, 5),
                               torch.tensor([len(y)], dtype=torch.float64, device=device)])
        if progress:
            n = sums[3].item() * (dist_info.world_size if dist_info else 1)
            bar.set_postfix(loss=f"{loss.item():.3f}", img_s=f"{n / (time.perf_counter() - start):.0f}")
    all_reduce_sum(sums, dist_info or DistInfo())
    loss_sum, top1, top5, n = sums.tolist()
    n = max(n, 1.0)
    return {"loss": loss_sum / n, "top1_err": 1 - top1 / n, "top5_err": 1 - top5 / n, "images": n,
            "seconds": time.perf_counter() - start}


# ----------------------------------------------------------------------------- the run (fit)



def build_train_model(cfg: TrainConfig, num_classes: int) -> ConvNet:
    """The model ``fit`` trains: ``cfg.arch`` with ``num_classes`` outputs, ``cfg.init``, seeded."""
    arch = get_config(cfg.arch, num_classes=num_classes)
    if cfg.dropout is not None:
        arch = arch.replace(dropout=cfg.dropout)
    model = ConvNet(arch)
    init_weights(model, cfg.init, generator=torch.Generator().manual_seed(cfg.seed))
    return model


def fit(cfg: TrainConfig, *, progress: bool = False, datasets: RunData | None = None,
        argv: Sequence[str] | None = None) -> dict[str, float]:
    """Train ``cfg.arch`` on ``cfg.dataset`` with the paper's recipe; write the run directory.

    Writes ``cfg.out/config.json``, ``metrics.csv`` (one row per epoch), ``checkpoints/epoch_NNN.pt``
    and ``checkpoints/last.pt`` (atomic; everything needed for ``resume``) and ``result.json``.
    Under ``torchrun`` it trains with DDP (only rank 0 writes files and evaluates).

    Args:
        cfg: the run's configuration.
        progress: show tqdm bars with images/s.
        datasets: use these instead of opening ``cfg.dataset`` (tests, notebooks).
        argv: the command line, recorded in config.json.

    Returns:
        The last epoch's metrics: ``epoch``, ``train_loss``, ``train_top1_err``, ``train_top5_err``,
        ``val_loss``, ``val_top1_err``, ``val_top5_err``, ``lr``, ``seconds``.

    Example:
        >>> cfg = TrainConfig(arch="zfnet-small", dataset="fashion-mnist", epochs=3, out="runs/fm")
        >>> fit(cfg, progress=True)["val_top1_err"]
        0.087
    """
    device = resolve_device(cfg.device)
    info = distributed.setup(device)
    if device.type == "cuda" and info.enabled:
        device = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(device)
    lock = lock_output(cfg.out) if cfg.out and info.main else contextlib.nullcontext()
    try:
        with lock:
            if cfg.out and not cfg.resume:
                found = existing_run(Path(cfg.out))
                if found:
                    raise ValueError(f"{cfg.out} already holds a training run ({found}); pass --resume to "
                                     "continue it, or choose a new --out (nothing was overwritten)")
            return _Run(cfg, device, info, datasets, list(argv or []), progress).train(progress)
    finally:
        distributed.teardown(info)


class _Run:
    """The state of one training run: model, optimizer, scheduler, loaders, history."""

    def __init__(self, cfg: TrainConfig, device: torch.device, info: DistInfo, datasets: RunData | None,
                 argv: list[str], progress: bool) -> None:
        self.cfg, self.device, self.info, self.argv = cfg, device, info, argv
        self.out = Path(cfg.out) if cfg.out else None
        self.data = (datasets if datasets is not None
                     else open_run_data(cfg, self.out, progress=progress, dist_info=info))
        if self.data.preprocessing is None:
            size = get_config(cfg.arch).input_size
            self.data = dataclasses.replace(self.data, preprocessing=identity_preprocessing(size))
        self.model = build_train_model(cfg, len(self.data.class_names)).to(device)
        if cfg.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                         weight_decay=cfg.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            self.optimizer, mode="min", factor=cfg.plateau_factor, patience=cfg.plateau_patience,
            threshold=cfg.plateau_threshold, threshold_mode="abs", min_lr=cfg.min_lr)
        fp16 = cfg.amp and device.type == "cuda" and not torch.cuda.is_bf16_supported()
        self.scaler = torch.amp.GradScaler("cuda") if fp16 else None
        self.rows: list[dict[str, float]] = []
        # dropout and augmentation draw from the global RNG: seeded here, after everything whose random
        # draws could depend on what is cached (each DDP rank gets its own stream)
        torch.manual_seed(cfg.seed + 1000 * info.rank)
        self.start_epoch = self._resume() if cfg.resume else 0
        self.step_model = self._wrap(self.model)
        self.train_loader = make_loader(self.data.train, cfg.batch_size, train=True, seed=cfg.seed,
                                        workers=cfg.workers, dist_info=info)
        self.val_loader = None
        if self.data.val is not None and info.main:
            self.val_loader = DataLoader(self.data.val, cfg.batch_size, shuffle=False, num_workers=cfg.workers,
                                         collate_fn=_collate)

    def _wrap(self, model: nn.Module) -> nn.Module:
        """DDP under torchrun, then torch.compile if asked (clipping still sees the raw model)."""
        if self.info.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            model = nn.parallel.DistributedDataParallel(model, device_ids=ids)
        if self.cfg.compile:
            log.info("torch.compile: the first batches compile the model (tens of seconds on CPU)")
            model = torch.compile(model)  # type: ignore[assignment]
        return model

    def train(self, progress: bool) -> dict[str, float]:
        cfg = self.cfg
        if self.info.main and self.out is not None:
            self._write_config()
            if self.rows:  # resumed: restore rows a kill may have lost (the checkpoint is the truth)
                write_metrics(self.out / "metrics.csv", self.rows)
        row: dict[str, float] = self.rows[-1] if self.rows else {}
        bar = progress_bar(range(self.start_epoch + 1, cfg.epochs + 1), disable=not (progress and self.info.main),
                   unit="epoch", initial=self.start_epoch, total=cfg.epochs, dynamic_ncols=True)
        try:
            for epoch in bar:
                row = self._epoch(epoch, progress and self.info.main)
                bar.set_postfix(val_err=f"{row['val_top1_err']:.4f}", lr=f"{row['lr']:.0e}")
        except KeyboardInterrupt:
            done = self.rows[-1]["epoch"] if self.rows else 0
            log.warning("interrupted: checkpoints/last.pt holds epoch %d; continue with --resume", done)
            raise
        finally:
            if self.info.main and self.out is not None and self.rows:
                write_train_result(self.out, cfg, self.rows, self.argv)
        return row

    def _epoch(self, epoch: int, progress: bool) -> dict[str, float]:
        cfg, start = self.cfg, time.perf_counter()
        if cfg.warmup_epochs and epoch <= cfg.warmup_epochs + 1:  # linear ramp 0.1x -> 1x, then the plateau rule
            for group in self.optimizer.param_groups:
                group["lr"] = cfg.lr * min(1.0, 0.1 + 0.9 * (epoch - 1) / cfg.warmup_epochs)
        lr = self.optimizer.param_groups[0]["lr"]
        self.train_loader.sampler.set_epoch(epoch)  # type: ignore[attr-defined]
        t = train_one_epoch(self.step_model, self.train_loader, self.optimizer, clip_radius=cfg.clip_radius,
                            amp=cfg.amp, scaler=self.scaler, channels_last=cfg.channels_last,
                            dist_info=self.info, progress=progress)
        v = evaluate(self.model, self.val_loader) if self.val_loader is not None else {}
        val_err = distributed.broadcast_float(v.get("top1_err", t["top1_err"]), self.info, self.device)
        if epoch > cfg.warmup_epochs:
            self.scheduler.step(val_err)
        nan = float("nan")
        row = {"epoch": epoch, "train_loss": t["loss"], "train_top1_err": t["top1_err"],
               "train_top5_err": t["top5_err"], "val_loss": v.get("loss", nan), "val_top1_err": v.get("top1_err", nan),
               "val_top5_err": v.get("top5_err", nan), "lr": lr, "seconds": time.perf_counter() - start}
        self.rows.append(row)
        (log.info if self.info.main else log.debug)(
                 "epoch %d/%d: train loss %.4f err %.4f | val loss %.4f top-1 err %.4f top-5 err %.4f | "
                 "lr %.1e | %.0f s (%.0f img/s)", epoch, cfg.epochs, row["train_loss"], row["train_top1_err"],
                 row["val_loss"], row["val_top1_err"], row["val_top5_err"], lr, row["seconds"],
                 t["images"] / t["seconds"])
        if self.info.main and self.out is not None:
            try:
                with defer_sigint():  # Ctrl-C while saving: finish the (atomic) save, then stop
                    self._save(epoch, row)
                    write_metrics(self.out / "metrics.csv", self.rows)
            except BaseException:  # not saved (a full disk): result.json must not report this epoch
                self.rows.pop()
                raise
        return row

    # --------------------------------------------------------------- checkpoints and resume

    def _state(self, epoch: int, row: dict[str, float]) -> dict[str, Any]:
        return {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "rng": rng_state(),
            "metrics": row,
            "history": list(self.rows),
            "config": dataclasses.asdict(self.cfg),
        }

    def _save(self, epoch: int, row: dict[str, float]) -> None:
        assert self.out is not None
        ckpt_dir = self.out / "checkpoints"
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        extra = self._state(epoch, row)
        wanted = self.cfg.checkpoint_epochs is None or epoch in self.cfg.checkpoint_epochs or epoch == self.cfg.epochs
        for path in [ckpt_dir / "last.pt"] + ([ckpt_dir / f"epoch_{epoch:03d}.pt"] if wanted else []):
            save_checkpoint(path, self.model, preprocessing=self.data.preprocessing,
                            class_names=list(self.data.class_names), epoch=epoch, extra=extra)

    def _resume(self) -> int:
        found = find_resume_checkpoint(self.out / "checkpoints", map_location=self.device) if self.out else None
        if found is None:  # killed before its first checkpoint (or a new folder): nothing to continue
            started = self.out is not None and (self.out / "config.json").is_file()
            (log.warning if started else log.info)("resume: no complete checkpoint in %s; starting at epoch 1",
                                                   self.out or ".")
            return 0
        path, ckpt = found
        self.model.load_state_dict(ckpt["model"])
        extra = ckpt
        self.optimizer.load_state_dict(extra["optimizer"])
        self.scheduler.load_state_dict(extra["scheduler"])
        if float(extra["config"]["lr"]) != self.cfg.lr:  # the paper's manual annealing: resume with a new --lr
            log.info("resume: learning rate set to %g (the run was started with %g)",
                     self.cfg.lr, extra["config"]["lr"])
            for group in self.optimizer.param_groups:
                group["lr"] = self.cfg.lr
        if self.scaler is not None and extra.get("scaler"):
            self.scaler.load_state_dict(extra["scaler"])
        self.rows = list(extra["history"])
        set_rng_state(extra["rng"])  # rank 0's state (bit-identical resume in one process)
        if self.info.rank > 0:  # other DDP ranks: a fresh stream of their own
            torch.manual_seed(self.cfg.seed + 1000 * self.info.rank + int(ckpt["epoch"]))
        log.info("resumed from %s at epoch %d", path, ckpt["epoch"])
        return int(ckpt["epoch"])

    def _write_config(self) -> None:
        assert self.out is not None
        self.out.mkdir(parents=True, exist_ok=True)
        resolved = {**dataclasses.asdict(self.cfg), "argv": self.argv, "resolved_device": str(self.device),
                    "world_size": self.info.world_size, "num_classes": len(self.data.class_names),
                    "class_names": list(self.data.class_names), "torch": torch.__version__}
        atomic_write_text(self.out / "config.json", json.dumps(resolved, indent=2, default=str))
