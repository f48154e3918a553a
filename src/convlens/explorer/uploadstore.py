"""Analyses of uploads kept on disk in the run, so that their addresses survive a server restart.

Each finished analysis (done or failed) is written to ``RUN/explorer/uploads/<id>/``:
``analysis.json`` (its name, state, error, rule, occluder, and every panel's text, colour bar and
key, naming its PNG), the PNGs themselves (``p<n>.png``), and ``input.png``, the decoded upload
(short side at most 1024 px, the decoder's own "twice the model's 512 px target" bound) for a
recompute with another rule. A folder is written under a temporary name (``.tmp-<id>``) and renamed
into place, so a reader sees a whole analysis or none; one writer at a time (a lock in this
process, :func:`convlens.io.lock.lock_output` on the folder against another server on the same
run). The store is bounded: the newest ``keep`` analyses and at most ``max_bytes`` in all, oldest
dropped first. When the run folder cannot be written (read-only), analyses stay in memory only.
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
import threading
import time
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from convlens.explorer.jobs import Job

__all__ = ["UploadStore", "kept_input"]

log = logging.getLogger(__name__)

JOB_ID = re.compile(r"[A-Za-z0-9_-]{8,64}")
INPUT_SIDE = 1024  # short side of the kept input image (twice the decoder's 512 px upload target)


class UploadStore:
    """Finished upload analyses under ``folder`` (see the module docstring).

    Args:
        folder: where they live (``RUN/explorer/uploads``).
        keep: how many are kept at most (newest first).
        max_bytes: how many bytes they take at most, all together.
    """

    def __init__(self, folder: Path, *, keep: int = 64, max_bytes: int = 256 * 2**20) -> None:
        if keep < 1 or max_bytes < 1:
            raise ValueError(f"keep and max_bytes must be >= 1, got keep={keep}, max_bytes={max_bytes}")
        self.folder, self.keep, self.max_bytes = folder, keep, max_bytes
        self._lock = threading.Lock()
        self.off: str | None = None  # why analyses are not kept on disk (None: they are)

    def save(self, job: Job, outcome: str | None = None) -> Path | None:
        """Write the finished ``job`` (its :class:`~convlens.explorer.compute.ImageAnalysis` result, or
        its error) and drop the oldest beyond the bounds; returns its folder (None: not kept).
        ``outcome`` (``done`` or ``failed``) is its state, when the job does not show it yet."""
        state = outcome or job.state
        if state not in ("done", "failed") or self.off is not None or not JOB_ID.fullmatch(job.id):
            return None
        from convlens.io.lock import OutputLocked, lock_output

        with self._lock:
            try:
                with lock_output(self.folder, "convlens serve (keeping an upload's analysis)", clean=False):
                    self._remove_temporaries()
                    target = self._write(job, state)
                    self._prune(keep=target)
                return target
            except OutputLocked as exc:
                log.warning("analysis %s is kept in memory only: %s", job.id, exc)
            except OSError as exc:
                self.off = f"the run folder cannot be written ({exc.strerror or exc}: {exc.filename or self.folder})"
                log.warning("analyses of uploads are kept in memory only: %s", self.off)
            return None

    def load(self, job_id: str) -> Job | None:
        """The analysis ``job_id`` as a finished :class:`Job` (None: not kept, or its files are damaged)."""
        folder = self.folder / job_id
        if not JOB_ID.fullmatch(job_id) or not folder.is_dir():
            return None
        try:
            meta = json.loads((folder / "analysis.json").read_text(encoding="utf-8"))
            job = Job(str(meta["name"]), {"rule": meta["rule"], "occluder": dict(meta.get("occluder") or {})})
            job.id, job.state, job.error = job_id, str(meta["state"]), meta.get("error")
            job.stage, job.fraction = job.state, 1.0
            job.created, job.finished = float(meta["created"]), float(meta["finished"])
            job.params["image_file"] = folder / "input.png"
            if meta.get("result") is not None:
                job.result = _rebuild(meta["result"], folder)
            return job if job.state in ("done", "failed") else None
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            log.warning("kept analysis %s is damaged (%s: %s); it is not shown", job_id, type(exc).__name__, exc)
            return None

    def kept(self) -> list[Path]:
        """The kept analyses' folders, oldest first."""
        if not self.folder.is_dir():
            return []
        found = [p for p in self.folder.iterdir() if p.is_dir() and JOB_ID.fullmatch(p.name)]
        return sorted(found, key=lambda p: (p.stat().st_mtime, p.name))

    def _write(self, job: Job, state: str) -> Path:
        tmp = self.folder / f".tmp-{job.id}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        pngs: list[bytes] = []
        image = job.params.get("image")
        if isinstance(image, Image.Image):
            small = image.copy()
            if min(small.size) > INPUT_SIDE:
                scale = INPUT_SIDE / min(small.size)
                small = small.resize((max(1, round(small.width * scale)), max(1, round(small.height * scale))),
                                     Image.Resampling.LANCZOS)
            small.save(tmp / "input.png")
        meta = {"name": job.name, "state": state, "error": job.error, "rule": job.params.get("rule", "auto"),
                "occluder": job.params.get("occluder", {}), "created": job.created,
                "finished": job.finished or time.time(),
                "result": _flatten(job.result, pngs) if state == "done" else None}
        for i, data in enumerate(pngs):
            (tmp / f"p{i}.png").write_bytes(data)
        (tmp / "analysis.json").write_text(json.dumps(meta), encoding="utf-8")
        target = self.folder / job.id
        shutil.rmtree(target, ignore_errors=True)
        os.replace(tmp, target)  # a whole analysis appears at once
        return target

    def _prune(self, keep: Path) -> None:
        kept = self.kept()
        sizes = {p: sum(f.stat().st_size for f in p.iterdir() if f.is_file()) for p in kept}
        total = sum(sizes.values())
        for old in kept:
            if old == keep or (len(kept) <= self.keep and total <= self.max_bytes):
                continue
            shutil.rmtree(old, ignore_errors=True)
            kept = [p for p in kept if p != old]
            total -= sizes[old]

    def _remove_temporaries(self) -> None:
        for p in self.folder.glob(".tmp-*"):  # left by a killed server
            shutil.rmtree(p, ignore_errors=True)


