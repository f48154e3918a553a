"""Any model through one front door: :func:`load_model` reads a *model spec*.

Model specs:

- ``path/to/last.pt``: a convlens checkpoint (written by ``convlens train``),
- ``torchvision:NAME``: a torchvision classification model (``torchvision:resnet18``),
- ``timm:NAME``: a timm model (needs the optional extra: ``pip install -e '.[timm]'`` in a clone of
  convlens, or ``pip install timm``),
- ``path/to/file.py:factory``: ``factory`` in your own file, a class or a function returning an
  ``nn.Module``, called without arguments,
- ``package.module:factory``: the same from an importable module,
- ``zfnet``, ``zfnet-small:no34`` ...: a convlens architecture with fresh weights.

A spec naming your code *imports and runs that code*, which is what you ask for; never build a
spec from text that comes over the network.

``weights`` loads a state_dict (``torch.save(model.state_dict(), "w.pt")`` read with
``weights_only=True``, or a ``.safetensors`` file) into the model; weights that do not fit raise a
``ValueError`` naming a few missing, unexpected and wrongly shaped keys. For torchvision, timm and
convlens architectures, the number of classes is taken from the weights' classifier.
Normalization, input size and class names: see :mod:`convlens.nets.meta` for where they come from.
"""
from __future__ import annotations

import difflib
import hashlib
import importlib
import importlib.util
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from convlens.images.data import Preprocessing
from convlens.nets.meta import (
    NORMALIZE_PRESETS,
    MeanStd,
    Meta,
    PreprocessingProvenance,
    fixed_input_size,
    make_preprocessing,
    parse_normalize,
    read_classes,
    read_meta,
)
from convlens.nets.weights import check_finite, fit_state_dict, read_state_dict

__all__ = ["SPEC_HELP", "Loaded", "load_model", "parse_spec"]

SPEC_HELP = ("a convlens checkpoint file, torchvision:NAME, timm:NAME, path/to/file.py:factory, "
             "package.module:factory, or a convlens architecture (zfnet, zfnet-small, ...)")
_FILE_SPEC = re.compile(r"^(?P<path>.+\.py):(?P<attr>[A-Za-z_][\w.]*)$")
_MODULE_SPEC = re.compile(r"^(?P<mod>[A-Za-z_][\w]*(\.[A-Za-z_]\w*)*):(?P<attr>[A-Za-z_][\w.]*)$")


@dataclass
class Loaded:
    """A model ready for analysis (eval mode) with what is needed to feed and read it.

    ``input_size`` is the side of the network input (the preprocessing's center crop); ``provenance``
    says what the preprocessing is and where each part came from (``provenance.line()`` for people).
    """

    model: nn.Module
    preprocessing: Preprocessing
    class_names: list[str]
    arch: str
    epoch: int | None = None
    path: str | None = None
    provenance: PreprocessingProvenance | None = None

    @property
    def input_size(self) -> int:
        return int(self.preprocessing.crop)


@dataclass(frozen=True)
class Spec:
    """A parsed model spec: ``kind`` is checkpoint | torchvision | timm | file | module | convlens."""

    kind: str
    target: str
    attr: str = ""


def parse_spec(spec: str | Path) -> Spec:
    """Classify a model spec (see the module docstring) without importing or loading anything.

    Raises:
        FileNotFoundError: a checkpoint or ``.py`` path that does not exist.
        ValueError: text that is no model spec.
    """
    from convlens.nets.convnet import available_archs

    text = str(spec).strip()
    if not text:
        raise ValueError(f"model spec is empty; expected {SPEC_HELP}")
    for prefix in ("torchvision", "timm"):
        if text.startswith(prefix + ":"):
            name = text.split(":", 1)[1].strip()
            if not name:
                raise ValueError(f"model spec {text!r}: no model name after '{prefix}:'; e.g. {prefix}:resnet18")
            return Spec(prefix, name)
    if Path(text).is_file() and not text.endswith(".py"):
        return Spec("checkpoint", text)
    m = _FILE_SPEC.match(text)
    if m:
        if not Path(m["path"]).is_file():
            raise FileNotFoundError(f"model spec {text!r}: no such file {m['path']!r}; expected "
                                    "path/to/file.py:factory with an existing file")
        return Spec("file", m["path"], m["attr"])
    if text.endswith(".py"):
        raise ValueError(f"model spec {text!r} names a Python file but no factory; write {text}:NAME where NAME "
                         "is a class or function in it that returns the nn.Module")
    if text.split(":", 1)[0] in available_archs():
        return Spec("convlens", text)
    m = _MODULE_SPEC.match(text)
    if m:
        return Spec("module", m["mod"], m["attr"])
    if "/" in text or "\\" in text or Path(text).suffix:
        raise FileNotFoundError(f"checkpoint not found: {text!r} (no such file); expected {SPEC_HELP}")
    close = difflib.get_close_matches(text, available_archs(), n=3)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    raise ValueError(f"model spec {text!r} is not known{hint}; expected {SPEC_HELP}")


