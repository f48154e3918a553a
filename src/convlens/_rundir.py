"""Run-directory bookkeeping for :mod:`convlens.train`: metrics.csv, result.json, RNG states, and
holding back Ctrl-C while a checkpoint is written."""
from __future__ import annotations

import contextlib
import csv
import dataclasses
import os
import random
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .artifacts import write_result

METRICS_COLUMNS = ("epoch", "train_loss", "train_top1_err", "train_top5_err", "val_loss", "val_top1_err",
                   "val_top5_err", "lr", "seconds")


@contextlib.contextmanager
def defer_sigint() -> Iterator[None]:
    """Hold back Ctrl-C until the block (a checkpoint write) finishes, then raise it."""
    if sys.platform == "win32" or signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield
        return
    hit: list[int] = []
    try:
        signal.signal(signal.SIGINT, lambda *_: hit.append(1))
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if hit:
        raise KeyboardInterrupt


def rng_state() -> dict[str, Any]:
    np_state: tuple[Any, ...] = np.random.get_state()  # type: ignore[assignment]
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": random.getstate(),
        "numpy": (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"].cpu())
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
    random.setstate(state["python"])
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), *rest))


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_metrics(path: Path, rows: list[dict[str, float]]) -> None:
    """metrics.csv, one row per epoch (rewritten whole, atomically, so a resume never duplicates rows)."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with tmp.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(METRICS_COLUMNS)
        for r in rows:
            writer.writerow([int(r["epoch"])] + [_fmt(r[c]) for c in METRICS_COLUMNS[1:]])
    os.replace(tmp, path)


def _fmt(v: float) -> str:
    return "" if v != v else f"{v:.6g}"  # NaN (no validation set) -> empty cell


def write_train_result(out: Path, cfg: Any, rows: list[dict[str, float]], argv: list[str]) -> None:
    last = rows[-1] if rows else {}
    table = {"title": "Per-epoch metrics", "columns": list(METRICS_COLUMNS),
             "rows": [[int(r["epoch"])] + [_fmt(r[c]) for c in METRICS_COLUMNS[1:]] for r in rows]}
    summary = (f"{cfg.arch} on {cfg.dataset}, {len(rows)} epochs: val top-1 error "
               f"{last.get('val_top1_err', float('nan')):.4f}, top-5 {last.get('val_top5_err', float('nan')):.4f}")
    write_result(out, "train", title="Training (Sec. 3)", summary=summary, params=dataclasses.asdict(cfg),
                 figures=[], tables=[table], data={"final": last, "history": rows, "argv": argv})
