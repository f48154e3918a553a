"""Architecture ablations (Sec. 5.1, Table 3; ensembles as in Table 2).

:func:`ablate` trains a list of named variants of one base architecture (``""`` = the base,
``no34``, ``no7``, ``no67``, ``no3467``, ``fc-x0.5``, ``fc-x2``, ``wide345``, ``wide345+fc-x2``;
see :data:`convlens.nets.convnet.VARIANTS`) with the same recipe, seed and data through
:func:`convlens.training.recipe.fit`, each into ``out/<variant>/`` (the base into ``out/base/``), and
tabulates train top-1, val top-1 and val top-5 error per variant in Table 3's layout.

Resumable per variant, and safe to kill at any point: a variant whose ``metrics.csv`` already has
``epochs`` rows is skipped (its last row is read back); a started one (``config.json`` or a
checkpoint present) is resumed by :func:`~convlens.training.recipe.fit`, which restores ``metrics.csv`` from
its newest checkpoint, so a rerun of the same command ends with the same numbers as an
uninterrupted one.
"Train top-1" is the running training error of the last epoch as :func:`~convlens.training.recipe.fit`
reports it (with dropout and augmentation on), not a separate pass over the training set.
With ``ensemble=True`` an extra Table 2-style row averages the softmax of all variants' final
checkpoints on the validation set (:func:`convlens.training.recipe.evaluate` with a list of models).
"""
from __future__ import annotations

import csv
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from convlens.nets.convnet import VARIANTS, build_model

__all__ = ["AblationResult", "AblationRow", "ablate", "random_subsets", "variant_arch", "variant_dir"]

log = logging.getLogger(__name__)


def variant_arch(base: str, variant: str) -> str:
    """``("zfnet-small", "no34")`` -> ``"zfnet-small:no34"``; ``""``/``"base"`` -> the base.

    Raises:
        ValueError: an unknown variant name.
    """
    v = variant.strip()
    if v in ("", "base"):
        return base
    if ":" in v:  # already a full name
        return v
    for mod in v.split("+"):
        if mod not in VARIANTS:
            raise ValueError(f"unknown variant {mod!r} in {variant!r}; expected one of base, {', '.join(VARIANTS)}"
                             " (combine with '+', e.g. wide345+fc-x2)")
    return f"{base}:{v}"


def variant_dir(variant: str) -> str:
    """Folder name of a variant's run under the ablation's ``out``."""
    v = variant.strip()
    return "base" if v in ("", "base") else v.split(":", 1)[-1].replace("/", "_")


def describe(variant: str) -> str:
    mods = [m for m in variant.split(":", 1)[-1].split("+") if m and m != "base"] if variant not in ("", "base") else []
    return "; ".join(VARIANTS[m][0] for m in mods if m in VARIANTS) or "Base model (as per the architecture)"


@dataclass(frozen=True)
class AblationRow:
    """One trained variant: its final metrics (errors are fractions in [0, 1])."""

    variant: str
    arch: str
    description: str
    params: int
    epochs: int
    train_top1_err: float
    val_top1_err: float
    val_top5_err: float
    seconds: float
    status: str  # "trained", "resumed" or "skipped" (already finished)


@dataclass(frozen=True)
class AblationResult:
    rows: list[AblationRow]
    ensemble: dict[str, float] | None = None
    params: dict[str, object] = field(default_factory=dict)

    def table(self) -> tuple[list[str], list[list[object]]]:
        """Table 3 layout: error % columns train top-1, val top-1, val top-5."""
        cols = ["variant", "description", "params", "train top-1 %", "val top-1 %", "val top-5 %"]
        rows: list[list[object]] = [[r.variant or "base", r.description, f"{r.params:,}", _pct(r.train_top1_err),
                                     _pct(r.val_top1_err), _pct(r.val_top5_err)] for r in self.rows]
        if self.ensemble is not None:
            rows.append([f"ensemble of {len(self.rows)}", "softmax averaged over the variants above (Table 2)", "-",
                         "-", _pct(self.ensemble["top1_err"]), _pct(self.ensemble["top5_err"])])
        return cols, rows

    def to_dict(self) -> dict[str, object]:
        return {"rows": [r.__dict__ for r in self.rows], "ensemble": self.ensemble, "params": self.params}


def _pct(v: float) -> str:
    return "-" if v != v else f"{100 * v:.1f}"


def _read_metrics(run: Path) -> list[dict[str, float]]:
    path = run / "metrics.csv"
    if not path.is_file():
        return []
    with path.open() as f:
        return [{k: (float(v) if v != "" else float("nan")) for k, v in row.items()} for row in csv.DictReader(f)]