def _num_classes(state: Mapping[str, torch.Tensor] | None) -> int | None:
    """Rows of the last 2-D ``*.weight`` (the classifier), or None."""
    if not state:
        return None
    for k in reversed(list(state)):
        if k.endswith("weight") and state[k].dim() == 2:
            return int(state[k].shape[0])
    return None


def _outputs(model: nn.Module) -> int | None:
    last = None
    for m in model.modules():
        if isinstance(m, nn.Linear):
            last = m.out_features
    return last


# ----------------------------------------------------------------------------- builders


def _torchvision(name: str, n: int | None) -> nn.Module:
    import torchvision

    known = torchvision.models.list_models(module=torchvision.models)
    if name not in known:
        close = difflib.get_close_matches(name, known, n=3)
        hint = f"did you mean {', '.join('torchvision:' + c for c in close)}?" if close else \
            "e.g. torchvision:resnet18, torchvision:vgg11, torchvision:mobilenet_v2"
        raise ValueError(f"unknown torchvision architecture {name!r}: {hint}")
    kwargs: dict[str, Any] = {"weights": None}
    if n is not None:
        kwargs["num_classes"] = n
    if name in ("googlenet", "inception_v3"):
        kwargs["aux_logits"] = False
        kwargs["init_weights"] = True
    return torchvision.models.get_model(name, **kwargs)


def _timm(name: str, n: int | None) -> tuple[nn.Module, MeanStd | None, int | None, int | None]:
    try:
        import timm
    except ImportError:
        raise ImportError(f"timm:{name} needs the optional timm extra: pip install -e '.[timm]' in a clone of "
                          "convlens (or pip install timm)") from None
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=3)
        hint = f"did you mean {', '.join('timm:' + c for c in close)}?" if close else "see timm.list_models()"
        raise ValueError(f"unknown timm model {name!r}: {hint}")
    kwargs: dict[str, Any] = {"num_classes": n} if n is not None else {}
    model = timm.create_model(name, pretrained=False, **kwargs)
    cfg = dict(getattr(model, "pretrained_cfg", None) or {})
    norm = None
    if "mean" in cfg and "std" in cfg and len(cfg["mean"]) == 3:
        norm = (tuple(cfg["mean"]), tuple(cfg["std"]))
    size = int(cfg["input_size"][-1]) if cfg.get("input_size") else None
    resize = round(size / float(cfg["crop_pct"])) if size and cfg.get("crop_pct") else None
    return model, norm, size, resize  # type: ignore[return-value]


