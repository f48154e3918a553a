"""CLI subcommands: one module per paper capability, each with ``register(subparsers)``.

A module here defines ``register(sub: argparse._SubParsersAction) -> None`` which adds its
subcommand(s) and sets ``func=<callable(args) -> int>`` as the parser default. ``convlens.cli``
discovers every module in this package; modules only parse -> call -> save.
"""
