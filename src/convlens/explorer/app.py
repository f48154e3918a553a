"""The explorer's Flask app: state, files, analyses of the run, and uploads.

Browsing pages (layers, units, classes) are in :mod:`convlens.explorer.pages`. Uploads go through a
bounded :class:`~convlens.explorer.jobs.JobQueue`: ``POST /analyze`` decodes the image under the
pixel cap (at most two decodes at once), queues the analysis and answers ``303`` to its stable page
``/analysis/<id>``, which shows a progress bar (polling ``/analysis/<id>/status``) until the
result is there; a full queue gets ``503`` with a text saying so. Finished analyses are also kept
on disk in the run (:mod:`convlens.explorer.uploadstore`), so their addresses survive a restart.

A damaged run does not take the pages down: a file that cannot be read is named on the start page
(and the pages that need it say so), a run folder deleted or renamed while served answers 410
with what happened, and any other failure of a page is one error page naming the exception (the
server log has the traceback); a ``sys.exit`` or ``KeyboardInterrupt`` raised inside a request by
a model's code answers 500 instead of ending the request's thread.
"""
from __future__ import annotations

import base64
import contextlib
import logging
import math
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from flask import Flask, Response, abort, jsonify, redirect, render_template, request, send_from_directory
from werkzeug.exceptions import Gone, HTTPException

from convlens.explorer.api import register_api
from convlens.explorer.failsafe import damage_message, survive
from convlens.explorer.featvis_routes import register_featvis
from convlens.explorer.jobs import Job, JobQueue, release_memory
from convlens.explorer.ondemand import Projector
from convlens.explorer.public import public_json
from convlens.explorer.runindex import RULE_CHOICES, Mined, index_mine
from convlens.explorer.server import LOCAL_HOSTS, guard
from convlens.explorer.unitrange import TableCache
from convlens.explorer.uploads import MAX_UPLOAD_PIXELS, ImageTooLarge, decode_upload
from convlens.explorer.uploadstore import UploadStore, kept_input
from convlens.io.manifest import Result, Run, inside, load_run

__all__ = ["MAX_UPLOAD_BYTES", "create_app"]

MAX_UPLOAD_BYTES = 8 * 1024 * 1024
MAX_FORM_PARTS = 64  # the upload form sends 4 fields; werkzeug answers 413 beyond this many
SERVED_SUFFIXES = {".png", ".jpg", ".jpeg", ".gif", ".svg", ".webp", ".html", ".css", ".json", ".csv"}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".gif", ".svg", ".webp"}
ModelLoader = Callable[[], Any]

log = logging.getLogger(__name__)


