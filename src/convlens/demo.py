"""``convlens demo`` (``make demo``): train a small ZFNet, run every analysis that applies, write the report.

The whole paper in miniature on Fashion-MNIST (Debian's ``dataset-fashion-mnist``) or CIFAR-10:
Sec. 3 training (``zfnet-small``, checkpoints every epoch), Fig. 2 top-9 mining, Fig. 4
evolution, Fig. 5 invariance, Fig. 6 diagnosis against an ``alexnet-small`` trained the same way,
Fig. 7 occlusion on a few test images, Tables 2-3 ablations (short runs), Tables 4-7 linear probes
per layer on a small labelled held-out subset, single-unit projections, and the HTML report.
Correspondence (Table 1) needs part landmarks, which these data sets do not have: it is skipped.

Every step goes through :func:`convlens.cli.main` with the documented flags, so the demo
exercises the real command line. A step whose command is missing or fails is logged and the demo
goes on to the report. Sizes (subsets, epochs) are chosen to need about 5 CPU-minutes (294 s
of CPU time measured, most of it training); the wall time on 2 cores follows the machine's load;
``quick`` is a ~1 minute version for tests.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

__all__ = ["PLANS", "DemoPlan", "Step", "export_images", "make_synthetic_dataset", "run_demo"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DemoPlan:
    """Sizes of one demo flavour (every field maps to a command-line flag of some step)."""

    arch: str = "zfnet-small"
    compare_arch: str = "alexnet-small"
    epochs: int = 3
    batch_size: int = 64
    # The paper's recipe (N(0, 0.01) init, dropout 0.5, lr 0.01) needs far more epochs than a demo has: measured
    # here on 2000 Fashion-MNIST images it is still at chance after 2 epochs; He init (train then divides the
    # inputs by the pixel std) without dropout reaches 34% error on 2000 images, 23% on 10000 (3 epochs each).
    init: str = "kaiming"
    lr: float = 0.01
    dropout: float = 0.0
    limit_train: int = 20000
    limit_val: int = 1000
    mine_images: int = 1000
    mine_maps: int = 16
    evolution_images: int = 300
    evolution_maps: int = 6
    compare_epochs: int = 1
    diagnose_images: int = 256
    ablate_variants: str = "base,no34"
    ablate_epochs: int = 1
    ablate_limit: int = 1500
    probe_per_class: tuple[int, ...] = (10, 30)
    probe_folds: int = 3
    probe_layers: str | None = None  # None: the command's default (conv1..conv5, fc6, fc7)
    probes: str = "svm"  # "svm,softmax" gives Table 7 both columns but took 243 s instead of 23 s here
    occlusion_images: int = 3
    invariance_images: int = 3
    layers: str = "conv1,conv2,conv3,conv4,conv5"
    mine_project: str = "all"  # "all": every map browsable in the explorer; "grid": only the figure's maps


PLANS = {
    "full": DemoPlan(),
    "quick": DemoPlan(epochs=1, batch_size=64, limit_train=512, limit_val=128, mine_images=128, mine_maps=4,
                      evolution_images=32, evolution_maps=2, compare_epochs=1, ablate_variants="no34",
                      ablate_epochs=1, ablate_limit=256, diagnose_images=32, probe_per_class=(3, 6), probe_folds=2,
                      probe_layers="conv3,conv5,fc7", probes="svm", mine_project="grid", occlusion_images=1,
                      invariance_images=1),
    # For tests: the tiny preset on a synthetic ImageFolder (see make_synthetic_dataset); seconds, not minutes.
    "tiny": DemoPlan(arch="zfnet-tiny", compare_arch="zfnet-tiny", epochs=2, batch_size=16, limit_train=48,
                     limit_val=24, mine_images=24, mine_maps=4, evolution_images=12, evolution_maps=2,
                     compare_epochs=1, ablate_variants="no34", ablate_epochs=1, ablate_limit=24, diagnose_images=16,
                     probe_per_class=(2, 4), probe_folds=2,
                     probe_layers="conv5,fc7", probes="svm", mine_project="grid", occlusion_images=1,
                     invariance_images=1),
}


@dataclass
class Step:
    name: str
    argv: list[str]
    status: str = "pending"  # ok | failed | skipped
    seconds: float = 0.0
    message: str = ""


@dataclass
class DemoResult:
    out: Path
    report: Path | None
    steps: list[Step] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return all(s.status == "ok" for s in self.steps)


def _subcommands() -> dict[str, set[str]]:
    """Each available subcommand -> the option strings it accepts (read from the real parser)."""
    from convlens.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {name: {o for a in p._actions for o in a.option_strings} for name, p in sub.choices.items()}


def _argv(
    cmd: str, positional: list[str], options: dict[str, object], accepted: set[str], notes: list[str]
) -> list[str]:
    """``[cmd, *positional, --flag value, ...]``, dropping (and noting) flags the command lacks."""
    argv = [cmd, *positional]
    for flag, value in options.items():
        if value is None or value is False:
            continue
        if flag not in accepted:
            notes.append(f"'{cmd}' has no {flag}; left out")
            continue
        argv += [flag] if value is True else [flag, str(value)]
    return argv


class _Tee(io.TextIOBase):
    """stderr that still reaches the terminal (progress bars, logs) and keeps the current step's tail."""

    def __init__(self, stream: TextIO) -> None:
        self.stream, self.tail = stream, ""

    def write(self, s: str) -> int:
        self.stream.write(s)
        self.tail = (self.tail + s)[-4000:]
        return len(s)

    def flush(self) -> None:
        self.stream.flush()

    def isatty(self) -> bool:
        return self.stream.isatty()

    def error_line(self) -> str:
        lines = [ln.strip() for ln in self.tail.replace("\r", "\n").splitlines() if ln.strip()]
        errors = [ln for ln in lines if ln.startswith("error:") or "Error" in ln]
        return (errors or lines or [""])[-1][:300]