def _user_factory(spec: Spec) -> nn.Module:
    label = f"{spec.target}:{spec.attr}"
    try:
        if spec.kind == "file":
            path = Path(spec.target).resolve()
            mod_name = f"convlens_user_{path.stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"
            module = sys.modules.get(mod_name)
            if module is None:
                ispec = importlib.util.spec_from_file_location(mod_name, path)
                if ispec is None or ispec.loader is None:
                    raise ValueError(f"model spec {label}: cannot import {path}")
                module = importlib.util.module_from_spec(ispec)
                sys.modules[mod_name] = module
                sys.path.insert(0, str(path.parent))
                try:
                    ispec.loader.exec_module(module)
                except BaseException:
                    sys.modules.pop(mod_name, None)
                    raise
                finally:
                    sys.path.remove(str(path.parent))
        else:
            module = importlib.import_module(spec.target)
    except ModuleNotFoundError as exc:
        raise ValueError(f"model spec {label}: cannot import {exc.name!r}; install it or put it on PYTHONPATH "
                         "(or use path/to/file.py:factory)") from exc
    except (ValueError, FileNotFoundError):
        raise
    except SystemExit as exc:  # a script, not a model file: its exit must not end the command (or the server)
        raise ValueError(f"model spec {label}: importing it called sys.exit({exc.code!r}); a model file must define "
                         "the model, not run a program: put its script part under if __name__ == '__main__':") from None
    except Exception as exc:
        raise ValueError(f"model spec {label}: importing it failed ({type(exc).__name__}: {exc})") from exc
    factory: Any = module
    for part in spec.attr.split("."):
        factory = getattr(factory, part, None)
    if factory is None or not callable(factory):
        found = sorted(k for k, v in vars(module).items() if callable(v) and not k.startswith("_"))[:8]
        raise ValueError(f"model spec {label}: no class or function {spec.attr!r} in {spec.target}; it defines "
                         f"{', '.join(found) or 'no callables'}")
    try:
        model = factory()
    except TypeError as exc:
        raise ValueError(f"model spec {label}: calling {spec.attr}() failed ({exc}); the factory must build the "
                         "model without arguments: wrap it, e.g. def build(): return Net(num_classes=10)") from exc
    except SystemExit as exc:
        raise ValueError(f"model spec {label}: the factory {spec.attr}() called sys.exit({exc.code!r}); it must "
                         "return the model") from None
    except Exception as exc:  # the factory's own bug (a RuntimeError is not about any input image)
        detail = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
        raise ValueError(f"model spec {label}: the factory {spec.attr}() raised {type(exc).__name__}"
                         f"{': ' + detail if detail else ''}; the error is in the factory's code, not in the "
                         "input (--debug shows where)") from exc
    if not isinstance(model, nn.Module):
        raise ValueError(f"model spec {label}: {spec.attr}() returned {type(model).__name__}, expected an nn.Module")
    return model


def _from_checkpoint(path: str) -> tuple[nn.Module, dict[str, Any]]:
    from convlens.nets.checkpoint import load_checkpoint
    from convlens.nets.convnet import build_model

    state = load_checkpoint(path)
    need = ("arch", "model", "preprocessing", "class_names")
    absent = [k for k in need if k not in state]
    if absent:
        raise ValueError(f"checkpoint {path} has no {', '.join(repr(k) for k in absent)} entry; it was not written "
                         "by convlens or is damaged: re-save it with convlens.nets.checkpoint.save_checkpoint, or load "
                         "the state_dict with --arch SPEC --weights FILE")
    model = build_model(str(state["arch"]), num_classes=state.get("num_classes"), in_channels=state.get("in_channels"))
    sd = state["model"]
    if not isinstance(sd, Mapping):
        raise ValueError(f"checkpoint {path}: its 'model' entry is {type(sd).__name__}, not a state_dict")
    fit_state_dict(model, sd, source=f"checkpoint {path}", arch=str(state["arch"]))
    return model, state


# ----------------------------------------------------------------------------- the front door


