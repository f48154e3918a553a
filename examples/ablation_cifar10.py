"""Table 3 analog on CIFAR-10 with the small presets, then Fig. 6 diagnostics of two first layers.

1. ``convlens ablate``: zfnet-small and several Table 3 variants, same recipe/seed/data
   (a seeded random subset of the training set, a few epochs), table of train/val errors.
2. alexnet-small (AlexNet-like 7x7 stride-2 conv1) trained with the same recipe, and
   ``convlens diagnose`` of zfnet-small (5x5 stride-1 conv1) vs alexnet-small side by side.

    .venv/bin/python examples/ablation_cifar10.py [--epochs 2] [--limit-train 10000] [--out DIR]

Re-running resumes: finished variants are skipped.
"""
from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

from convlens.cli import main as convlens

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--limit-train", type=int, default=3000)
    ap.add_argument("--limit-val", type=int, default=500)
    ap.add_argument("--lr", default="0.001", help="kaiming init + 0..255 inputs diverges at the paper's 0.01")
    ap.add_argument("--variants", default="base,no34,no67")
    ap.add_argument("--out", type=Path, default=Path("runs/examples/ablation_cifar10"))
    args = ap.parse_args()
    common = ["--dataset", "cifar10", "--data-dir", str(DATA), "--epochs", str(args.epochs), "--limit-train",
              str(args.limit_train), "--limit-val", str(args.limit_val), "--init", "kaiming", "--lr", args.lr,
              "--device", "cpu"]
    t0 = time.time()
    assert convlens(["ablate", "--arch", "zfnet-small", "--variants", args.variants, *common,
                     "--out", str(args.out / "zfnet-small")]) == 0
    t1 = time.time()
    alex = args.out / "alexnet-small"
    alex.mkdir(parents=True, exist_ok=True)
    if not (alex / "mean.pt").exists():  # same 32x32 per-pixel mean: skip recomputing it (minutes on 50k JPEGs)
        shutil.copy(args.out / "zfnet-small" / "mean.pt", alex / "mean.pt")
    assert convlens(["ablate", "--arch", "alexnet-small", "--variants", "base", *common,
                     "--out", str(args.out / "alexnet-small")]) == 0
    t2 = time.time()
    assert convlens(["diagnose", "--checkpoint", str(args.out / "zfnet-small" / "base" / "checkpoints" / "last.pt"),
                     "--compare", str(args.out / "alexnet-small" / "base" / "checkpoints" / "last.pt"),
                     "--dataset", "cifar10", "--data-dir", str(DATA), "--limit", "128", "--device", "cpu",
                     "--out", str(args.out / "diagnose")]) == 0
    print(f"ablate {t1 - t0:.0f}s, alexnet-small {t2 - t1:.0f}s, diagnose {time.time() - t2:.0f}s -> {args.out}")


if __name__ == "__main__":
    main()
