"""Projections on demand: a unit page of a map that ``mine`` did not project computes them once.

``convlens mine --project none`` (the fastest mining) records the model and data set it used
(:func:`convlens.topk.record.mine_source`). When a unit page of a map without projections is
opened, the page asks ``/layer/<layer>/map/<m>/projections``, which projects the map's top-k in one
batched call through :func:`convlens.topk.record.project_maps` (the function ``mine`` uses: same
PNGs, same ``units/<layer>/<m>.json``, same presentation) and answers their URLs; later views read
that JSON. One writer: one computation at a time in this process (a second request for the same
map waits and then finds it done), under the run folder's lock against other processes
(:func:`convlens.io.lock.lock_output`); files are written atomically by ``mine``'s own writers.
The model and data set are opened once per server (the first time, or ahead with :meth:`warm`).
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from convlens.explorer.jobs import failure_reason
from convlens.explorer.runindex import Entry, MapInfo, Mined, file_url

__all__ = ["Projector"]

log = logging.getLogger(__name__)


class Projector:
    """Opens the mined run's model once and projects maps on demand (see the module docstring).

    Args:
        root: the run folder the explorer serves.
        mined: returns the run's current :class:`~convlens.explorer.runindex.Mined` (or None).
        device: where the model computes (``cuda`` makes a first view several times faster).
    """

    def __init__(self, root: Path, mined: Callable[[], Mined | None], device: str = "cpu") -> None:
        self.root, self._mined, self.device = root, mined, device
        self.compute_lock = threading.Lock()  # one projection at a time; also guards the shared model
        self._open_lock = threading.Lock()
        self._source: Any = None
        self.computed = 0  # maps projected by this server (for tests and the log)
        self.error: str | None = None  # why opening the model failed in :meth:`warm`

    def source(self) -> Any:
        """The :class:`convlens.topk.record.MinedSource` of the run's ``mine`` result, opened once."""
        from convlens.topk.record import open_mined, warm_up

        with self._open_lock:
            if self._source is None:
                mined = self._mined()
                if mined is None:
                    raise ValueError("this run has no mined feature maps")
                t = time.perf_counter()
                source = open_mined(mined.result.dir, mined.result.params, device=self.device)
                try:  # the first page then costs what later ones do (reading, hashing, tracing done)
                    with _threads_for_load():
                        warm_up(source, {layer: ml.rule for layer, ml in mined.layers.items()})
                except (ValueError, RuntimeError, OSError, IndexError) as exc:
                    log.info("warming up projections on demand failed (pages will compute anyway): %s", exc)
                self._source = source
                log.info("opened %s for projections on demand in %.1f s", source.loaded.arch,
                         time.perf_counter() - t)
            return self._source

    def warm(self) -> threading.Thread:
        """Open the model and data set in a background thread. A failure of any kind (a model file calling
        ``sys.exit`` included) is logged at once and kept in :attr:`error`, for the start page."""
        def run() -> None:
            try:
                self.source()
            except BaseException as exc:  # a model file may sys.exit or raise anything: never in silence
                self.error = str(exc) if isinstance(exc, Exception) else failure_reason(exc)
                log.warning("the model this run was mined with cannot be opened: %s; uploads and projections on "
                            "demand are off, browsing works", self.error)

        thread = threading.Thread(target=run, name="convlens-warm", daemon=True)
        thread.start()
        return thread

    def cached(self, mined: Mined, layer: str, mi: MapInfo) -> MapInfo | None:
        """``mi`` with the projections found on disk (written by ``mine`` or on demand), or None."""
        path = mined.result.dir / "units" / layer / f"{mi.id}.json"
        try:
            saved = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        rows = saved.get("entries") if isinstance(saved, dict) else None
        if not isinstance(rows, list) or len(rows) != len(mi.entries):
            return None
        merged = []
        for e, row in zip(mi.entries, rows, strict=True):
            if not isinstance(row, dict) or str(row.get("image", "")) != e.image:
                return None  # made for another top-k
            proj = file_url(self.root, mined.result.dir, str(row.get("projection", "")))
            patch = file_url(self.root, mined.result.dir, str(row.get("patch", "")))
            if proj is None or patch is None or not (mined.result.dir / str(row["projection"])).is_file():
                return None
            box, raw = e.box, row.get("box")
            if isinstance(raw, list) and len(raw) == 4 and all(isinstance(v, (int, float)) for v in raw):
                y0, x0, y1, x1 = (int(v) for v in raw)
                box = (y0, x0, y1, x1)
            merged.append(dataclasses.replace(e, projection=proj, patch=patch, box=box))
        return dataclasses.replace(mi, entries=tuple(merged))

    def shown(self, mined: Mined, layer: str, mi: MapInfo) -> MapInfo:
        """``mi`` as pages show it: with cached projections merged in where ``mine`` did not make them."""
        if mi.thumb is not None or not mi.entries:
            return mi
        return self.cached(mined, layer, mi) or mi

    def ensure(self, mined: Mined, layer: str, mi: MapInfo) -> tuple[MapInfo, bool]:
        """``mi`` with its projections, computed now if they are not on disk; and whether they were computed.

        Raises:
            ValueError: the run does not record its model, the data set changed, or another
                process is writing the run (:class:`convlens.io.lock.OutputLocked`).
            FileNotFoundError: a recorded model or data file is gone.
        """
        from convlens.io.lock import lock_output
        from convlens.topk.record import project_maps

        shown = self.shown(mined, layer, mi)
        if shown.thumb is not None:
            return shown, False
        ml = mined.layers[layer]
        with self.compute_lock:
            hit = self.cached(mined, layer, mi)  # a concurrent request may have made them meanwhile
            if hit is not None:
                return hit, False
            source = self.source()
            t = time.perf_counter()
            with lock_output(mined.result.dir, "convlens serve (projecting on demand)", clean=False), \
                    _threads_for_load():
                project_maps(source, layer, [mi.id], rule=ml.rule, expected={mi.id: [e.image for e in mi.entries]})
            self.computed += 1
            log.info("projected %s map %d on demand in %.2f s", layer, mi.id, time.perf_counter() - t)
        hit = self.cached(mined, layer, mi)
        if hit is None:
            raise ValueError(f"projecting {layer} map {mi.id} wrote no readable result")
        return hit, True


@contextlib.contextmanager
def _threads_for_load() -> Iterator[None]:
    """One intra-op thread while every CPU is busy (1-minute load average >= cores), else torch's default.

    OpenMP threads that wait at a barrier for a descheduled sibling spin: on 2 shared cores at load 7,
    projecting one MobileNetV2 ``features.16`` map took 6-8 CPU-s and 18-24 s with 2 threads against
    1.3 CPU-s and 3-4 s with 1."""
    import torch

    before = torch.get_num_threads()
    try:
        busy = os.getloadavg()[0] >= (os.cpu_count() or 1)
    except OSError:  # no load average on this platform
        busy = False
    if busy:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if busy:
            torch.set_num_threads(before)


def entry_json(e: Entry) -> dict[str, Any]:
    return {"rank": e.rank, "projection": e.projection, "patch": e.patch,
            "box": list(e.box) if e.box is not None else None}
