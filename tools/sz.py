"""Lines per source file (tinygrad's sz.py): prints a table, fails on a module over 500 lines."""
from __future__ import annotations

import sys
from pathlib import Path

LIMIT = 500


def main() -> int:
    root = Path(__file__).resolve().parents[1] / "src" / "convlens"
    rows = sorted((sum(1 for _ in p.open()), p.relative_to(root.parent)) for p in root.rglob("*.py"))
    for n, p in rows:
        print(f"{n:6d}  {p}")
    print(f"{sum(n for n, _ in rows):6d}  total")
    over = [(n, p) for n, p in rows if n > LIMIT]
    for n, p in over:
        print(f"error: {p} has {n} lines (> {LIMIT}); split it by concept", file=sys.stderr)
    return 1 if over else 0


if __name__ == "__main__":
    sys.exit(main())
