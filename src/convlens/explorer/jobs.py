"""Bounded background analysis for the explorer: a fixed number of slots, a fixed number of kept results.

An upload becomes a :class:`Job` with a stable, unguessable id (its result page is
``/analysis/<id>``); at most ``capacity`` jobs are queued or running at once (a new one beyond that
is refused, and the server answers 503 with a clear text), ``workers`` of them compute at a time,
and the last ``keep`` finished results stay in memory (oldest dropped first). After each job the C
allocator is asked to give freed memory back to the system (glibc ``malloc_trim``), so that the
server's resident memory returns near its idle size after a burst.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

__all__ = ["Job", "JobQueue", "failure_reason", "release_memory"]

log = logging.getLogger(__name__)


def _libc_trim() -> Callable[[], None]:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        trim = getattr(libc, "malloc_trim", None)
    except OSError:
        trim = None
    if trim is None:
        return lambda: None

    def release() -> None:
        trim(0)

    return release


release_memory = _libc_trim()


class Job:
    """One analysis: ``state`` is queued -> running -> done | failed; ``stage``/``fraction`` its progress."""

    def __init__(self, name: str, params: dict[str, Any]) -> None:
        self.id = secrets.token_urlsafe(12)
        self.name = name
        self.params = dict(params)
        self.state = "queued"
        self.stage = "waiting for a free analysis slot"
        self.fraction = 0.0
        self.result: Any = None
        self.error: str | None = None
        self.created = time.time()
        self.finished: float | None = None

    def progress(self, stage: str, fraction: float) -> None:
        self.stage, self.fraction = stage, max(0.0, min(1.0, float(fraction)))

    @property
    def done(self) -> bool:
        return self.state in ("done", "failed")

    def status(self) -> dict[str, Any]:
        return {"id": self.id, "state": self.state, "stage": self.stage, "fraction": round(self.fraction, 3),
                "error": self.error, "seconds": round((self.finished or time.time()) - self.created, 1)}


class JobQueue:
    """At most ``capacity`` jobs pending or running, ``workers`` running, ``keep`` results remembered."""

    def __init__(self, *, workers: int = 1, capacity: int = 4, keep: int = 32,
                 on_done: Callable[[Job, str], object] | None = None) -> None:
        if workers < 1 or capacity < workers or keep < capacity:
            raise ValueError(f"need 1 <= workers <= capacity <= keep, got workers={workers}, "
                             f"capacity={capacity}, keep={keep}")
        self.capacity, self.keep = capacity, keep
        self._slots = threading.BoundedSemaphore(capacity)
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="convlens-analysis")
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._lock = threading.Lock()
        self._on_done = on_done  # called with each finished job and its outcome (done|failed): keep it on disk

    def submit(self, name: str, params: dict[str, Any], fn: Callable[[Job], Any]) -> Job | None:
        """Queue ``fn(job)`` (its return value becomes ``job.result``); None when every slot is taken."""
        if not self._slots.acquire(blocking=False):
            return None
        job = Job(name, params)
        with self._lock:
            self._jobs[job.id] = job
            self._evict()
        try:
            self._pool.submit(self._run, job, fn)
        except RuntimeError:  # the pool was shut down
            self._slots.release()
            return None
        return job

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            return self._jobs.get(job_id)

    def busy(self) -> int:
        with self._lock:
            return sum(1 for j in self._jobs.values() if not j.done)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _evict(self) -> None:
        while len(self._jobs) > self.keep:
            victim = next((k for k, j in self._jobs.items() if j.done), None)
            if victim is None:
                return
            del self._jobs[victim]

    def _run(self, job: Job, fn: Callable[[Job], Any]) -> None:
        job.state = "running"
        job.progress("starting", 0.0)
        outcome = "failed"
        try:
            job.result = fn(job)
            outcome = "done"
        except (ValueError, TypeError, FileNotFoundError) as exc:
            job.error = str(exc)
        except BaseException as exc:  # whatever ends it (a bug, sys.exit or KeyboardInterrupt
            # raised by a model's own code) ends the job as failed, never the worker thread or the server
            log.error("analysis %s failed", job.id, exc_info=exc)
            job.error = failure_reason(exc)
        finally:
            job.finished = time.time()
            self._finish(job, outcome)  # kept (on disk) before it shows as finished
            job.state = outcome
            job.progress(outcome, 1.0 if outcome == "done" else job.fraction)
            self._slots.release()
            release_memory()

    def _finish(self, job: Job, outcome: str) -> None:
        if self._on_done is None:
            return
        try:
            self._on_done(job, outcome)
        except Exception:  # keeping the result elsewhere is a bonus: the job itself is finished
            log.exception("keeping analysis %s failed", job.id)


def failure_reason(exc: BaseException) -> str:
    """One line saying why a job ended, for its page (the server log has the traceback)."""
    detail = " ".join(str(exc).split())[:300]
    if isinstance(exc, SystemExit):
        return (f"the model's code called sys.exit({exc.code!r}) while the analysis ran; a model file must build "
                "the model, not run a program (put its script part under if __name__ == '__main__':)")
    if isinstance(exc, KeyboardInterrupt):
        return "the analysis was interrupted: KeyboardInterrupt was raised inside it (by the model's code); " \
               "the server keeps running"
    if not isinstance(exc, Exception):
        return f"the analysis was stopped by {type(exc).__name__}{': ' + detail if detail else ''}"
    return f"the analysis failed ({type(exc).__name__}{': ' + detail if detail else ''}); see the server log"
