"""Feature visualizations in the explorer: beside the top 9 on the unit page, as tiles on the layer page.

An image optimized to excite the unit (:mod:`convlens.featvis`) goes *beside* the natural top 9,
with its sanity ratio, never instead of them (see that package's docstring for why).

- ``GET /layer/<layer>/map/<m>/featvis``: JSON ``{"layer", "map", "state", "html", "record", "job",
  "estimate_s"}``; ``state`` is ``cached`` (``record``: activation, peak, top1, ratio, settings,
  image URLs), ``queued`` or ``running`` (``job``: the job's status), ``failed`` (``job.error``),
  ``none`` (not computed yet; ``estimate_s``) or ``unavailable`` (no model to compute with).
  ``html`` is the panel's body, from the template the page itself uses.
- ``POST`` the same URL queues the computation: one job per (layer, map) at a time (a second post
  gets the running job), at most :data:`CAPACITY` queued or running (more: 503). A script that
  sends ``Accept: application/json`` gets the JSON above (202 while running); a plain form gets a
  303 back to the unit page.

The job renders with cheap settings (:data:`ON_DEMAND`: 128 steps, 128 px; ``convlens featvis``
defaults to 512 steps) through :func:`convlens.featvis.store.render_to_dir` into the run's cache
``MINE/featvis`` (``MINE``: the ``convlens mine`` output, whose ``topk.pt`` gives the ratio to the
top-1 mined image), under the projector's compute lock (the model is shared with projections on
demand and uploads) and the mine folder's lock against other processes: one writer. Pages never
compute: they show what is cached there, in ``RUN/featvis`` and in ``convlens featvis`` results of
the run (the record with the most steps wins). The layer page's tile view is ``/layer/<layer>?view=featvis``.
"""
from __future__ import annotations

import logging
import threading
import time
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlencode

from flask import Flask, abort, jsonify, redirect, render_template, request

from convlens.explorer.jobs import Job, JobQueue
from convlens.explorer.runindex import Mined
from convlens.io.featvis_files import CACHE_DIR, cache_folders, caption, read_layer, read_unit, settings_text

__all__ = ["CAPACITY", "ON_DEMAND", "FeatvisJobs", "register_featvis"]

log = logging.getLogger(__name__)

# the on-demand settings: cheap (a MobileNetV2 unit takes about 5 s on one CPU core), stated on the page
ON_DEMAND: dict[str, Any] = {"steps": 128, "size": 128, "seed": 0, "objective": "channel"}
CAPACITY = 4
# seconds per step before this server has timed one: one MobileNetV2 unit of features.13, 128 px,
# one CPU thread (4.9 s for 128 steps); replaced by the last job's own time
PRIOR_SECONDS_PER_STEP = 0.04
MAX_TILES = 512
MAX_KEPT = 64  # finished jobs remembered (for a failure's message)
WAITING = ("queued", "running")


