"""A local web explorer of a run directory (Flask): browse Fig. 2 / Fig. 4 interactively and
analyze an uploaded image with the run's model (Sec. 2.1 projections, Sec. 4.2 occlusion).

Pages: ``/`` (the layers and an upload form), ``/layer/<layer>`` (every mined feature map),
``/layer/<layer>/map/<m>`` (its top-k projections and patches, and its evolution over epochs),
``POST /analyze`` (an uploaded image: strongest maps per layer projected, occlusion maps),
``/file/<path>`` (images of the run). Safety: files are served only from inside the run
directory and only with image/report suffixes (``send_from_directory`` + a resolve check);
uploads are limited to :data:`MAX_UPLOAD_BYTES` and accepted only if PIL decodes them; any
bad request gets a 4xx page and the server keeps serving. It binds 127.0.0.1 by default.
"""
from __future__ import annotations

import base64
import io
import threading
from pathlib import Path
from typing import Any

from flask import Flask, abort, render_template, request, send_from_directory
from PIL import Image, UnidentifiedImageError
from werkzeug.exceptions import HTTPException

from ..manifest import Result, Run, inside, load_run

__all__ = ["MAX_UPLOAD_BYTES", "MAX_UPLOAD_PIXELS", "create_app", "decode_upload"]

MAX_UPLOAD_BYTES = 8 * 1024 * 1024
MAX_UPLOAD_PIXELS = 40_000_000
SERVED_SUFFIXES = {".png", ".jpg", ".jpeg", ".gif", ".svg", ".webp", ".html", ".css", ".json", ".csv"}


def decode_upload(data: bytes) -> Image.Image:
    """Decode uploaded bytes with PIL (the content decides, not the file name).

    Raises:
        ValueError: empty, not an image PIL can decode, truncated, or over :data:`MAX_UPLOAD_PIXELS`.
    """
    if not data:
        raise ValueError("the upload is empty; choose an image file (PNG, JPEG, ...)")
    try:
        with Image.open(io.BytesIO(data)) as probe:
            if probe.width * probe.height > MAX_UPLOAD_PIXELS:
                raise ValueError(f"the image is {probe.width}x{probe.height} pixels; at most "
                                 f"{MAX_UPLOAD_PIXELS // 1_000_000} megapixels are accepted")
            probe.verify()
        img = Image.open(io.BytesIO(data))
        img.load()
        return img.convert("RGB")
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError) as exc:
        raise ValueError(f"the upload is not an image that can be decoded ({type(exc).__name__}: {exc}); "
                         "upload a PNG or JPEG file") from None


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


class _State:
    """The run directory, re-read when its results change, and the model, loaded once on first use."""

    def __init__(self, run_dir: Path, checkpoint: Path | None) -> None:
        self.root = run_dir.resolve()
        self.checkpoint = checkpoint or self.root / "checkpoints" / "last.pt"
        self._lock = threading.Lock()
        self.compute_lock = threading.Lock()  # one on-demand analysis at a time (2 shared cores)
        self._loaded: Any = None
        self._run: Run | None = None
        self._stamp: tuple[float, ...] = ()

    def run(self) -> Run:
        files = sorted(self.root.glob("*/result.json")) + sorted(self.root.glob("*/*/result.json"))
        stamp = (*tuple(p.stat().st_mtime for p in files if p.exists()), len(files))
        if self._run is None or stamp != self._stamp:
            self._run, self._stamp = load_run(self.root), stamp
        return self._run

    def model(self) -> Any:
        with self._lock:
            if self._loaded is None:
                from ..checkpoint import load_model

                self._loaded = load_model(self.checkpoint)
            return self._loaded

    def url(self, path: Path | str, base: Path | None = None) -> str | None:
        """``/file/...`` URL of a file inside the run (``path`` relative to ``base``), or None."""
        target = inside(base or self.root, path)
        if target is None or not target.is_relative_to(self.root) or not target.is_file():
            return None
        return "/file/" + target.relative_to(self.root).as_posix()


def _mine_layers(mine: Result | None) -> dict[str, Any]:
    layers = (mine.data.get("layers") if mine else None) or {}
    return layers if isinstance(layers, dict) else {}


def _activations(state: _State, mine: Result, acts: Any) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for a in acts if isinstance(acts, list) else []:
        if not isinstance(a, dict):
            continue
        out.append({
            "rank": a.get("rank", len(out)), "value": a.get("value"), "image": a.get("image", a.get("index")),
            "projection": state.url(str(a.get("projection", "")), mine.dir) if a.get("projection") else None,
            "patch": state.url(str(a.get("patch", "")), mine.dir) if a.get("patch") else None,
        })
    return out


