"""What a model expects and returns: input normalization, input size, class names.

Each comes, in this order, from
1. the caller (``--normalize``, ``--input-size``, ``--classes``; the keyword arguments of
   :func:`convlens.nets.loading.load_model`),
2. a ``meta.json`` beside the weights file (or the checkpoint), with ``imagenet_classes.txt`` or
   ``classes.txt`` beside it for the class names,
3. what the model spec itself carries (a convlens checkpoint's stored preprocessing and class
   names; a timm model's ``pretrained_cfg``; a convlens architecture's input size),
4. the defaults: ImageNet normalization, 224 px, class indices as names.

``meta.json`` (every key optional)::

    {"input": {"normalize_mean": [0.5, 0.5, 0.5], "normalize_std": [0.5, 0.5, 0.5],   # [0, 1] units
               "size": 224, "resize": 256},
     "classes": ["tench", "goldfish", ...],
     "source": {"file": "model.tflite"}}     # a .tflite/.pb source turns on TF "SAME" padding

Normalization specs (``--normalize``): ``imagenet`` (torchvision's), ``inception`` (mean = std =
0.5: pixels to [-1, 1]), ``none`` (pixels in [0, 1]), or ``MEAN:STD`` with one or three
comma-separated values each in [0, 1] units, e.g. ``0.5:0.5`` or
``0.485,0.456,0.406:0.229,0.224,0.225``.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # no torch at import time: the CLI reads NORMALIZE_HELP while building its parser
    from convlens.images.data import Preprocessing

__all__ = [
    "NORMALIZE_HELP",
    "NORMALIZE_PRESETS",
    "SOURCES",
    "MeanStd",
    "Meta",
    "PreprocessingProvenance",
    "fixed_input_size",
    "make_preprocessing",
    "parse_normalize",
    "read_classes",
    "read_meta",
]

MeanStd = tuple[tuple[float, float, float], tuple[float, float, float]]

NORMALIZE_PRESETS: dict[str, MeanStd] = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "inception": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "none": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
}
NORMALIZE_HELP = ("imagenet, inception (mean=std=0.5), none (pixels in [0,1]) or MEAN:STD in [0,1] units, one or "
                  "three comma-separated values each, e.g. 0.5:0.5 or 0.485,0.456,0.406:0.229,0.224,0.225")


def _triple(text: str, what: str, spec: str) -> tuple[float, float, float]:
    try:
        vals = [float(v) for v in text.split(",")]
    except ValueError:
        raise ValueError(f"--normalize {spec!r}: the {what} must be numbers; expected {NORMALIZE_HELP}") from None
    if len(vals) == 1:
        vals = vals * 3
    if len(vals) != 3:
        raise ValueError(f"--normalize {spec!r}: the {what} has {len(vals)} values, expected 1 or 3 "
                         f"(R,G,B); e.g. 0.5:0.5")
    return vals[0], vals[1], vals[2]


def parse_normalize(value: str | Sequence[Sequence[float]]) -> MeanStd:
    """``imagenet`` | ``inception`` | ``none`` | ``MEAN:STD`` | ``(mean, std)`` -> ((3 means), (3 stds)) in [0, 1].

    Raises:
        ValueError: anything else, or a non-positive std.
    """
    if isinstance(value, str):
        text = value.strip().lower()
        if text in NORMALIZE_PRESETS:
            return NORMALIZE_PRESETS[text]
        if text.count(":") != 1:
            raise ValueError(f"--normalize: expected {NORMALIZE_HELP}; got {value!r}")
        mean_text, std_text = text.split(":")
        mean, std = _triple(mean_text, "mean", value), _triple(std_text, "std", value)
    else:
        try:
            mean_seq, std_seq = value
            mean = _triple(",".join(str(float(v)) for v in mean_seq), "mean", str(value))
            std = _triple(",".join(str(float(v)) for v in std_seq), "std", str(value))
        except (TypeError, ValueError):
            raise ValueError(f"normalize: expected a name or (mean, std) with 3 values each, got {value!r}") from None
    if min(std) <= 0:
        raise ValueError(f"--normalize {value!r}: every std must be > 0; e.g. 0.5:0.5")
    return mean, std


def read_classes(value: str | Path | Sequence[str]) -> list[str]:
    """Class names from a list, or a text file with one name per line (``name, synonyms`` keeps ``name``).

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is empty or not text.
    """
    if not isinstance(value, (str, Path)):
        names = [str(v) for v in value]
        if not names:
            raise ValueError("classes: the list of class names is empty")
        return names
    path = Path(value)
    if not path.is_file():
        raise FileNotFoundError(f"--classes {path}: no such file; expected a text file with one class name per line")
    try:
        lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    except UnicodeDecodeError:
        raise ValueError(f"--classes {path}: not a UTF-8 text file; expected one class name per line") from None
    if not lines:
        raise ValueError(f"--classes {path} is empty; expected one class name per line")
    return [ln.split(",")[0].strip() for ln in lines]


@dataclass(frozen=True)
class Meta:
    """What a ``meta.json`` (and a class-names file) beside the weights says; ``None`` = not given."""

    normalize: MeanStd | None = None
    input_size: int | None = None
    resize: int | None = None
    class_names: list[str] | None = None
    tf_padding: bool = False
    source_file: str | None = None  # meta.json's source.file (the model the weights were converted from)
    path: str | None = None  # the meta.json read, if any


def _positive_int(v: object, what: str, path: Path) -> int | None:
    if v is None or isinstance(v, str):  # absent, or a description for people ("Resize(256) + ...")
        return None
    if not isinstance(v, int) or isinstance(v, bool) or v < 1:
        raise ValueError(f"{path}: {what} must be a positive integer, got {v!r}")
    return v


def read_meta(folder: str | Path) -> Meta:
    """Read ``folder/meta.json`` and ``folder/{imagenet_classes,classes}.txt`` (each optional).

    Raises:
        ValueError: a ``meta.json`` that is not valid JSON or has wrongly typed entries.
    """
    folder = Path(folder)
    path = folder / "meta.json"
    info: dict = {}
    if path.is_file():
        try:
            info = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise ValueError(f"{path}: not valid JSON ({exc}); fix or remove it") from None
        if not isinstance(info, dict):
            raise ValueError(f"{path}: expected a JSON object, got {type(info).__name__}")
    inp = info.get("input", {}) if isinstance(info.get("input", {}), dict) else {}
    normalize = None
    if "normalize_mean" in inp and "normalize_std" in inp:
        try:
            normalize = parse_normalize((inp["normalize_mean"], inp["normalize_std"]))
        except ValueError as exc:
            raise ValueError(f"{path}: input.normalize_mean/std: {exc}") from None
    names = None
    if isinstance(info.get("classes"), list) and info["classes"]:
        names = [str(c) for c in info["classes"]]
    else:
        for fname in ("imagenet_classes.txt", "classes.txt"):
            if (folder / fname).is_file():
                names = read_classes(folder / fname)
                break
    source = info.get("source", {})
    tf = isinstance(source, dict) and str(source.get("file", "")).endswith((".tflite", ".pb"))
    source_file = str(source["file"]) if isinstance(source, dict) and source.get("file") else None
    return Meta(normalize, _positive_int(inp.get("size"), "input.size", path),
                _positive_int(inp.get("resize"), "input.resize", path), names, tf, source_file,
                str(path) if path.is_file() else None)


SOURCES = ("flag", "meta.json", "checkpoint", "model", "default")
"""Where a preprocessing value came from, in the order of precedence of the module docstring."""


def _numbers(values: Sequence[float] | str) -> str:
    return values if isinstance(values, str) else ",".join(f"{v:.4g}" for v in values)


@dataclass(frozen=True)
class PreprocessingProvenance:
    """The preprocessing a loaded model is fed with, and where each part came from (one of :data:`SOURCES`).

    Attributes:
        input_size: network input side (the center crop), in pixels.
        resize: the short side is resized to this before the crop.
        mean, std: per-channel values in [0, 1] units, or a description (a per-pixel mean image).
        size_from, resize_from, normalize_from: where the size, the resize and mean/std came from.
        tf_padding_convs: stride-2 convs given TF "SAME" padding (0: the fix is off).
        tf_padding_from: why it is on (``meta.json source model.tflite``, ``argument``), or None.
        meta_json: the ``meta.json`` read beside the weights or checkpoint, or None.
    """

    input_size: int
    resize: int
    mean: tuple[float, ...] | str
    std: tuple[float, ...] | str
    size_from: str
    resize_from: str
    normalize_from: str
    tf_padding_convs: int = 0
    tf_padding_from: str | None = None
    meta_json: str | None = None

    def line(self) -> str:
        """One line for people, e.g. ``preprocessing: 224 px (resize 256, center crop) from meta.json; ...``."""
        resize = f"resize {self.resize}" + (f" from {self.resize_from}" if self.resize_from != self.size_from
                                             and self.resize_from != "default" else "")
        parts = [f"{self.input_size} px ({resize}, center crop) from {self.size_from}",
                 f"mean {_numbers(self.mean)} std {_numbers(self.std)} from {self.normalize_from}"]
        if self.tf_padding_convs:
            parts.append(f"TF SAME padding on {self.tf_padding_convs} stride-2 convs ({self.tf_padding_from})")
        return "preprocessing: " + "; ".join(parts)

    def to_dict(self) -> dict[str, object]:
        """The same, structured, for ``result.json`` (``params.preprocessing``)."""
        return {"input_size": self.input_size, "resize": self.resize, "crop": "center",
                "mean": self.mean if isinstance(self.mean, str) else list(self.mean),
                "std": self.std if isinstance(self.std, str) else list(self.std),
                "size_from": self.size_from, "resize_from": self.resize_from, "normalize_from": self.normalize_from,
                "tf_same_padding": self.tf_padding_convs > 0, "tf_padding_convs": self.tf_padding_convs,
                "tf_padding_from": self.tf_padding_from, "meta_json": self.meta_json, "line": self.line()}


def make_preprocessing(normalize: MeanStd, input_size: int, resize: int | None = None) -> Preprocessing:
    """Resize the short side to ``resize`` (default ``input_size * 256 / 224``), center-crop ``input_size``,
    then ``(pixel01 - mean) / std``."""
    import torch

    from convlens.images.data import Preprocessing

    mean = torch.tensor(normalize[0], dtype=torch.float32).view(3, 1, 1) * 255
    std = torch.tensor(normalize[1], dtype=torch.float32).view(3, 1, 1) * 255
    resize = resize or round(input_size * 256 / 224)
    return Preprocessing(max(resize, input_size), input_size, mean, std)


def fixed_input_size(model: object) -> int | None:
    """The one input side a model accepts, when it has one (a vision transformer's position
    embeddings): torchvision's ``image_size`` attribute, or timm's ``pretrained_cfg`` with
    ``fixed_input_size``. None for models that take any size (convnets)."""
    size = getattr(model, "image_size", None)
    if isinstance(size, int) and size > 0:
        return size
    cfg = getattr(model, "pretrained_cfg", None)
    if isinstance(cfg, dict) and cfg.get("fixed_input_size") and cfg.get("input_size"):
        return int(cfg["input_size"][-1])
    return None