def load_model(spec: str | Path, *, weights: str | Path | None = None,
               normalize: str | Sequence[Sequence[float]] | None = None, input_size: int | None = None,
               classes: str | Path | Sequence[str] | None = None, map_location: str | torch.device = "cpu",
               tf_padding: bool | None = None) -> Loaded:
    """Load a model for analysis, in eval mode, with its preprocessing and class names.

    Args:
        spec: a model spec (see the module docstring).
        weights: a state_dict file to load into the model.
        normalize: ``imagenet`` | ``inception`` | ``none`` | ``MEAN:STD`` | ``(mean, std)`` in [0, 1] units.
        input_size: network input side in pixels.
        classes: class names: a text file (one per line) or a list.
        map_location: device to put the model on.
        tf_padding: TF "SAME" padding for stride-2 convs (default: on when ``meta.json`` beside the weights
            names a TensorFlow source; see :func:`convlens.core.padding.use_tf_same_padding`).

    Raises:
        FileNotFoundError: a missing checkpoint, weights, ``.py`` or classes file.
        ImportError: ``timm:`` without timm installed.
        ValueError: an unknown spec or architecture, weights that do not fit, bad normalization or sizes.

    Example:
        >>> loaded = load_model("torchvision:resnet18", weights="resnet18.pt", normalize="imagenet")
        >>> x = loaded.preprocessing.load("dog.jpg")[None]
        >>> loaded.model(x).softmax(1)
    """
    from convlens.core.padding import use_tf_same_padding

    parsed = parse_spec(spec)
    if input_size is not None and (not isinstance(input_size, int) or input_size < 8):
        raise ValueError(f"--input-size must be an integer >= 8 (pixels), got {input_size!r}")
    norm = parse_normalize(normalize) if normalize is not None else None
    names = read_classes(classes) if classes is not None else None
    state = read_state_dict(weights) if weights is not None else None
    n = _num_classes(state) or (len(names) if names else None)
    own_norm: MeanStd | None = None
    own_size: int | None = None
    own_resize: int | None = None
    own_pre: Preprocessing | None = None
    own_names: list[str] | None = None
    epoch = None
    label = str(spec)
    if parsed.kind == "checkpoint":
        model, ckpt = _from_checkpoint(parsed.target)
        own_pre = _checkpoint_preprocessing(ckpt["preprocessing"], parsed.target)
        own_names, epoch, label = list(ckpt["class_names"]), ckpt.get("epoch"), str(ckpt["arch"])
    elif parsed.kind == "torchvision":
        model, label = _torchvision(parsed.target, n), f"torchvision:{parsed.target}"
    elif parsed.kind == "timm":
        model, own_norm, own_size, own_resize = _timm(parsed.target, n)
        label = f"timm:{parsed.target}"
    elif parsed.kind == "convlens":
        from convlens.nets.convnet import build_model

        model = build_model(parsed.target, num_classes=n, init="kaiming", seed=0)
        own_size = model.cfg.input_size
    else:
        model = _user_factory(parsed)
    own_size = fixed_input_size(model) or own_size  # a vision transformer takes one size only
    if state is not None:
        fit_state_dict(model, state, source=f"--weights {weights}", arch=label)
    check_finite(model, f"--weights {weights}" if weights is not None else
                  (f"checkpoint {parsed.target}" if parsed.kind == "checkpoint" else f"model spec {label}"))
    folder = Path(weights).parent if weights is not None else (
        Path(parsed.target).parent if parsed.kind == "checkpoint" else None)
    meta = read_meta(folder) if folder is not None else Meta()
    pre = _preprocessing(own_pre, norm or meta.normalize or own_norm, input_size or meta.input_size or own_size,
                         meta.resize or own_resize)
    class_names = names or meta.class_names or own_names
    outputs = _outputs(model)
    if class_names is None:
        class_names = [str(i) for i in range(outputs or 0)]
    elif names is not None and outputs is not None and len(names) != outputs:
        raise ValueError(f"--classes has {len(names)} names but {label} has {outputs} outputs; give one name per "
                         "output, in output order")
    tf_convs = 0
    if tf_padding if tf_padding is not None else meta.tf_padding:
        tf_convs = sum(isinstance(m, nn.Conv2d) and m.stride != (1, 1) for m in model.modules())
        use_tf_same_padding(model)
    model.to(map_location).eval()
    if input_size is not None and input_size != (own_pre.crop if own_pre is not None else own_size):
        _check_runs(model, input_size, label)
    path = str(weights) if weights is not None else (parsed.target if parsed.kind == "checkpoint" else None)
    sources = _Sources(size=input_size is not None, norm=norm is not None, meta=meta, own_pre=own_pre is not None,
                       own_size=own_size is not None, own_norm=own_norm is not None, own_resize=own_resize is not None)
    tf_from = None if not tf_convs else "argument" if tf_padding is not None else \
        f"meta.json source {meta.source_file}"
    provenance = _provenance(pre, sources, tf_convs, tf_from)
    return Loaded(model, pre, list(class_names), label, epoch, path, provenance)


