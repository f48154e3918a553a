"""Saving results: ``result.json`` (the index the report and explorer read) and PNG images.

``result.json`` schema (``convlens.result/1``)::

    {"schema": "convlens.result/1", "kind": "mine", "title": "...", "summary": "one line: what and how",
     "params": {...}, "figures": [{"path": "x.png", "caption": "...", "group": "conv1"}],
     "tables": [{"title": "...", "columns": [...], "rows": [[...], ...]}], "data": {...}}

Figure paths are relative to the result's folder. Tensors and numpy values anywhere inside are
converted to plain JSON (lists, floats); non-finite floats become null.
"""
from __future__ import annotations

import errno
import json
import math
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from PIL import Image

__all__ = ["SCHEMA", "atomic_write", "markdown_table", "read_result", "save_figure", "save_png", "to_jsonable",
           "write_json", "write_result", "write_text"]

SCHEMA = "convlens.result/1"


def to_jsonable(obj: Any) -> Any:
    """Tensors, numpy values, paths, tuples, dataclasses with ``to_dict`` -> plain JSON values."""
    if isinstance(obj, torch.Tensor):
        obj = obj.detach().cpu()
        return to_jsonable(obj.item() if obj.dim() == 0 else obj.tolist())
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return to_jsonable(obj.item())
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, (str, int, bool)) or obj is None:
        return obj
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "to_dict"):
        return to_jsonable(obj.to_dict())
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (Sequence, set)):
        return [to_jsonable(v) for v in obj]
    raise TypeError(f"cannot store {type(obj).__name__} in JSON")


def atomic_write(path: str | Path, write: Callable[[IO[Any]], object], *, binary: bool = False) -> Path:
    """Write through ``write(file)`` to a temporary file in the same folder, fsync, then rename over
    ``path``: a crash never leaves a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb" if binary else "w") as f:
            try:
                write(f)
            except RuntimeError as exc:  # torch.save reports a failed write (a full disk) as a RuntimeError
                raise _write_error(path, exc) from exc
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _write_error(path: Path, exc: BaseException) -> OSError:
    """The disk error behind a failed write, as an OSError naming the file (ENOSPC when the disk is full)."""
    try:
        st = os.statvfs(path.parent)
        full = st.f_bavail * st.f_frsize < 1 << 20
    except OSError:
        full = False
    detail = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
    if full:
        return OSError(errno.ENOSPC, f"could not write {path}: no space left on the disk ({detail})")
    return OSError(errno.EIO, f"could not write {path}: the write failed ({detail}); is the disk full or gone?")


def write_json(obj: Any, path: str | Path) -> Path:
    """Write JSON atomically (see :func:`atomic_write`)."""
    data = to_jsonable(obj)
    return atomic_write(path, lambda f: json.dump(data, f, indent=1, allow_nan=False))


def write_result(out_dir: str | Path, kind: str, *, title: str, summary: str, params: Mapping[str, Any] | None = None,
                 figures: Sequence[Mapping[str, Any]] = (), tables: Sequence[Mapping[str, Any]] = (),
                 data: Mapping[str, Any] | None = None) -> Path:
    """Write ``out_dir/result.json`` (see the module docstring). Returns its path.

    Raises:
        ValueError: a figure path is absolute or does not exist under ``out_dir``.
    """
    out = Path(out_dir)
    for fig in figures:
        p = Path(fig["path"])
        if p.is_absolute() or ".." in p.parts:
            raise ValueError(f"figure paths must be relative to {out}, got {p}")
        if not (out / p).is_file():
            raise ValueError(f"figure {p} does not exist in {out}; save the PNG before writing the result")
    result = {
        "schema": SCHEMA, "kind": kind, "title": title, "summary": summary,
        "params": dict(params or {}), "figures": list(figures), "tables": list(tables), "data": dict(data or {}),
    }
    return write_json(result, out / "result.json")


def read_result(path: str | Path) -> dict[str, Any]:
    """Read a ``result.json`` (a folder or the file itself)."""
    path = Path(path)
    if path.is_dir():
        path = path / "result.json"
    return json.loads(path.read_text())


def save_png(img: torch.Tensor | np.ndarray, path: str | Path) -> Path:
    """Save an image: a float tensor (3, H, W) / (H, W) in [0, 1], or a uint8 (H, W[, 3]) array.

    Written atomically (a temporary file renamed over ``path``): a reader or a killed run never
    sees a half-written PNG."""
    path = Path(path)
    if isinstance(img, torch.Tensor):
        t = img.detach().cpu().float().clamp(0, 1)
        if t.dim() == 3:
            t = t.permute(1, 2, 0)
            if t.shape[-1] == 1:
                t = t[..., 0]
        arr = (t.numpy() * 255).round().astype(np.uint8)
    else:
        arr = np.asarray(img)
        if arr.dtype != np.uint8:
            raise ValueError(f"numpy images must be uint8 (H, W[, 3]), got {arr.dtype}")
    image = Image.fromarray(arr)
    fmt = Image.registered_extensions().get(path.suffix.lower(), "PNG")
    return atomic_write(path, lambda f: image.save(f, format=fmt), binary=True)


def save_figure(fig: Any, path: str | Path, **savefig_kw: Any) -> Path:
    """Save a matplotlib figure atomically (``fig.savefig`` into a temporary file, then rename); the
    format comes from the suffix."""
    path = Path(path)
    fmt = savefig_kw.pop("format", None) or path.suffix.lstrip(".").lower() or "png"
    return atomic_write(path, lambda f: fig.savefig(f, format=fmt, **savefig_kw), binary=True)


def write_text(path: str | Path, text: str) -> Path:
    """Write a text file (Markdown tables, HTML) atomically."""
    return atomic_write(path, lambda f: f.write(text))


def markdown_table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub-flavoured Markdown table."""
    def cell(v: Any) -> str:
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"