class FeatvisJobs:
    """The jobs and cache reads behind the routes (see the module docstring); ``computed`` counts renders."""

    def __init__(self, state: Any) -> None:
        self.state = state
        self.queue = JobQueue(workers=1, capacity=CAPACITY, keep=4 * CAPACITY)
        self._lock = threading.Lock()
        self._jobs: dict[tuple[str, int], Job] = {}
        self.computed = 0
        self.seconds_per_step: float | None = None

    def cache(self, mined: Mined) -> Path:
        return mined.result.dir / CACHE_DIR

    def folders(self, mined: Mined, layer: str) -> list[Path]:
        """Where records of ``layer`` may be: the explorer's cache, other caches, ``convlens featvis`` results."""
        results = [r.dir for r in self.state.run().of_kind("featvis") if r.data.get("layer") == layer]
        return list(dict.fromkeys([self.cache(mined), *cache_folders(self.state.root), *results]))

    def _shown(self, rec: dict[str, Any]) -> dict[str, Any] | None:
        urls = [self.state.url(rec["folder"] / n) for n in rec["images"]]
        if None in urls:
            return None
        model = str(rec["settings"].get("model", ""))
        return {**{k: v for k, v in rec.items() if k != "folder"}, "urls": urls,
                "captions": [caption(rec, k) for k in range(len(urls))],
                "settings_text": settings_text(rec["settings"]),
                "model": PurePosixPath(model.replace("\\", "/")).name if "/" in model or "\\" in model else model}

    def record(self, mined: Mined, layer: str, m: int) -> dict[str, Any] | None:
        """Map ``m``'s best record (most steps) with its image URLs, or None."""
        found = [r for f in self.folders(mined, layer) if (r := read_unit(f, layer, m)) is not None]
        shown = [s for r in sorted(found, key=lambda r: -_steps(r)) if (s := self._shown(r)) is not None]
        return shown[0] if shown else None

    def layer_records(self, mined: Mined, layer: str) -> dict[int, dict[str, Any]]:
        best: dict[int, dict[str, Any]] = {}
        for folder in self.folders(mined, layer):
            for unit, rec in read_layer(folder, layer).items():
                if unit not in best or _steps(rec) > _steps(best[unit]):
                    best[unit] = rec
        shown = {u: self._shown(r) for u, r in sorted(best.items())}
        return {u: s for u, s in shown.items() if s is not None}

    def estimate(self) -> int:
        return max(1, round((self.seconds_per_step or PRIOR_SECONDS_PER_STEP) * ON_DEMAND["steps"]))

    def view(self, mined: Mined, layer: str, m: int) -> dict[str, Any]:
        """What the panel shows (the template's ``fv``)."""
        rec = self.record(mined, layer, m)
        with self._lock:
            job = self._jobs.get((layer, m))
        status = job.status() if job is not None else None
        if rec is not None:
            state = "cached"
        elif status is not None and status["state"] in (*WAITING, "failed"):
            state = status["state"]
        elif status is not None:  # done, yet nothing readable in the run
            state, status["error"] = "failed", "the computation wrote no readable image into the run"
        else:
            state = "none" if self.state.loader is not None else "unavailable"
        return {"state": state, "rec": rec, "job": status, "estimate": self.estimate(), "first": self.computed == 0,
                "settings": settings_text(ON_DEMAND), "url": f"/layer/{layer}/map/{m}/featvis",
                "layer": layer, "map": m}

    def submit(self, mined: Mined, layer: str, m: int) -> Job | None:
        """The running job of (layer, m), or a new one; None when every slot is taken."""
        with self._lock:
            job = self._jobs.get((layer, m))
            if job is not None and not job.done:
                return job
            job = self.queue.submit(f"{layer}:{m}", {"layer": layer, "map": m},
                                    lambda job: self._work(job, mined, layer, m))
            if job is not None:
                self._jobs[(layer, m)] = job
                for key in [k for k, j in self._jobs.items() if j.done][:max(0, len(self._jobs) - MAX_KEPT)]:
                    del self._jobs[key]  # oldest finished first (a failure's message is kept a while)
            return job

    def _work(self, job: Job, mined: Mined, layer: str, m: int) -> dict[str, Any]:
        from convlens.featvis.render import FeatvisConfig
        from convlens.featvis.store import mined_top1, render_to_dir
        from convlens.io.lock import lock_output

        job.progress("opening the model", 0.05)
        loaded = self.state.model()
        config = FeatvisConfig(**ON_DEMAND)
        # the ratio only against the mining of this same model (an explorer given another model has none)
        top1 = mined_top1(mined.result.dir, layer) if self.state.shared_model else None
        job.progress(f"optimizing the image ({config.steps} steps at {config.size} px)", 0.15)
        with self.state.projector.compute_lock, lock_output(mined.result.dir, "convlens serve (feature visualization)",
                                                            clean=False):
            t = time.perf_counter()
            rec = render_to_dir(loaded.model, layer, [m], self.cache(mined), preprocessing=loaded.preprocessing,
                                config=config, model_name=loaded.arch, top1=top1)[0]
            seconds = time.perf_counter() - t
        self.seconds_per_step = seconds / config.steps
        self.computed += 1
        log.info("feature visualization of %s map %d in %.1f s", layer, m, seconds)
        return rec