def _checkpoint_preprocessing(d: Any, path: str) -> Preprocessing:
    """The checkpoint's saved preprocessing, checked (sizes, a mean and std that broadcast to an image)."""
    try:
        pre = Preprocessing.from_dict(d)
        ok = 0 < pre.crop <= pre.resize <= 16384 and all(bool(torch.isfinite(t).all()) for t in (pre.mean, pre.std))
        ok = ok and bool((pre.std != 0).all()) and bool(torch.isfinite(pre.normalize(torch.zeros(3, 8, 8))).all())
    except (KeyError, TypeError, ValueError, RuntimeError, IndexError, AttributeError) as exc:
        ok, why = False, f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:120] if str(exc).strip() else ''}"
    else:
        why = f"resize {pre.resize}, crop {pre.crop}, a zero or non-finite std or mean"
    if not ok:
        raise ValueError(f"checkpoint {path}: its 'preprocessing' entry is damaged ({why}); re-save it with "
                         "convlens.nets.checkpoint.save_checkpoint, or load the weights with --arch SPEC "
                         "--weights FILE")
    return pre


def _check_runs(model: nn.Module, size: int, label: str) -> None:
    """One forward pass at ``size`` (``--input-size`` given): a model with fixed-size layers fails here, clearly."""
    p = next(model.parameters(), None)
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, size, size, device=p.device if p is not None else "cpu"))
    except RuntimeError as exc:
        detail = str(exc).strip().splitlines()[0][:120]
        raise ValueError(f"--input-size {size}: {label} cannot run on {size}x{size} inputs ({detail}); give the "
                         "size it was built for, or leave --input-size out") from None


@dataclass(frozen=True)
class _Sources:
    """Which of the four sources (see :mod:`convlens.nets.meta`) gave a value: the caller's flags, the
    meta.json, the model's own (checkpoint or model spec)."""

    size: bool
    norm: bool
    meta: Meta
    own_pre: bool
    own_size: bool
    own_norm: bool
    own_resize: bool


def _provenance(pre: Preprocessing, s: _Sources, tf_convs: int, tf_from: str | None) -> PreprocessingProvenance:
    """What ``pre`` is and where each part came from, following the precedence of :func:`load_model`."""
    own = "checkpoint" if s.own_pre else "model"
    size_from = "flag" if s.size else "meta.json" if s.meta.input_size else \
        own if s.own_pre or s.own_size else "default"
    norm_from = "flag" if s.norm else "meta.json" if s.meta.normalize else \
        own if s.own_pre or s.own_norm else "default"
    kept = s.own_pre and norm_from == "checkpoint" and size_from == "checkpoint"  # the checkpoint's, untouched
    resize_from = "checkpoint" if kept else "meta.json" if s.meta.resize else "model" if s.own_resize else \
        "checkpoint" if s.own_pre else "default"
    mean, std = _per_channel(pre.mean, pre.scale, "mean"), _per_channel(pre.std, pre.scale, "std")
    return PreprocessingProvenance(int(pre.crop), int(pre.resize), mean, std, size_from, resize_from, norm_from,
                                   tf_convs, tf_from, s.meta.path)


def _per_channel(t: torch.Tensor, scale: float, what: str) -> tuple[float, ...] | str:
    """Per-channel values in [0, 1] units, or a description of a per-pixel image (the paper's mean image)."""
    if what == "std" and scale != 1 and bool((t == 1).all()):
        return f"none (pixels 0..{scale:g} minus the mean, not divided)"  # the paper's recipe
    if t.shape[-2:] == (1, 1):
        return tuple(round(float(v) / scale, 6) for v in t.flatten())
    return f"per-pixel {what} image {tuple(t.shape)}"


def _preprocessing(own: Preprocessing | None, norm: MeanStd | None, size: int | None,
                   resize: int | None) -> Preprocessing:
    if own is not None and norm is None:
        if size is None or size == own.crop:
            return own
        return Preprocessing(resize or round(size * own.resize / own.crop), size, own.mean, own.std, own.scale)
    return make_preprocessing(norm or NORMALIZE_PRESETS["imagenet"], size or (own.crop if own else 224),
                              resize if resize or own is None else round((size or own.crop) * own.resize / own.crop))