def kept_input(job: Job) -> Image.Image | None:
    """The input image of a kept analysis (:meth:`UploadStore.load`), or None when it is gone."""
    path = job.params.get("image_file")
    try:
        with Image.open(path) as im:  # type: ignore[arg-type]
            return im.convert("RGB")
    except (OSError, ValueError, TypeError, AttributeError):
        return None


def _flatten(value: Any, pngs: list[bytes]) -> Any:
    """A result as JSON: dataclasses as ``{"__type__": name, field: ...}``, bytes as a PNG file's index."""
    if isinstance(value, bytes):
        pngs.append(value)
        return {"__png__": len(pngs) - 1}
    if is_dataclass(value) and not isinstance(value, type):
        return {"__type__": type(value).__name__, **{f.name: _flatten(getattr(value, f.name), pngs)
                                                      for f in fields(value)}}
    if isinstance(value, dict):
        return {str(k): _flatten(v, pngs) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_flatten(v, pngs) for v in value]
    return value


def _rebuild(value: Any, folder: Path) -> Any:
    """The inverse of :func:`_flatten` for :mod:`convlens.explorer.compute`'s result classes."""
    from convlens.explorer.compute import ImageAnalysis, Panel

    classes = {"ImageAnalysis": ImageAnalysis, "Panel": Panel}
    if isinstance(value, dict) and "__png__" in value:
        return (folder / f"p{int(value['__png__'])}.png").read_bytes()
    if isinstance(value, dict) and "__type__" in value:
        cls = classes[str(value["__type__"])]
        args = {k: _rebuild(v, folder) for k, v in value.items() if k != "__type__"}
        if cls is Panel:
            args["key"] = tuple(tuple(row) for row in args.get("key") or ())
            args["bar"] = tuple(args["bar"]) if args.get("bar") is not None else None
        if cls is ImageAnalysis:
            args["predictions"] = [tuple(p) for p in args.get("predictions") or []]
        return cls(**args)
    if isinstance(value, dict):
        return {k: _rebuild(v, folder) for k, v in value.items()}
    if isinstance(value, list):
        return [_rebuild(v, folder) for v in value]
    return value