class _State:
    """The run directory (re-indexed when its results change) and the model, loaded once on first use."""

    def __init__(self, run_dir: Path, loader: ModelLoader | None, model_label: str, max_pixels: int,
                 jobs: JobQueue) -> None:
        self.root = run_dir.resolve()
        self.loader, self.model_label, self.max_pixels, self.jobs = loader, model_label, max_pixels, jobs
        self._lock = threading.Lock()  # the run index
        self._model_lock = threading.Lock()  # loading the model (slow: never under the index lock)
        self.decode_slots = threading.BoundedSemaphore(2)  # decoded uploads in memory at once
        self._loaded: Any = None
        self._cache: tuple[tuple[float, ...], Run, Mined | None, tuple[str, ...]] | None = None
        self.projector: Projector
        self.store: UploadStore
        self.tables: TableCache
        self.shared_model = False  # the model is the projector's: uploads and projections take turns

    def _stamp(self) -> tuple[float, ...]:
        files = sorted(self.root.glob("*/result.json")) + sorted(self.root.glob("*/*/result.json"))
        stamps = []
        for p in files:
            try:
                stamps.append(p.stat().st_mtime)
            except OSError:
                stamps.append(-1.0)
        return (*stamps, float(len(files)))

    def _load(self) -> tuple[Run, Mined | None, tuple[str, ...]]:
        stamp = self._stamp()
        with self._lock:
            if not self.root.is_dir():
                self._cache = None
                raise Gone(f"the run folder {self.root.name!r} is gone: it was deleted or renamed after the server "
                           "started. Nothing of this run can be shown any more (analyses of uploads still in "
                           "memory stay at their addresses); start the explorer again on the run's new place: "
                           "convlens serve RUN")
            if self._cache is None or self._cache[0] != stamp:
                run = load_run(self.root)
                mine = run.first("mine")
                mined: Mined | None = None
                problems: tuple[str, ...] = ()
                try:
                    mined = index_mine(self.root, mine) if mine is not None else None
                except Exception as exc:  # a malformed file the index does not foresee: say so, keep the rest
                    log.error("indexing %s failed", mine.dir / "result.json" if mine else "mine", exc_info=exc)
                    where = mine.dir.relative_to(self.root).as_posix() if mine and mine.dir != self.root else "."
                    problems = (f"{where}/result.json could not be read as mined feature maps ({type(exc).__name__}: "
                                f"{exc}); the layer, unit and class pages are off, the other results still show",)
                self._cache = (stamp, run, mined, problems)
            return self._cache[1], self._cache[2], self._cache[3]

    def warnings(self) -> list[str]:
        """What the start page says is wrong with the run (files that cannot be read, a model that does not open)."""
        run, mined, problems = self._load()
        out = [*run.warnings, *(mined.warnings if mined else ()), *problems]
        if self.model_error and self.shared_model:
            out.append(f"the model this run was mined with cannot be opened: {self.model_error}; uploads and "
                       "projections on demand are off (browsing works), or start the explorer with --arch/--checkpoint")
        return out

    def run(self) -> Run:
        return self._load()[0]

    @property
    def model_error(self) -> str | None:
        """Why the run's recorded model cannot be opened (None: it opened, or is opening)."""
        return self.projector.error

    def job(self, job_id: str) -> Job | None:
        """The upload analysis ``job_id``: in memory, else kept on disk (after a restart), else None."""
        return self.jobs.get(job_id) or self.store.load(job_id)

    def mined(self) -> Mined | None:
        return self._load()[1]

    def model(self) -> Any:
        with self._model_lock:
            if self._loaded is None:
                if self.loader is None:
                    raise ValueError("this explorer has no model for uploads")
                self._loaded = self.loader()
            return self._loaded

    def url(self, path: Path | str, base: Path | None = None) -> str | None:
        """``/file/...`` URL of an existing file inside the run (``path`` relative to ``base``), or None."""
        target = inside(base or self.root, path)
        if target is None or not target.is_relative_to(self.root) or not target.is_file():
            return None
        return "/file/" + target.relative_to(self.root).as_posix()


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def result_url(r: Result) -> str:
    return "/result/" + (r.name or ".")


def _figures_of(state: _State, r: Result, mined: Mined | None) -> list[dict[str, Any]]:
    out = []
    for f in r.figures:
        rel = f.path.relative_to(state.root).as_posix() if f.path.is_relative_to(state.root) else None
        if rel is None:
            continue
        layer = f.group if mined is not None and f.group in mined.layers else None
        out.append({"caption": f.caption, "group": f.group, "src": "/file/" + rel, "page": "/figure/" + rel,
                    "layer": layer})
    return out


def _default_loader(root: Path, checkpoint: str | Path | None) -> tuple[ModelLoader | None, str]:
    path = Path(checkpoint) if checkpoint else root / "checkpoints" / "last.pt"
    if not path.is_file():
        return None, ""

    def load() -> Any:
        from convlens.nets.loading import load_model

        return load_model(path)

    return load, path.name


def _record_loader(state: _State) -> tuple[ModelLoader | None, str]:
    """The model the run's ``mine`` recorded (shared with the projections on demand), and its label."""
    mined = state.mined()
    src = mined.result.params.get("source") if mined is not None else None
    if not isinstance(src, dict) or not (src.get("checkpoint") or src.get("arch")):
        return None, ""
    name = Path(str(src.get("weights") or src.get("checkpoint") or "")).name
    label = str(src.get("arch") or "") + (f" with {name}" if name and src.get("arch") else name)
    return (lambda: state.projector.source().loaded), f"{label} (the model this run was mined with)"


