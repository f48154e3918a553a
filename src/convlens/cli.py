"""The ``convlens`` command line: parse -> call -> save, one subcommand per capability.

Subcommands live in :mod:`convlens.commands` (one module each, discovered here). Building the
parser imports no torch: commands import the library inside their ``run``. Errors that come from
bad input (``ValueError``, ``TypeError``, ``OSError`` such as a missing file, ``ImportError`` of an
optional extra, ``RuntimeError`` from torch such as an input the model cannot take) print one
``error: ...`` line and exit with code 2; ``--debug`` re-raises them with the traceback.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
import sys

from . import commands

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
        return 2
    setup_logging(args.verbose)
    try:
        return int(args.func(args) or 0)
    except EXPECTED_ERRORS as exc:
        if args.debug:
            raise
        print(error_line(exc), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
