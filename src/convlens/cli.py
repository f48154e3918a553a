"""The ``convlens`` command line: parse -> call -> save, one subcommand per capability.

Subcommands live in :mod:`convlens.commands` (one module each, discovered here). Building the
parser imports no torch: commands import the library inside their ``run``. Errors that come from
bad input (``ValueError``, ``TypeError``, ``OSError`` such as a missing file, ``ImportError`` of an
optional extra, ``RuntimeError`` from torch such as an input the model cannot take) print one
``error: ...`` line and exit with code 2; ``--debug`` re-raises them with the traceback. Python
warnings raised while a command runs (ours or a library's) print as one plain ``warning: ...`` line
on stderr, each distinct message once, without the source file and code line.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import pkgutil
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

from convlens import commands

__all__ = ["build_parser", "main"]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="convlens", description="Visualize and understand convnets (Zeiler & Fergus 2013).")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks for errors")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda i: i.name):
        if info.name.startswith("_"):
            continue
        importlib.import_module(f"{commands.__name__}.{info.name}").register(sub)
    from convlens.commands._numbers import harden_number_flags

    harden_number_flags(parser)
    return parser


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )


EXPECTED_ERRORS = (ValueError, TypeError, OSError, ImportError, RuntimeError)


def error_line(exc: BaseException) -> str:
    """One ``error: ...`` line for an expected failure (multi-line messages are joined)."""
    text = " ".join(part.strip() for part in str(exc).strip().splitlines() if part.strip())
    if isinstance(exc, OSError) and exc.filename is not None and not text.startswith(("--", "checkpoint")):
        text = f"{exc.strerror or text}: {exc.filename}"
    elif isinstance(exc, OSError) and exc.strerror:  # OSError(errno, message): the message, without "[Errno N]"
        text = exc.strerror
    if isinstance(exc, RuntimeError):
        text += " (the model could not run on this input; --debug shows where)"
    return f"error: {text or type(exc).__name__}"


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``convlens`` script. Returns the exit code (2 for bad input)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2, already printed as one line)
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    if not getattr(args, "func", None):
        parser.print_help()
        names = sorted(info.name for info in pkgutil.iter_modules(commands.__path__) if not info.name.startswith("_"))
        print(f"error: no command given; expected one of {', '.join(names)} (see 'convlens --help')", file=sys.stderr)
        return 2
    setup_logging(args.verbose)
    try:
        with _plain_warnings(), _output_lock(args), _skip_report(args):
            return int(args.func(args) or 0)
    except EXPECTED_ERRORS as exc:
        if args.debug:
            raise
        print(error_line(exc), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


@contextlib.contextmanager
def _plain_warnings() -> Iterator[None]:
    """While the command runs (the server included), show each Python warning as one ``warning: ...`` line on
    stderr, once per distinct message, without its source path and code line; the previous
    ``warnings.showwarning`` is restored afterwards."""
    seen: set[str] = set()
    lock = threading.Lock()  # the explorer's request threads warn concurrently

    def show(message: Warning | str, category: type[Warning], filename: str, lineno: int,
             file: object = None, line: str | None = None) -> None:
        text = " ".join(str(message).split())
        with lock:
            if text in seen:
                return
            seen.add(text)
        print(f"warning: {text}", file=sys.stderr, flush=True)

    previous = warnings.showwarning
    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = previous


def _output_lock(args: argparse.Namespace) -> contextlib.AbstractContextManager:
    """One writer per output folder: hold ``OUT/.convlens.lock`` for the whole command when it has an
    ``--out`` (a second process on the same folder gets ``error: ... in use by ...``, exit 2). Under
    torchrun only rank 0 takes it."""
    out = getattr(args, "out", None)
    if not out or getattr(args, "command", None) in _NO_OUTPUT_LOCK or os.environ.get("RANK", "0") != "0":
        return contextlib.nullcontext()
    if getattr(args, "resume", False) and not (Path(out).is_dir() and any(Path(out).iterdir())):
        # checked before the lock creates the folder: a mistyped --out is not a run to resume (a folder
        # holding only the lock is: a run killed at its start, resumed from scratch)
        raise ValueError(f"--resume: {out} holds no training run (the folder is missing or empty); check the "
                         "--out path, or leave out --resume to start a new run there")
    from convlens.io.lock import lock_output

    return lock_output(out)


_NO_OUTPUT_LOCK: frozenset[str] = frozenset()  # commands whose --out is not a folder they write


@contextlib.contextmanager
def _skip_report(args: argparse.Namespace) -> Iterator[None]:
    """Images the command skipped (unreadable, over the pixel cap): one warning at the end, and the
    list (path and reason) added to the command's ``OUT/result.json`` as ``data.skipped_images``."""
    from convlens.images.sources import SkipLog

    started = time.time()
    with SkipLog() as skips:
        yield
    if not len(skips):
        return
    logging.getLogger("convlens").warning("%s", skips.summary())
    out = getattr(args, "out", None)
    result = Path(out) / "result.json" if out else None
    if result is None or not result.is_file() or result.stat().st_mtime < started - 1:
        return
    from convlens.io.artifacts import read_result, write_json

    try:
        doc = read_result(result)
        doc.setdefault("data", {})["skipped_images"] = skips.to_json()
        write_json(doc, result)
    except (ValueError, OSError) as exc:
        logging.getLogger("convlens").warning("could not list the skipped images in %s: %s", result, exc)


if __name__ == "__main__":
    sys.exit(main())
