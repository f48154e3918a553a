"""``convlens serve RUN``: the local web explorer of a run, under waitress (binds 127.0.0.1 by default).

``RUN`` alone is enough: the model for uploads and for projecting maps ``mine`` did not project is
the one the run's ``mine`` recorded (``params.source`` in its ``result.json``), opened once, in the
background, when the server starts; ``--checkpoint``/``--arch`` give uploads another model.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from convlens.commands._common import add_device_arg, resolve_device_arg
from convlens.commands._model import add_model_args, load_model_from_args, model_spec


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="browse a run's feature maps and analyze uploaded images in the browser",
        description="Start the local explorer: every mined feature map of every layer, unit pages with their "
                    "top-k projections, patches, classes and receptive field, classes -> units, and on-demand "
                    "projections + occlusion maps of an uploaded image with any model.",
    )
    p.add_argument("run", metavar="RUN", help="run directory")
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8765, help="port (default 8765; 0 picks a free one)")
    add_model_args(p, required=False)  # uploads' model (default: RUN/checkpoints/last.pt, else the one mine recorded)
    p.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                   help="also answer requests whose Host header is NAME (repeatable; '*' answers any: only behind "
                        "a proxy that checks it). Default: localhost names and the bound address")
    p.add_argument("--timeout", type=float, default=30.0,
                   help="seconds before an idle or stalled connection is closed (default 30)")
    p.add_argument("--head-timeout", type=float, default=10.0,
                   help="seconds a client has to send a whole request head, however slowly it trickles "
                        "(default 10); bodies must then arrive at 500 bytes/s or more")
    p.add_argument("--threads", type=int, default=8, help="worker threads answering requests (default 8)")
    p.add_argument("--queue", type=int, default=4,
                   help="uploads queued or being analysed at most; more get 503 (default 4)")
    p.add_argument("--max-pixels", type=int, default=None,
                   help="refuse uploads with more pixels (413); default 16000000")
    add_device_arg(p)  # where the mined run's model projects maps on demand
    p.set_defaults(func=run)


def _model_loader(args: argparse.Namespace) -> tuple[Any, str]:
    """A function loading the model the flags name, else the run's own ``checkpoints/last.pt``, and its label
    (None: no model, uploads are off)."""
    spec = model_spec(args)
    if spec is None:
        if args.weights is not None:
            raise ValueError("--weights goes with --arch SPEC (the architecture they fit), e.g. "
                             "--arch torchvision:resnet18 --weights FILE")
        own = Path(args.run) / "checkpoints" / "last.pt"
        if not own.is_file():
            return None, ""
        return (lambda: load_model_from_args(args, "cpu", spec=str(own))), own.name
    for flag in ("checkpoint", "weights", "classes"):
        value = getattr(args, flag, None)
        if value is not None and not Path(value).is_file():
            raise FileNotFoundError(f"--{flag} file not found: {value}")

    def load() -> Any:
        return load_model_from_args(args, "cpu")

    return load, spec


def run(args: argparse.Namespace) -> int:
    if not 0 <= args.port < 65536:
        raise ValueError(f"--port must be in 0..65535, got {args.port}")
    for name in ("threads", "queue"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name} must be >= 1, got {getattr(args, name)}")
    for name in ("timeout", "head_timeout"):
        if not 0 < getattr(args, name) < float("inf"):
            raise ValueError(f"--{name.replace('_', '-')} must be a number of seconds > 0, got {getattr(args, name)}")
    if args.max_pixels is not None and args.max_pixels < 1:
        raise ValueError(f"--max-pixels must be >= 1, got {args.max_pixels}")
    if not Path(args.run).is_dir():
        raise NotADirectoryError(f"run directory {args.run!r} does not exist")
    from convlens.explorer import MAX_UPLOAD_BYTES, MAX_UPLOAD_PIXELS, create_app
    from convlens.explorer.server import LOCAL_HOSTS, ServerLimits, allowed_hosts, make_server

    loader, label = _model_loader(args)
    if loader is not None:  # load it now: its preprocessing line (and a model that does not load) show at start-up
        loaded = loader()
        loader = lambda: loaded  # noqa: E731
    hosts = allowed_hosts(args.host, args.allow_host)
    app = create_app(args.run, model=loader, model_label=label, allowed_hosts=hosts,
                     max_pixels=args.max_pixels or MAX_UPLOAD_PIXELS, queue=args.queue, keep=max(32, args.queue),
                     preload=True, device=str(resolve_device_arg(args)))
    limits = ServerLimits(threads=args.threads, timeout=args.timeout, head_timeout=args.head_timeout,
                          max_body=MAX_UPLOAD_BYTES + 256 * 1024)
    server = make_server(app, args.host, args.port, limits)
    port = server.effective_port
    print(f"convlens explorer for {Path(args.run).resolve()} at {_url(args.host, hosts, port)} "
          f"(answers to {', '.join(hosts)}; Ctrl-C stops it)", flush=True)
    if args.host not in LOCAL_HOSTS:
        print(f"warning: bound to {args.host}: everyone who can reach this address can browse this run and "
              "run the model on images they upload (when it has one); there is no login", flush=True)
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
    return 0


def _url(bind: str, hosts: tuple[str, ...], port: int) -> str:
    """The URL to open: the bound address, or for a wildcard bind this machine's first address."""
    from convlens.explorer.server import LOCAL_HOSTS, WILDCARD_BINDS

    shown = bind
    if bind in WILDCARD_BINDS:
        shown = next((h for h in hosts if h not in LOCAL_HOSTS and h != "*"), "127.0.0.1")
    return f"http://[{shown}]:{port}/" if ":" in shown else f"http://{shown}:{port}/"
