"""Number flags that mean what they say: every plain int/float flag of every command is checked
while parsing (finite, in range), so ``--lr inf`` or a huge ``--seed`` is one ``error:`` line."""
from __future__ import annotations

import argparse
import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:

    pass

__all__ = ["count_int", "finite_float", "harden_number_flags", "positive_float", "positive_int", "seed_int"]


def positive_int(text: str) -> int:
    """argparse ``type``: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


SEED_MAX = 2**32 - 1
"""Largest ``--seed`` (numpy's generators take 32-bit seeds)."""
INT_MAX = 2**63 - 1


def finite_float(text: str) -> float:
    """argparse ``type`` of every float flag: a finite number (``inf`` and ``nan`` are refused)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def positive_float(text: str) -> float:
    """argparse ``type``: a finite number > 0 (a learning rate, a radius)."""
    value = finite_float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}")
    return value


def count_int(text: str) -> int:
    """argparse ``type`` of every integer flag: an integer >= 0 (epochs, indices, sizes, ports)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text!r}")
    if value > INT_MAX:
        raise argparse.ArgumentTypeError(f"expected a whole number up to {INT_MAX}, got {text!r}")
    return value


def seed_int(text: str) -> int:
    """argparse ``type`` of ``--seed``: an integer in [0, 2**32 - 1]."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if not 0 <= value <= SEED_MAX:
        raise argparse.ArgumentTypeError(f"expected a seed from 0 to {SEED_MAX}, got {text!r}")
    return value


def harden_number_flags(parser: argparse.ArgumentParser) -> None:
    """Give every plain ``type=float`` / ``type=int`` flag of ``parser`` and its subcommands the checked
    types above (finite floats; integers >= 0; 32-bit seeds), so no command takes ``--lr inf``,
    ``--fill nan``, ``--warmup-epochs -3`` or a seed no generator accepts."""
    for action in parser._actions:
        if action.type is float:
            action.type = finite_float
        elif action.type is int:
            action.type = seed_int if action.dest == "seed" else count_int
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                harden_number_flags(sub)