def create_app(run_dir: str | Path, *, checkpoint: str | Path | None = None, model: ModelLoader | None = None,
               model_label: str = "", allowed_hosts: Sequence[str] = LOCAL_HOSTS,
               max_pixels: int = MAX_UPLOAD_PIXELS, workers: int = 1, queue: int = 4, keep: int = 32,
               preload: bool = False, device: str = "cpu", keep_uploads: int = 64) -> Flask:
    """The explorer's Flask app for ``run_dir`` (use ``app.test_client()`` in tests).

    Args:
        run_dir: a run directory.
        checkpoint: convlens checkpoint for uploads (default ``run_dir/checkpoints/last.pt``).
        model: instead of ``checkpoint``, a function returning a :class:`convlens.nets.checkpoint.Loaded`
            (any model spec), called once, on the first upload.
        model_label: how to name that model on the pages.
        allowed_hosts: ``Host`` header names answered (others get 400); ``"*"`` allows any.
        max_pixels: pixel cap of uploads (413 over it).
        workers, queue, keep: analyses computed at once, queued or running at most (more: 503),
            and results kept in memory for their links.
        keep_uploads: finished analyses kept on disk in ``run_dir/explorer/uploads`` (newest first,
            256 MB at most), so that their links survive a restart.
        preload: open the mined run's model in the background now, so that the first unit page
            needing projections on demand (:mod:`convlens.explorer.ondemand`) does not wait for it.
        device: where that model computes (projections on demand, and uploads when it serves them).

    Without ``checkpoint``/``model`` and without ``run_dir/checkpoints/last.pt``, uploads use the
    model the run's ``mine`` recorded (``params.source`` of its ``result.json``).

    Raises:
        NotADirectoryError: ``run_dir`` does not exist.

    Example:
        >>> app = create_app("runs/demo")
        >>> app.test_client().get("/").status_code
        200
    """
    root = Path(run_dir)
    if not root.is_dir():
        raise NotADirectoryError(f"run directory {str(run_dir)!r} does not exist")
    loader, label = ((model, model_label or "the given model") if model is not None
                     else _default_loader(root, checkpoint))
    store = UploadStore(root.resolve() / "explorer" / "uploads", keep=keep_uploads)
    state = _State(root, loader, label, max_pixels,
                   JobQueue(workers=workers, capacity=queue, keep=keep, on_done=store.save))
    state.store = store
    state.projector = Projector(state.root, state.mined, device)
    state.tables = TableCache()
    state.shared_model = loader is None
    if loader is None:
        state.loader, state.model_label = _record_loader(state)
    if preload and state.mined() is not None:
        state.projector.warm()  # a failure is logged at once and shown on the start page
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = MAX_UPLOAD_BYTES
    app.config["MAX_FORM_PARTS"] = MAX_FORM_PARTS
    # a text field is bounded by the body's own limit; so a 413 within that limit means too many fields
    app.config["MAX_FORM_MEMORY_SIZE"] = MAX_UPLOAD_BYTES
    app.extensions["convlens"] = state
    app.wsgi_app = guard(survive(app.wsgi_app), allowed_hosts)  # type: ignore[method-assign]

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> tuple[str, int]:
        message = exc.description or ""
        if exc.code == 413 and message == type(exc).description:  # werkzeug's own text: which limit?
            size = request.content_length
            if size is not None and size <= MAX_UPLOAD_BYTES:
                message = (f"too many form fields (more than {MAX_FORM_PARTS}); the upload form sends an image, "
                           "a rule and the occluder's window and stride")
            else:
                message = f"the upload is larger than {MAX_UPLOAD_BYTES // 2**20} MB; choose a smaller image"
        if exc.code in (404, 409):  # a page missing because a file of the run is damaged: say which
            with contextlib.suppress(Exception):
                message += "".join(f". Note: {w}" for w in state.warnings() if "damaged" in w or "could not" in w)
        return render_template("error.html", run=state.root.name, code=exc.code, name=exc.name,
                               message=message), exc.code or 500

    @app.errorhandler(Exception)
    def page_error(exc: Exception) -> tuple[str, int]:
        log.error("%s %s failed", request.method, request.path, exc_info=exc)
        return render_template("error.html", run=state.root.name, code=500, name="This page could not be built",
                               message=damage_message(exc, state.root)), 500

    @app.context_processor
    def common() -> dict[str, Any]:
        return {"run": state.root.name}

    @app.template_filter("num")
    def num(value: Any, fmt: str = "%.3g") -> str:
        """A number as ``fmt``; a missing or non-finite one as a dash (never ``nan`` on a page)."""
        try:
            v = float(value)
        except (TypeError, ValueError):
            return "\u2013"
        return fmt % v if math.isfinite(v) else "\u2013"

    @app.route("/")
    def index() -> str:
        run, mined = state.run(), state.mined()
        results = [{"r": r, "url": result_url(r), "n": len(r.figures),
                    "compare": "/compare/" + (r.name or "") if r.kind == "compare" else None} for r in run.results]
        return render_template("index.html", mined=mined, report=state.url("report/index.html"),
                               results=results, warnings=state.warnings(),
                               has_model=state.loader is not None and not (state.shared_model and state.model_error),
                               model_label=state.model_label,
                               max_mb=MAX_UPLOAD_BYTES // 2**20, max_mp=state.max_pixels / 1e6, rules=RULE_CHOICES,
                               occ=_occluder_defaults(mined))

    @app.route("/result/<path:name>")
    def result_page(name: str) -> str:
        run, mined = state.run(), state.mined()
        found = [r for r in run.results if (r.name or ".") == name]
        if not found:
            abort(404, f"no analysis {name!r} in this run; see the list on the start page")
        r = found[0]
        return render_template("result.html", r=r, figures=_figures_of(state, r, mined), mined=mined,
                               is_mine=mined is not None and mined.result.dir == r.dir)

    @app.route("/figure/<path:rel>")
    def figure_page(rel: str) -> str:
        target = inside(state.root, rel)
        if target is None or target.suffix.lower() not in IMAGE_SUFFIXES or not target.is_file():
            abort(404, "no such figure in this run")
        run, mined = state.run(), state.mined()
        owner = next((r for r in run.results if any(f.path == target for f in r.figures)), None)
        if owner is None:
            owner = next((r for r in run.results if target.is_relative_to(r.dir)), None)
        fig = next((f for f in owner.figures if f.path == target), None) if owner else None
        layer = fig.group if fig is not None and mined is not None and fig.group in mined.layers else None
        return render_template("figure.html", src="/file/" + target.relative_to(state.root).as_posix(),
                               caption=fig.caption if fig else target.name, owner=owner,
                               owner_url=result_url(owner) if owner else None, layer=layer)

    @app.route("/file/<path:rel>")
    def file(rel: str) -> Any:
        target = inside(state.root, rel)
        if target is None or target.suffix.lower() not in SERVED_SUFFIXES or not target.is_file():
            abort(404, "no such file in this run")
        if target.suffix.lower() == ".json":  # without this machine's absolute paths
            return Response(public_json(target, state.root), mimetype="application/json")
        return send_from_directory(state.root, target.relative_to(state.root).as_posix(), max_age=3600)

    @app.route("/analyze", methods=["POST"])
    def analyze() -> Any:
        if state.loader is None:
            abort(409, "this explorer has no model for uploads: start it with --checkpoint C or "
                       "--arch torchvision:NAME --weights W")
        if state.shared_model and state.model_error:
            abort(409, f"the model this run was mined with cannot be opened: {state.model_error}; start the "
                       "explorer with --checkpoint C or --arch SPEC --weights W for uploads")
        rule = request.form.get("rule", "auto")
        if rule not in RULE_CHOICES:
            abort(400, f"rule must be one of {', '.join(RULE_CHOICES)}, got {rule[:40]!r}")
        upload = request.files.get("image")
        if upload is None:
            abort(400, "no file in the form field 'image'; choose an image and press Analyze")
        if not state.decode_slots.acquire(timeout=10):
            abort(503, "the server is busy decoding other uploads; try again in a moment")
        try:
            data = upload.read(MAX_UPLOAD_BYTES + 1)
            image = decode_upload(data, max_pixels=state.max_pixels, target_size=512)
            del data
        except ImageTooLarge as exc:
            abort(413, str(exc))
        except ValueError as exc:
            abort(400, str(exc))
        finally:
            state.decode_slots.release()
            release_memory()  # give a large decode's buffers back to the system now
        job = _submit(state, image, rule, (upload.filename or "upload")[:120], _occluder_args())
        return redirect(f"/analysis/{job.id}", code=303)

    @app.route("/analysis/<job_id>/rule", methods=["POST"])
    def rerun(job_id: str) -> Any:
        old = state.job(job_id)
        image = old.params.get("image") if old is not None else None
        if old is not None and image is None:
            image = kept_input(old)
        if old is None or image is None:
            abort(404, f"this analysis is no longer kept (the newest {state.store.keep} are); upload the image again")
        rule = request.form.get("rule", "auto")
        if rule not in RULE_CHOICES:
            abort(400, f"rule must be one of {', '.join(RULE_CHOICES)}, got {rule[:40]!r}")
        job = _submit(state, image, rule, old.name, old.params.get("occluder", {}))
        return redirect(f"/analysis/{job.id}", code=303)

    @app.route("/analysis/<job_id>")
    def analysis(job_id: str) -> Any:
        job = state.job(job_id)
        if job is None:
            abort(404, f"no such analysis: the newest {state.store.keep} finished analyses are kept in the run "
                       f"({state.jobs.keep} in memory when the run folder cannot be written), and one still running "
                       "when the server stopped is lost; upload the image again")
        return render_template("analysis.html", job=job, a=job.result, uri=_data_uri, rules=RULE_CHOICES)

    @app.route("/analysis/<job_id>/status")
    def analysis_status(job_id: str) -> Response:
        job = state.job(job_id)
        if job is None:
            abort(404, "no such analysis")
        return jsonify(job.status())

    from convlens.explorer.comparepage import register_compare
    from convlens.explorer.pages import register_pages
    from convlens.explorer.unitrange import register_dataset_images

    register_pages(app, state)
    register_api(app, state)
    register_featvis(app, state)  # feature visualizations beside the top 9 (convlens.explorer.featvis_routes)
    register_dataset_images(app, state)
    register_compare(app, state)
    return app


