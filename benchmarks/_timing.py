"""Timing helper shared by the benchmarks that interleave several methods in one process."""
from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def timed(fn: Callable[[], T], key: str, wall: dict[str, list[float]], cpu: dict[str, list[float]]) -> T:
    """``fn()``, its wall-clock and process CPU seconds appended to ``wall[key]`` and ``cpu[key]``."""
    t, c = time.perf_counter(), time.process_time()
    out = fn()
    wall.setdefault(key, []).append(time.perf_counter() - t)
    cpu.setdefault(key, []).append(time.process_time() - c)
    return out