def _run_step(step: Step, echo: Callable[[str], None]) -> None:
    from convlens.cli import main

    echo(f"[demo] {step.name:<22} running: convlens {' '.join(step.argv)}")
    tee = sys.stderr if isinstance(sys.stderr, _Tee) else None
    if tee is not None:
        tee.tail = ""
    t0 = time.perf_counter()
    try:
        code = main(step.argv)
    except SystemExit as exc:  # argparse errors
        code = exc.code if isinstance(exc.code, int) else 2
    except Exception as exc:
        code, step.message = 1, f"{type(exc).__name__}: {exc}"
        log.exception("step %s failed", step.name)
    step.seconds = time.perf_counter() - t0
    step.status = "ok" if code == 0 else "failed"
    if code != 0 and not step.message:
        step.message = (tee.error_line() if tee is not None else "") or f"exit code {code}"
    echo(f"[demo] {step.name:<22} {step.status:<7} {step.seconds:6.1f} s  {step.message}".rstrip())


def export_images(dataset: str, data_dir: str | None, folder: Path, *, split: str = "test", per_class: int = 1,
                  limit: int | None = None, size: int = 32, by_class: bool = False) -> list[tuple[Path, int]]:
    """Save the first ``per_class`` images of each class of a split as PNGs (for commands taking image files).

    Returns:
        ``[(path, label)]``; with ``by_class`` the files go to ``folder/<class>/`` (an ImageFolder).
    """
    from PIL import Image

    from convlens.images.data import open_raw
    from convlens.io.viz import to_uint8

    raw = open_raw(dataset, split, size=size, data_dir=data_dir)
    classes = list(getattr(raw, "classes", [])) or [str(i) for i in range(1000)]
    counts: dict[int, int] = {}
    out: list[tuple[Path, int]] = []
    for i in range(len(raw)):  # type: ignore[arg-type]
        pixels, label = raw[i]
        if pixels is None or counts.get(label, 0) >= per_class:
            continue
        counts[label] = counts.get(label, 0) + 1
        name = classes[label].replace("/", "-").replace(" ", "_")
        path = folder / name / f"{i:05d}.png" if by_class else folder / f"{i:05d}_{label}_{name}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(to_uint8(pixels)).save(path)
        out.append((path, int(label)))
        if (limit and len(out) >= limit) or (len(counts) == len(classes) and min(counts.values()) >= per_class):
            break
    return out


