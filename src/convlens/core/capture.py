"""Capturing activations of any module at any depth, and parsing unit strings ("conv5:42").

One capture mechanism for the whole library:

* :func:`record_activations` (context manager): a dict filled with the named modules' outputs on
  every forward run inside the block; hooks are removed in ``finally`` whatever happens.
* :func:`capture` (one shot): run the model on ``x`` and return the named outputs, stopping the
  forward once the deepest requested layer has run.
* :func:`hooked` (context manager): the analyses' own forward, pre-forward or backward hook
  functions on any modules, removed in ``finally``; a hook may raise :class:`StopForward` to end the
  forward pass early. No module outside ``core`` registers a hook of its own.

Layer names are module paths at any depth (``features.3``, ``layer2.1.conv1``, a block or a
leaf); on a :class:`convlens.nets.convnet.ConvNet` also its layer names (``conv5`` means the rectified
output ``relu5``, as in ``ConvNet.features``). A module called more than once per forward (e.g.
the ``relu`` shared inside a torchvision ``BasicBlock``) gives the output of its last call. An
unknown name raises a ``ValueError`` naming the closest few existing names; ``convlens layers``
lists them all.
"""
from __future__ import annotations

import contextlib
import difflib
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Literal

import torch
from torch import nn

__all__ = ["StopForward", "capture", "get_module", "hooked", "layer_names", "parse_unit", "record_activations",
           "resolve_layer"]

_LIST_HINT = "run 'convlens layers' with the same model flags (e.g. 'convlens layers --arch torchvision:resnet18')"


def _is_convnet(model: nn.Module) -> bool:
    return callable(getattr(model, "features", None)) and callable(getattr(model, "resolve", None)) and hasattr(
        model, "stage_names")


def layer_names(model: nn.Module) -> list[str]:
    """Every name a layer can be given: module paths (forward registration order), then a
    ConvNet's layer names (``conv1`` ... ``fc8``) that are not module paths."""
    names = [n for n, _ in model.named_modules() if n]
    if _is_convnet(model):
        seen = set(names)
        names += [n for n in model.layer_names if n not in seen]  # type: ignore[union-attr]
    return names


def unknown_layer_error(model: nn.Module, name: object, what: str = "layer") -> ValueError:
    """The error for a layer name ``model`` does not have: the closest few names and where to list them all."""
    names = layer_names(model)
    close = difflib.get_close_matches(str(name), names, n=5, cutoff=0.5)
    hint = f"closest: {', '.join(close)}; " if close else ""
    return ValueError(f"unknown {what} {name!r} for {type(model).__name__} ({len(names)} layers); {hint}{_LIST_HINT}"
                      " to list them all")


def get_module(model: nn.Module, name: str) -> nn.Module:
    """Submodule by dotted path (``features.3``, ``layer2.1.conv1``); no alias resolution.

    Raises:
        ValueError: no such module; the message names the closest few paths.
    """
    if not isinstance(name, str) or not name:
        raise unknown_layer_error(model, name)
    try:
        return model.get_submodule(name)
    except AttributeError:
        raise unknown_layer_error(model, name) from None


def resolve_layer(model: nn.Module, name: str) -> str:
    """Module path whose output layer ``name`` means: ``conv3`` -> ``relu3`` on a ConvNet; any other
    name is a module path and is returned unchanged once validated.

    Raises:
        ValueError: unknown name (the closest few names are given).
    """
    if not isinstance(name, str) or not name:
        raise unknown_layer_error(model, name)
    if _is_convnet(model):
        try:
            return str(model.resolve(name))  # type: ignore[operator]
        except ValueError:
            raise unknown_layer_error(model, name) from None
    get_module(model, name)
    return name


def _not_a_tensor(name: str, module: nn.Module, out: object) -> TypeError:
    return TypeError(
        f"layer {name!r} ({type(module).__name__}) outputs a {type(out).__name__}, not a tensor, so it has no "
        f"activation map to record; pick one of its submodules or the module that consumes it ({_LIST_HINT})")