def _steps(rec: dict[str, Any]) -> int:
    steps = rec["settings"].get("steps")
    return steps if isinstance(steps, int) else 0


def _mined_map(state: Any, layer: str, m: int) -> Mined:
    mined = state.mined()
    if mined is None:
        abort(404, "this run has no mined feature maps yet: run 'convlens mine ... --out RUN/mine'")
    ml = mined.layers.get(layer)
    if ml is None or ml.get(m) is None:
        abort(404, f"no mined feature map {m} of layer {layer[:80]!r} in this run")
    return mined


def register_featvis(app: Flask, state: Any) -> FeatvisJobs:
    """Add the feature-visualization routes and template helpers to the explorer's ``app``."""
    fv = FeatvisJobs(state)
    app.extensions["convlens_featvis"] = fv

    def answer(mined: Mined, layer: str, m: int) -> dict[str, Any]:
        view = fv.view(mined, layer, m)
        rec = view["rec"]
        record = None if rec is None else {k: rec[k] for k in ("unit", "activation", "peak", "top1", "ratio", "urls",
                                                                 "captions", "settings_text")}
        return {"layer": layer, "map": m, "state": view["state"], "record": record, "job": view["job"],
                "estimate_s": view["estimate"], "html": render_template("featvis_body.html", fv=view)}

    @app.route("/layer/<layer>/map/<int:m>/featvis", methods=["GET", "POST"])
    def featvis(layer: str, m: int) -> Any:
        mined = _mined_map(state, layer, m)
        wants_json = request.accept_mimetypes.best == "application/json" or request.method == "GET"
        if request.method == "POST" and fv.record(mined, layer, m) is None:
            refusal = None
            if state.loader is None:
                refusal = (409, "this explorer has no model to compute with: the run does not record the model "
                                "it was mined with; start it with --checkpoint C or --arch SPEC --weights W")
            elif fv.submit(mined, layer, m) is None:
                refusal = (503, f"the server is busy: {CAPACITY} feature visualizations are queued or running; "
                                "try again in a minute")
            if refusal is not None:
                if wants_json:
                    return jsonify({"error": refusal[1]}), refusal[0]
                abort(*refusal)
        if not wants_json:
            return redirect(f"/layer/{layer}/map/{m}", code=303)
        body = answer(mined, layer, m)
        return jsonify(body), (202 if body["state"] in WAITING else 200)

    def panel(layer: str, m: int) -> dict[str, Any]:
        mined = state.mined()
        return fv.view(mined, layer, m) if mined is not None else {"state": "unavailable"}

    def tiles(layer: str) -> dict[str, Any]:
        mined = state.mined()
        recs = fv.layer_records(mined, layer) if mined is not None else {}
        mined_ids = {mi.id for mi in mined.layers[layer].maps} if mined is not None and layer in mined.layers else set()
        args = {k: v for k, v in request.args.items() if k != "view"}
        on_args = {**args, "view": "featvis"}
        return {"on": request.args.get("view") == "featvis", "count": len(recs),
                "tiles": [{"id": u, "url": r["urls"][0], "ratio": (r["ratio"] or [None])[0], "act": r["activation"][0],
                           "size": r["settings"].get("size"), "mined": u in mined_ids, "caption": r["captions"][0]}
                          for u, r in list(recs.items())[:MAX_TILES]],
                "more": max(0, len(recs) - MAX_TILES),
                "on_url": f"/layer/{layer}?{urlencode(on_args)}",
                "off_url": f"/layer/{layer}" + (f"?{urlencode(args)}" if args else "")}

    app.jinja_env.globals.update(featvis_panel=panel, featvis_tiles=tiles)
    return fv