def make_synthetic_dataset(root: str | Path, *, classes: int = 3, per_class: int = 16, size: int = 36,
                           seed: int = 0) -> Path:
    """A small ImageFolder (``root/train/<class>``, ``root/test/<class>``) of striped/checkered/blob
    images with noise: learnable in a few steps, for tests and machines without a data set."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    patterns = [lambda f, p: np.sin(yy * f + p), lambda f, p: np.sin(xx * f + p),
                lambda f, p: np.sin(xx * f + p) * np.sin(yy * f + p),
                lambda f, p: np.cos(np.hypot(yy - size / 2, xx - size / 2) * f + p)]
    for split in ("train", "test"):
        for c in range(classes):
            folder = Path(root) / split / f"class{c}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                base = patterns[c % len(patterns)](rng.uniform(0.4, 0.9), rng.uniform(0, 6.3))
                color = rng.uniform(0.3, 1.0, 3)
                img = (base[..., None] * 0.5 + 0.5) * color + rng.normal(0, 0.08, (size, size, 3))
                Image.fromarray((img.clip(0, 1) * 255).astype(np.uint8)).save(folder / f"{i:03d}.png")
    return Path(root)


def _write_summary(out: Path, arch: str, num_classes: int) -> None:
    """RUN/summary/result.json: the architecture table of Fig. 3 (the report cannot build a model)."""
    from convlens.cli import main

    if main(["summary", "--arch", arch, "--num-classes", str(num_classes), "--out", str(out / "summary")]) != 0:
        raise RuntimeError(f"convlens summary failed for {arch}")


def _analysis_steps(out: Path, plan: DemoPlan, dataset: str, data_dir: str | None,
                    cmds: dict[str, set[str]], notes: list[str]) -> list[Step]:
    ck = str(out / "checkpoints" / "last.pt")
    data = {"--dataset": dataset, "--data-dir": data_dir}
    images = sorted((out / "images").glob("*.png"))
    probe = out / "data" / "probe"

    def step(name: str, cmd: str, positional: list[str], options: dict[str, object]) -> Step:
        if cmd not in cmds:
            return Step(name, [], "skipped", message=f"command 'convlens {cmd}' is not available")
        return Step(name, _argv(cmd, positional, options, cmds[cmd], notes))

    steps = [
        step("mine (Fig. 2)", "mine", [], {"--checkpoint": ck, **data, "--layers": plan.layers, "--k": 9,
                                           "--maps": plan.mine_maps, "--limit": plan.mine_images,
                                           "--batch-size": 128, "--workers": 0, "--project": plan.mine_project,
                                           "--out": out / "mine"}),
        step("evolution (Fig. 4)", "evolution", [], {"--run": out, **data, "--layers": plan.layers,
                                                     "--maps": plan.evolution_maps, "--limit": plan.evolution_images,
                                                     "--out": out / "evolution"}),
        step("invariance (Fig. 5)", "invariance", [], {"--checkpoint": ck, "--layers": "conv1,fc7",
                                                       "--out": out / "invariance"}),
        step("diagnose (Fig. 6)", "diagnose", [], {"--checkpoint": ck,
                                                   "--compare": out / "compare" / "checkpoints" / "last.pt",
                                                   **data, "--limit": plan.diagnose_images, "--out": out / "diagnose"}),
    ]
    inv = steps[2]
    if inv.argv:
        i = inv.argv.index("--out") if "--out" in inv.argv else len(inv.argv)
        chosen = images[: plan.invariance_images]
        inv.argv[i:i] = ["--images", *[str(p) for p in chosen]]
        if "--labels" in cmds["invariance"]:
            inv.argv[i:i] = ["--labels", ",".join(p.stem.split("_")[1] for p in chosen)]
    for k, img in enumerate(images[: plan.occlusion_images]):
        steps.append(step(f"occlude {k} (Fig. 7)", "occlude", [], {
            "--checkpoint": ck, "--image": img, "--label": img.stem.split("_")[1], "--window": 8, "--stride": 2,
            "--out": out / "occlusion" / img.stem}))
    steps += [
        step("ablate (Tables 2-3)", "ablate", [], {"--arch": plan.arch, "--variants": plan.ablate_variants, **data,
                                                   "--epochs": plan.ablate_epochs, "--limit-train": plan.ablate_limit,
                                                   "--limit-val": plan.limit_val // 2, "--batch-size": plan.batch_size,
                                                   "--init": plan.init, "--lr": plan.lr, "--dropout": plan.dropout,
                                                   "--out": out / "ablate"}),
        step("transfer (Tables 4-7)", "transfer", [], {"--checkpoint": ck, "--dataset": probe,
                                                       "--per-class": ",".join(map(str, plan.probe_per_class)),
                                                       "--folds": plan.probe_folds, "--layers": plan.probe_layers,
                                                       "--probe": plan.probes, "--out": out / "transfer"}),
        step("project (Fig. 1)", "project", [], {"--checkpoint": ck, "--image": images[0] if images else None,
                                                 "--layer": "conv5", "--top": 9, "--out": out / "project"}),
    ]
    return steps


def run_demo(out: str | Path = "runs/demo", *, quick: bool = False, dataset: str = "fashion-mnist",
             data_dir: str | None = None, plan: DemoPlan | None = None,
             echo: Callable[[str], None] = print) -> DemoResult:
    """Train, analyze and report (see the module docstring); returns each step's status and time.

    Args:
        out: the run directory to create (or reuse: steps overwrite their own folders).
        quick: the ~1 minute version (tiny subsets, 1 epoch).
        dataset, data_dir: ``fashion-mnist`` (Debian's copy by default), ``cifar10`` or an ImageFolder.
        plan: override the sizes (default ``PLANS["quick" if quick else "full"]``).
        echo: where progress lines go.

    Example:
        >>> res = run_demo("runs/demo", quick=True)
        >>> res.report
        PosixPath('runs/demo/report/index.html')
    """
    plan = plan or PLANS["quick" if quick else "full"]
    if isinstance(sys.stderr, _Tee):
        return _run_demo(Path(out), plan, quick, dataset, data_dir, echo)
    with contextlib.redirect_stderr(_Tee(sys.stderr)):
        return _run_demo(Path(out), plan, quick, dataset, data_dir, echo)


def _run_demo(out: Path, plan: DemoPlan, quick: bool, dataset: str, data_dir: str | None,
              echo: Callable[[str], None]) -> DemoResult:
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    cmds, notes = _subcommands(), []  # type: tuple[dict[str, set[str]], list[str]]
    data = {"--dataset": dataset, "--data-dir": data_dir}
    train = {"--arch": plan.arch, **data, "--epochs": plan.epochs, "--batch-size": plan.batch_size, "--init": plan.init,
             "--lr": plan.lr, "--dropout": plan.dropout,
             "--limit-train": plan.limit_train, "--limit-val": plan.limit_val, "--seed": 0,
             # a rerun (or a killed demo) continues the run instead of refusing to overwrite it
             "--resume": (out / "config.json").is_file() or (out / "checkpoints").is_dir()}
    result = DemoResult(out, None)
    echo(f"[demo] {'quick' if quick else 'full'} demo of convlens on {dataset} -> {out}")

    def go(step: Step) -> Step:
        result.steps.append(step)
        if step.status == "pending":
            _run_step(step, echo)
        else:
            echo(f"[demo] {step.name:<22} {step.status:<7} {step.seconds:6.1f} s  {step.message}".rstrip())
        return step

    if "train" not in cmds:
        go(Step("train (Sec. 3)", [], "skipped", message="command 'convlens train' is not available"))
    else:
        go(Step("train (Sec. 3)", _argv("train", [], {**train, "--out": out}, cmds["train"], notes)))
        _share_mean(out, [out / "compare", out / "ablate"])
        go(Step("train comparison", _argv("train", [], {**train, "--arch": plan.compare_arch,
                                                         "--epochs": plan.compare_epochs, "--out": out / "compare"},
                                           cmds["train"], notes)))
    go(_prepare_inputs(out, plan, dataset, data_dir))
    for step in _analysis_steps(out, plan, dataset, data_dir, cmds, notes):
        go(step)
    go(Step("correspond (Table 1)", [], "skipped", message=f"needs part landmarks, which {dataset} does not have"))
    for note in dict.fromkeys(notes):
        echo(f"[demo] note: {note}")
    _write_timings(out, result, quick, dataset, time.perf_counter() - t_start)
    report = go(Step("report", ["report", str(out)]))
    result.seconds = time.perf_counter() - t_start
    if report.status == "ok":
        result.report = out / "report" / "index.html"
    failed = [s.name for s in result.steps if s.status == "failed"]
    echo(f"[demo] done in {result.seconds:.0f} s" + (f"; failed: {', '.join(failed)}" if failed else ""))
    if result.report:
        echo(f"[demo] report: {result.report.resolve()}")
        echo(f"[demo] explore it: convlens serve {out}")
    return result


def _share_mean(out: Path, folders: list[Path]) -> None:
    """Reuse the run's per-pixel mean image (``mean.pt``, cached by train) in the other training runs'
    folders: the same data set and crop, so the same mean, without another pass over the training set."""
    import shutil

    if (out / "mean.pt").is_file():
        for folder in folders:
            folder.mkdir(parents=True, exist_ok=True)
            if not (folder / "mean.pt").exists():
                shutil.copy2(out / "mean.pt", folder / "mean.pt")


def _prepare_inputs(out: Path, plan: DemoPlan, dataset: str, data_dir: str | None) -> Step:
    """Architecture table, a few test images as PNG files, and a small labelled ImageFolder for probes."""
    step = Step("inputs", [])
    t0 = time.perf_counter()
    try:
        from convlens.nets.loading import load_model

        loaded = load_model(out / "checkpoints" / "last.pt")
        size = loaded.preprocessing.resize
        _write_summary(out, plan.arch, len(loaded.class_names))
        n = max(plan.occlusion_images, plan.invariance_images, 1)
        export_images(dataset, data_dir, out / "images", per_class=1, limit=n, size=size)
        export_images(dataset, data_dir, out / "data" / "probe", per_class=max(plan.probe_per_class) + 10,
                      size=size, by_class=True)
        step.status = "ok"
    except Exception as exc:
        step.status, step.message = "failed", f"{type(exc).__name__}: {exc}"
    step.seconds = time.perf_counter() - t0
    return step


def _write_timings(out: Path, result: DemoResult, quick: bool, dataset: str, seconds: float) -> None:
    from convlens.io.artifacts import write_result

    rows = [[s.name, s.status, f"{s.seconds:.1f}", s.message] for s in result.steps]
    write_result(out / "demo", "demo", title="Demo steps and their times",
                 summary=f"'convlens demo{' --quick' if quick else ''}' on {dataset}: {len(rows)} steps, "
                         f"{seconds:.0f} s before the report; each step is one 'convlens' command.",
                 params={"quick": quick, "dataset": dataset},
                 tables=[{"title": "Steps", "columns": ["step", "status", "seconds", "message"], "rows": rows}])