class _Recorder:
    """Forward hooks on the modules of ``layers`` that store each output in ``store`` (last call wins)."""

    def __init__(self, model: nn.Module, layers: Sequence[str]) -> None:
        if isinstance(layers, str):
            raise TypeError(f"layers must be a list of names, got the string {layers!r}; write [{layers!r}]")
        self.store: dict[str, torch.Tensor] = {}
        self.calls: dict[str, int] = {}
        self.handles: list[torch.utils.hooks.RemovableHandle] = []
        self.stop_after: dict[str, int] | None = None
        targets = [(name, get_module(model, resolve_layer(model, name))) for name in layers]
        try:
            for name, module in targets:
                self.handles.append(module.register_forward_hook(self._hook(name)))
        except BaseException:
            self.remove()
            raise

    def _hook(self, key: str) -> Any:
        def hook(module: nn.Module, _inputs: object, out: object) -> None:
            if not isinstance(out, torch.Tensor):
                raise _not_a_tensor(key, module, out)
            # a copy: later in-place ops (torchvision's ReLU(inplace=True) after a BatchNorm, ResNet's
            # ``out += identity``) would otherwise change the recorded values
            self.store[key] = out.clone()
            self.calls[key] = self.calls.get(key, 0) + 1
            stop = self.stop_after
            if stop is not None and all(self.calls.get(k, 0) >= n for k, n in stop.items()):
                raise _Done

        return hook

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()


class _Done(Exception):
    """Raised from a hook to end a forward pass once every requested layer has been recorded."""


@contextlib.contextmanager
def record_activations(model: nn.Module, layers: Sequence[str]) -> Iterator[dict[str, torch.Tensor]]:
    """Context manager: a dict filled with each named module's output on every forward.

    Args:
        model: any ``nn.Module``.
        layers: module paths at any depth (``features.3``, ``layer2.1``), or a ConvNet's layer
            names (``conv3`` means the rectified output, as in ``ConvNet.features``). The dict is
            keyed by the names given.

    Raises:
        ValueError: an unknown layer (before any hook is registered).
        TypeError: during the forward, when a named module returns a tuple or another non-tensor.

    Example:
        >>> with record_activations(model, ["layer2.1", "layer3"]) as acts:
        ...     model(images)
        >>> acts["layer2.1"].shape
    """
    rec = _Recorder(model, layers)
    try:
        yield rec.store
    finally:
        rec.remove()


class StopForward(Exception):
    """Raise from a hook inside :func:`hooked` to end the forward pass there: ``hooked`` swallows it,
    so the statement after the ``with`` block runs next (the layers after the hooked one cost nothing)."""


HookKind = Literal["forward", "pre", "backward"]
_REGISTER = {"forward": "register_forward_hook", "pre": "register_forward_pre_hook",
             "backward": "register_full_backward_hook"}


@contextlib.contextmanager
def hooked(
    model: nn.Module,
    hooks: Mapping[nn.Module | str, Callable[..., Any]] | Iterable[tuple[nn.Module | str, Callable[..., Any]]],
    *,
    kind: HookKind = "forward",
) -> Iterator[None]:
    """Context manager: ``fn`` registered on each module of ``hooks`` for the block, removed in ``finally``.

    The one place the library registers hooks (besides :func:`record_activations` built on the same
    idea). A hook that raises :class:`StopForward` ends the forward pass; the exception does not leave
    the ``with`` block. Every other exception propagates, after the hooks are removed.

    Args:
        model: the model the modules belong to (module paths are looked up in it).
        hooks: ``{module_or_path: fn}``, or ``(module_or_path, fn)`` pairs (a module may appear
            twice; hooks run in the order given). ``fn`` has PyTorch's signature for ``kind``:
            ``fn(module, inputs, output)`` (forward; a returned tensor replaces the output),
            ``fn(module, inputs)`` (pre), ``fn(module, grad_inputs, grad_outputs)`` (backward).
        kind: ``"forward"``, ``"pre"`` (forward pre-hook) or ``"backward"`` (full backward hook).

    Raises:
        ValueError: an unknown ``kind`` or module path (before any hook is registered).

    Example:
        >>> seen = []
        >>> with hooked(model, {"features.3": lambda m, i, o: seen.append(o.shape)}):
        ...     model(images)
        >>> seen[0]
    """
    if kind not in _REGISTER:
        raise ValueError(f"kind must be one of {', '.join(_REGISTER)}, got {kind!r}")
    pairs = list(hooks.items()) if isinstance(hooks, Mapping) else list(hooks)
    targets = [(get_module(model, m) if isinstance(m, str) else m, fn) for m, fn in pairs]
    handles: list[torch.utils.hooks.RemovableHandle] = []
    try:
        for module, fn in targets:
            handles.append(getattr(module, _REGISTER[kind])(fn))
        yield
    except StopForward:
        pass
    finally:
        for h in handles:
            h.remove()


