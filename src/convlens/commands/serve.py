"""``convlens serve RUN``: the local web explorer of a run (binds 127.0.0.1 by default)."""
from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="browse a run's feature maps and analyze uploaded images in the browser",
        description="Start the local explorer: layer -> feature map -> top-k projections and patches, "
                    "its evolution, and on-demand projections + occlusion maps of an uploaded image.",
    )
    p.add_argument("run", metavar="RUN", help="run directory")
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8765, help="port (default 8765)")
    p.add_argument("--checkpoint", default=None, help="model for uploads (default RUN/checkpoints/last.pt)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if not 0 < args.port < 65536:
        raise ValueError(f"--port must be in 1..65535, got {args.port}")
    if not Path(args.run).is_dir():
        raise NotADirectoryError(f"run directory {args.run!r} does not exist")
    from ..explorer import create_app

    app = create_app(args.run, checkpoint=args.checkpoint)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: binding {args.host}: anyone who can reach this machine can use the explorer")
    print(f"convlens explorer for {Path(args.run).resolve()} at http://{args.host}:{args.port}/ (Ctrl-C stops it)")
    app.run(host=args.host, port=args.port, debug=False, threaded=True)
    return 0
