"""``convlens demo`` (what ``make demo`` runs): train, run every analysis that applies, write the report."""
from __future__ import annotations

import argparse

from convlens.commands._common import out_dir


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="train a small ZFNet on Fashion-MNIST, run every analysis and write the report (about 5 CPU-minutes: "
             "2 to 25 minutes of wall time on 2 cores, depending on their load)",
        description="End to end: train zfnet-small with checkpoints, mine, evolution, invariance, diagnose, "
                    "occlusion, ablations, linear probes, projections; then the HTML report. Each step runs the "
                    "real 'convlens' command; a failing step is logged and the demo goes on.",
    )
    p.add_argument("--quick", action="store_true", help="a ~1 minute version (tiny subsets, 1 epoch), used in tests")
    p.add_argument("--dataset", default="fashion-mnist",
                   help="fashion-mnist (default, Debian's dataset-fashion-mnist), cifar10, or an ImageFolder directory")
    p.add_argument("--data-dir", default=None,
                   help="where the dataset lives (fashion-mnist: Debian's folder by default)")
    p.add_argument("--out", type=out_dir, default="runs/demo", help="run directory to write (default runs/demo)")
    p.add_argument("--strict", action="store_true", help="exit with code 1 if any step failed")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from convlens.demo import run_demo
    from convlens.images.sources import open_raw

    open_raw(args.dataset, "test", size=32, data_dir=args.data_dir)  # a missing dataset: one error line, exit 2
    result = run_demo(args.out, quick=args.quick, dataset=args.dataset, data_dir=args.data_dir)
    if result.report is None:
        return 1
    return 1 if args.strict and not result.ok else 0