def _occluder_defaults(mined: Mined | None) -> dict[str, int]:
    """The upload form's default occluder for the run's input size (224 px when unknown)."""
    from convlens.explorer.compute import occluder_grid

    source = mined.result.params.get("source") if mined is not None else None
    side = (mined.input_size if mined is not None else None) or (
        source.get("input_size") if isinstance(source, dict) else None) or 224
    window, stride = occluder_grid(int(side))
    return {"side": int(side), "window": window, "stride": stride}


def _occluder_args() -> dict[str, int]:
    """The upload form's occlusion ``window`` and ``stride`` (px; empty: the default for the input size)."""
    out = {}
    for key in ("window", "stride"):
        raw = (request.form.get(key) or "").strip()
        if not raw:
            continue
        if not raw.isdigit() or not 1 <= int(raw) <= 4096:
            abort(400, f"occlusion {key} must be a whole number of pixels (1..4096) or empty, got {raw[:20]!r}")
        out[key] = int(raw)
    return out


def _submit(state: _State, image: Any, rule: str, name: str, occluder: dict[str, int]) -> Job:
    mined = state.mined()

    def work(job: Job) -> Any:
        from convlens.explorer.compute import analyze_image, upload_layers

        job.progress("loading the model", 0.02)
        loaded = state.model()
        layers = upload_layers(loaded, list(mined.layers) if mined else [])

        def link(layer: str, m: int) -> str | None:
            ml = mined.layers.get(layer) if mined else None
            return f"/layer/{layer}/map/{m}" if ml is not None and ml.get(m) is not None else None

        with state.projector.compute_lock if state.shared_model else contextlib.nullcontext():
            return analyze_image(loaded, job.params["image"], layers=layers, rule=rule, link=link,
                                 progress=job.progress, **occluder)

    job = state.jobs.submit(name, {"image": image, "rule": rule, "occluder": occluder}, work)
    if job is None:
        abort(503, f"the server is busy: {state.jobs.capacity} analyses are queued or running; "
                   "try again in a minute")
    return job

