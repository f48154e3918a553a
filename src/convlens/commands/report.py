"""``convlens report RUN``: the static HTML report of a run directory (no server, no torch)."""
from __future__ import annotations

import argparse

from convlens.commands._common import out_dir


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report",
        help="write RUN/report/index.html: every figure and table of a run, in the paper's order",
        description="Write a self-contained static HTML report of a run directory (opens from disk).",
    )
    p.add_argument("run", metavar="RUN", help="run directory (from 'convlens train --out RUN' or 'convlens demo')")
    p.add_argument("--out", type=out_dir, default=None, help="report folder (default: RUN/report)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from convlens.report import build_report

    index = build_report(args.run, args.out)
    print(index)
    return 0