def _seconds(run: Path) -> float:
    """Training time of a run: the sum of its epochs' seconds in ``result.json`` (0 when unknown)."""
    try:
        history = json.loads((run / "result.json").read_text())["data"]["history"]
        return float(sum(float(h.get("seconds") or 0.0) for h in history))
    except (OSError, ValueError, KeyError, TypeError):
        return 0.0


def _count_params(arch: str, run: Path) -> int:
    cfg_path = run / "config.json"
    num_classes = json.loads(cfg_path.read_text()).get("num_classes") if cfg_path.is_file() else None
    return sum(p.numel() for p in build_model(arch, num_classes=num_classes).parameters())


def ablate(cfg: object, variants: Sequence[str], *, out: str | Path, datasets: object | None = None,
           ensemble: bool = False, progress: bool = False) -> AblationResult:
    """Train each variant of ``cfg.arch`` with ``cfg``'s recipe into ``out/<variant>/`` and tabulate.

    Args:
        cfg: a :class:`convlens.training.recipe.TrainConfig` (its ``arch`` is the base; ``out`` is ignored).
        variants: variant names (``""``/``"base"``, ``"no34"``, ``"wide345+fc-x2"`` ...).
        out: the ablation folder.
        datasets: a :class:`convlens.training.recipe.RunData` to train on instead of ``cfg.dataset``.
        ensemble: add a Table 2-style row: all variants' final models averaged on the val set.

    Example:
        >>> base = TrainConfig(arch="zfnet-small", dataset="cifar10", epochs=2, limit_train=5000)
        >>> res = ablate(base, ["base", "no34", "no67"], out="runs/ablate")
        >>> res.table()
    """
    from convlens.training.recipe import fit

    if not variants:
        raise ValueError("variants is empty; name at least one, e.g. ['base', 'no34']")
    names = [variant_arch(cfg.arch, v) for v in variants]  # type: ignore[attr-defined]
    rows = []
    for variant, arch in zip(variants, names, strict=False):
        run = Path(out) / variant_dir(variant)
        history = _read_metrics(run)
        epochs = cfg.epochs  # type: ignore[attr-defined]
        if len(history) >= epochs and int(history[-1]["epoch"]) >= epochs:
            status, final = "skipped", history[epochs - 1]
            log.info("%s: finished earlier (%d epochs), skipped", arch, epochs)
        else:
            resume = (run / "config.json").is_file() or (run / "checkpoints").is_dir()
            status = "resumed" if resume else "trained"
            log.info("%s: %s into %s", arch, "resuming" if resume else "training", run)
            final = fit(cfg.replace(arch=arch, out=str(run), resume=resume),  # type: ignore[attr-defined]
                        progress=progress, datasets=datasets)  # type: ignore[arg-type]
            history = _read_metrics(run) or [final]
        rows.append(AblationRow(variant_dir(variant) if variant not in ("", "base") else "base", arch, describe(arch),
                                _count_params(arch, run), int(final["epoch"]), float(final["train_top1_err"]),
                                float(final["val_top1_err"]), float(final["val_top5_err"]),
                                _seconds(run), status))
    ens = _ensemble(cfg, [Path(out) / variant_dir(v) for v in variants], datasets) if ensemble else None
    return AblationResult(rows, ens, {"base": cfg.arch, "epochs": cfg.epochs, "variants": list(variants)})  # type: ignore[attr-defined]


def _ensemble(cfg: object, runs: list[Path], datasets: object | None) -> dict[str, float] | None:
    from convlens.nets.loading import load_model
    from convlens.training.recipe import evaluate, make_loader, open_run_data

    data = datasets if datasets is not None else open_run_data(cfg, None)  # type: ignore[arg-type]
    if getattr(data, "val", None) is None:
        log.warning("no validation set: ensemble row skipped")
        return None
    models = [load_model(run / "checkpoints" / "last.pt").model for run in runs]
    # make_loader collates with data.collate_skip: an unreadable validation image is skipped, not a crash
    loader = make_loader(data.val, cfg.batch_size, train=False)  # type: ignore[attr-defined]
    res = evaluate(models, loader)
    return {"top1_err": res["top1_err"], "top5_err": res["top5_err"], "models": float(len(models))}


def random_subsets(cfg: Any, out: Path, limit_train: int | None, limit_val: int | None, seed: int) -> Any:
    """The run data with seeded random subsets (``TrainConfig.limit_*`` takes the *first* N images,
    which in a class-sorted ImageFolder are a few classes only)."""
    import dataclasses

    import torch
    from torch.utils.data import Subset

    from convlens.training.recipe import open_run_data

    data = open_run_data(cfg, out, progress=True)

    def pick(ds: Any, n: int | None, offset: int) -> Any:
        if ds is None or n is None or n >= len(ds):
            return ds
        idx = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed + offset))[:n].sort().values
        return Subset(ds, idx.tolist())

    return dataclasses.replace(data, train=pick(data.train, limit_train, 0), val=pick(data.val, limit_val, 1))
