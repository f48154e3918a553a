"""A local web explorer of a run directory: every mined feature map of every layer, browsable
unit by unit, classes to units, and uploaded images analysed with any model.

Pages: ``/`` (layers, classes, analyses of the run, an upload form), ``/layer/<layer>`` (every
mined map, paginated, sortable by activation, classes spanned, saturation), ``/layer/<layer>/map/<m>``
(a unit: its top-k projections and patches, the classes of its images, its receptive field, the
classes that drive it, its evolution over epochs, neighbours; previous/next with the arrow keys or
j/k), ``/jump?to=layer:map``, ``/classes`` and ``/class/<c>`` (maps that respond most to a class),
``/result/<name>`` and ``/figure/<path>`` (every analysis of the run and its figures, linked both
ways), ``POST /analyze`` -> ``/analysis/<id>`` (an upload: progress, then projections of the
strongest maps per layer and the occlusion maps, at a stable URL), ``/file/<path>`` (files of the
run). Safety: files are served only from inside the run directory and only with image/report
suffixes; uploads are decoded under a pixel cap; a Host-header allowlist answers only to local
names; analyses run in a bounded queue; any bad request gets a clear 4xx page. ``convlens serve``
runs it under waitress (:mod:`convlens.explorer.server`) and binds 127.0.0.1 by default.
"""
from __future__ import annotations

from convlens.explorer.app import MAX_UPLOAD_BYTES, create_app
from convlens.explorer.uploads import MAX_UPLOAD_PIXELS, ImageTooLarge, decode_upload

__all__ = ["MAX_UPLOAD_BYTES", "MAX_UPLOAD_PIXELS", "ImageTooLarge", "create_app", "decode_upload"]