# per model: how many times each hooked module ran in one forward (learned on the first capture)
# (keyed by layer name and the model's training flag: a forward may take other paths in training mode)
_CALL_COUNTS: weakref.WeakKeyDictionary[nn.Module, dict[tuple[str, bool], int]] = weakref.WeakKeyDictionary()


def capture(
    model: nn.Module, x: torch.Tensor, layers: Sequence[str], *, no_grad: bool = True
) -> dict[str, torch.Tensor]:
    """Run ``model`` on ``x`` and return the outputs of ``layers``, keyed by the names given.

    The forward stops once every requested layer has produced its output (a ConvNet through
    ``ConvNet.features``; any other model once each named module has run as many times as in a
    full forward, learned on the model's first capture), so the layers after the deepest
    requested one cost nothing. The model's mode is not changed (call ``model.eval()`` first).

    Args:
        model: any ``nn.Module``.
        x: its input batch.
        layers: see :func:`record_activations`.
        no_grad: run under ``torch.no_grad()`` (default); ``False`` keeps the graph for autograd.

    Raises:
        ValueError: an unknown layer, or a named module the forward never calls.
        TypeError: a named module's output is not a tensor.

    Example:
        >>> acts = capture(model, images, ["features.3", "features.13"])
    """
    if isinstance(layers, str):
        raise TypeError(f"layers must be a list of names, got the string {layers!r}; write [{layers!r}]")
    names = list(dict.fromkeys(layers))
    ctx = torch.no_grad() if no_grad else contextlib.nullcontext()
    if _is_convnet(model):
        for name in names:
            resolve_layer(model, name)
        with ctx:
            return dict(model.features(x, names))  # type: ignore[operator]
    rec = _Recorder(model, names)
    known = _CALL_COUNTS.get(model, {})
    mode = model.training
    full = not all((n, mode) in known for n in names)
    if not full:
        rec.stop_after = {n: known[n, mode] for n in names}
    try:
        with ctx, contextlib.suppress(_Done):
            model(x)
    finally:
        rec.remove()
    missing = [n for n in names if n not in rec.store]
    if missing:
        raise ValueError(f"layers {', '.join(map(repr, missing))} never ran in {type(model).__name__}'s forward "
                         f"pass, so they have no activations; choose layers the forward uses ({_LIST_HINT})")
    if full:
        _CALL_COUNTS.setdefault(model, {}).update({(n, mode): c for n, c in rec.calls.items()})
    return {n: rec.store[n] for n in layers}


def parse_unit(text: str) -> tuple[str, int]:
    """``"conv5:42"`` -> ``("conv5", 42)``.

    Raises:
        ValueError: when the text is not ``layer:channel`` with an integer channel >= 0.
    """
    layer, sep, channel = text.rpartition(":")
    if not sep or not layer or not channel.isdigit():
        raise ValueError(f"unit must look like 'conv5:42' (layer:channel), got {text!r}")
    return layer, int(channel)