def _evolution(state: _State, run: Run, layer: str, m: str) -> tuple[list[dict[str, Any]], str]:
    """The layer's Fig. 4 grid (rows = tracked maps, columns = epochs) and where map ``m`` is in it."""
    evo = run.first("evolution")
    if evo is None:
        return [], ""
    layers: dict[str, Any] = evo.data["layers"] if isinstance(evo.data.get("layers"), dict) else {}
    info: dict[str, Any] = layers[layer] if isinstance(layers.get(layer), dict) else {}
    tracked = [str(v) for v in info.get("maps", [])] if isinstance(info.get("maps"), list) else []
    figures = [{"label": f.caption, "url": state.url(f.path)} for f in evo.figures if f.group == layer]
    figures = [f for f in figures if f["url"]]
    if not figures:
        return [], ""
    if m in tracked:
        note = f"Map {m} is the row labelled {layer}:{m}."
    else:
        note = f"Map {m} was not among the maps tracked over training ({', '.join(tracked) or 'none'}); shown for context."
    return figures, note


def create_app(run_dir: str | Path, *, checkpoint: str | Path | None = None) -> Flask:
    """The explorer's Flask app for ``run_dir`` (use ``app.test_client()`` in tests).

    Args:
        run_dir: a run directory.
        checkpoint: model for uploads (default ``run_dir/checkpoints/last.pt``).

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
    state = _State(root, Path(checkpoint) if checkpoint else None)
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = MAX_UPLOAD_BYTES
    app.extensions["convlens"] = state

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> tuple[str, int]:
        return render_template("error.html", run=state.root.name, code=exc.code, name=exc.name,
                               message=exc.description), exc.code or 500

    @app.route("/")
    def index() -> str:
        run = state.run()
        mine = run.first("mine")
        layers = {k: v.get("num_maps", len(v.get("maps") or {})) for k, v in _mine_layers(mine).items()}
        report = state.url("report/index.html")
        return render_template("index.html", run=state.root.name, layers=layers, report=report,
                               results=run.results, warnings=run.warnings, mine=mine,
                               has_model=state.checkpoint.is_file(), max_mb=MAX_UPLOAD_BYTES // 2**20)

    @app.route("/layer/<layer>")
    def layer_page(layer: str) -> str:
        mine = state.run().first("mine")
        info = _mine_layers(mine).get(layer)
        if mine is None or not isinstance(info, dict):
            abort(404, f"no mined layer {layer!r} in this run; see the list on the start page")
        maps = []
        for m, acts in (info.get("maps") or {}).items():
            top = _activations(state, mine, acts)[:1]
            maps.append({"id": m, "thumb": top[0]["projection"] if top else None,
                         "value": top[0]["value"] if top else None})
        return render_template("layer.html", run=state.root.name, layer=layer, maps=maps,
                               num_maps=info.get("num_maps", len(maps)))

    @app.route("/layer/<layer>/map/<m>")
    def map_page(layer: str, m: str) -> str:
        run = state.run()
        mine = run.first("mine")
        info = _mine_layers(mine).get(layer)
        acts = (info.get("maps") or {}).get(m) if isinstance(info, dict) else None
        if mine is None or acts is None:
            abort(404, f"no feature map {m!r} of layer {layer!r} was mined in this run")
        evolution, note = _evolution(state, run, layer, m)
        return render_template("map.html", run=state.root.name, layer=layer, m=m,
                               acts=_activations(state, mine, acts), evolution=evolution, evolution_note=note)

    @app.route("/file/<path:rel>")
    def file(rel: str) -> Any:
        target = inside(state.root, rel)
        if target is None or target.suffix.lower() not in SERVED_SUFFIXES or not target.is_file():
            abort(404, "no such file in this run")
        return send_from_directory(state.root, target.relative_to(state.root).as_posix())

    @app.route("/analyze", methods=["POST"])
    def analyze() -> str:
        upload = request.files.get("image")
        if upload is None:
            abort(400, "no file in the form field 'image'; choose an image and press Analyze")
        try:
            image = decode_upload(upload.read(MAX_UPLOAD_BYTES + 1))
        except ValueError as exc:
            abort(400, str(exc))
        if not state.checkpoint.is_file():
            abort(409, f"this run has no model checkpoint ({state.checkpoint.name}); train one first")
        from .compute import analyze_image

        with state.compute_lock:
            result = analyze_image(state.model(), image)
        return render_template("analyze.html", run=state.root.name, a=result, uri=_data_uri,
                               filename=upload.filename or "upload")

    return app
