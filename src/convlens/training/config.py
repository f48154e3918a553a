"""The training run's configuration (Sec. 3): :class:`TrainConfig`, one field per ``convlens train``
flag, checked when it is made (kinds, ranges). Read by ``training.data`` and ``training.recipe``."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["TrainConfig", "read_toml"]


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run (one field per ``convlens train`` flag).

    ``batch_size`` is the global batch (split over processes under torchrun). ``clip_radius``
    None turns feature-scale clipping off. ``checkpoint_epochs`` None writes
    ``checkpoints/epoch_NNN.pt`` after every epoch (``last.pt`` is always written).
    """

    arch: str = "zfnet-small"
    dataset: str = "fashion-mnist"
    data_dir: str | None = None
    out: str | None = None
    epochs: int = 10
    batch_size: int = 128
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 0.0
    init: str = "paper"
    clip_radius: float | None = 0.1
    seed: int = 0
    limit_train: int | None = None
    limit_val: int | None = None
    device: str = "auto"
    amp: bool = False
    channels_last: bool = False
    compile: bool = False
    workers: int = 0
    resume: bool = False
    checkpoint_epochs: tuple[int, ...] | None = None
    plateau_patience: int = 2
    plateau_factor: float = 0.1
    plateau_threshold: float = 0.001
    min_lr: float = 1e-5
    warmup_epochs: int = 0
    dropout: float | None = None  # None: the architecture's (0.5)
    normalize_std: bool | None = None  # divide inputs by the training pixel std; None: only with init="kaiming"

    def __post_init__(self) -> None:
        _check_types(self)
        positive = {"epochs": self.epochs, "batch_size": self.batch_size, "lr": self.lr}
        for name, value in positive.items():
            if not value > 0:
                raise ValueError(f"{name} must be > 0, got {value}")
        if self.init not in ("paper", "kaiming"):
            raise ValueError(f"init must be 'paper' or 'kaiming', got {self.init!r}")
        if self.clip_radius is not None and not self.clip_radius > 0:
            raise ValueError(f"clip_radius must be > 0 (or None to turn clipping off), got {self.clip_radius}")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ValueError(f"device must be cpu, cuda or auto, got {self.device!r}")
        for name in ("limit_train", "limit_val"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be a positive number of images, got {value}")
        if not 0 <= self.momentum < 1 or self.weight_decay < 0 or self.workers < 0:
            raise ValueError("momentum must be in [0, 1), weight_decay >= 0 and workers >= 0")
        for name in ("warmup_epochs", "plateau_patience"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0 epochs, got {getattr(self, name)}")
        if not 0 <= self.seed < 2**32:
            raise ValueError(f"seed must be from 0 to {2**32 - 1}, got {self.seed}")

    def replace(self, **kw: object) -> TrainConfig:
        return dataclasses.replace(self, **kw)  # type: ignore[arg-type]


def _check_types(cfg: TrainConfig) -> None:
    """Each field has its annotated kind (a TOML ``epochs = "ten"`` is named, not a Python error deep
    inside the run); floats are finite."""
    for f in dataclasses.fields(cfg):
        value, kind = getattr(cfg, f.name), str(f.type)
        if value is None and "None" in kind:
            continue
        if kind.startswith("int"):
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif kind.startswith("float"):
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        elif kind.startswith("bool"):
            ok = isinstance(value, bool)
        elif kind.startswith("str"):
            ok = isinstance(value, str)
        else:
            continue
        if not ok:
            raise ValueError(f"{f.name} must be {_KINDS[kind.split(' ')[0]]}, got {value!r}")


_KINDS = {"int": "a whole number", "float": "a finite number", "bool": "true or false", "str": "a string"}


def read_toml(path: Path) -> dict[str, Any]:
    """A ``--config`` file: TOML with the standard library's ``tomllib`` (Python >= 3.11), else the
    ``tomli`` package."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        try:
            import tomli as tomllib  # type: ignore[no-redef]
        except ModuleNotFoundError:
            raise ValueError(f"--config {path}: reading TOML needs Python >= 3.11 or the tomli package "
                             "(pip install tomli)") from None
    try:
        return dict(tomllib.loads(path.read_text()))
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"--config {path}: not valid TOML ({exc})") from None
