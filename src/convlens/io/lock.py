"""One writer per output folder: an advisory lock on ``OUT/.convlens.lock``, and the clean-up of
temporary files that killed atomic writes leave behind. Standard library only (cheap to import);
re-exported by :mod:`convlens.training.rundir`."""
from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path

__all__ = ["LOCK_NAME", "OutputLocked", "lock_output", "remove_stale_temporaries"]

log = logging.getLogger("convlens.training.rundir")

LOCK_NAME = ".convlens.lock"


class OutputLocked(ValueError):
    """Another process holds the output folder's lock (the CLI prints it and exits with code 2)."""


@contextlib.contextmanager
def lock_output(path: str | Path, command: str | None = None, *, clean: bool = True) -> Iterator[Path]:
    """Hold an advisory lock on the output folder ``path`` for the duration of the block.

    The lock is ``fcntl.flock`` on ``path/.convlens.lock`` (created with the folder when missing),
    which the kernel releases when the process dies, however it dies: a killed run never leaves a
    stale lock. The file holds the holder's pid and command line, for the error a second writer gets.
    With ``clean`` the temporary files of writes a killed run left behind are removed once the
    lock is held (:func:`remove_stale_temporaries`).
    Re-entrant within a process (a command that calls another keeps the one lock). On systems
    without ``fcntl`` (Windows) the block runs unlocked.

    Raises:
        OutputLocked: another process holds the lock (a ValueError naming its pid and command).
    """
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    key = str(folder.resolve())
    if key in _HELD or sys.platform == "win32":
        yield folder / LOCK_NAME
        return
    import fcntl

    lock = folder / LOCK_NAME
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = _read_holder(fd)
            raise OutputLocked(
                f"{folder} is in use by another convlens process ({holder}); wait for it to finish, "
                "or choose another --out"
            ) from None
        what = command or " ".join(["convlens", *sys.argv[1:]])
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}: {what}\n".encode(), 0)
        _HELD.add(key)
        if clean:
            remove_stale_temporaries(folder)
        try:
            yield lock
        finally:
            _HELD.discard(key)
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
    finally:
        os.close(fd)  # closing the descriptor releases the flock


_HELD: set[str] = set()


def _read_holder(fd: int) -> str:
    try:
        text = os.pread(fd, 4096, 0).decode(errors="replace").strip()
    except OSError:
        text = ""
    return text or "pid unknown"


_TEMP = re.compile(r"(\.tmp\d*|\.tmp\.npz)$")


def remove_stale_temporaries(folder: str | Path, *, depth: int = 3) -> list[Path]:
    """Delete temporary files left by killed atomic writes (``.NAME.XXXX.tmp``, ``.NAME.tmpPID``,
    ``NAME.tmp``, ``NAME.tmp.npz``) in ``folder`` and its subfolders down to ``depth`` levels
    (``units/<layer>/`` of ``mine``). Call it while holding :func:`lock_output`: then no other
    writer is live. Returns the files removed."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed: list[Path] = []
    level = [folder]
    for _ in range(depth + 1):
        subdirs: list[Path] = []
        for d in level:
            try:
                entries = list(os.scandir(d))
            except OSError:
                continue
            for e in entries:
                if e.is_dir(follow_symlinks=False):
                    subdirs.append(Path(e.path))
                elif _TEMP.search(e.name) and e.is_file(follow_symlinks=False):
                    with contextlib.suppress(OSError):
                        os.unlink(e.path)
                        removed.append(Path(e.path))
        level = subdirs
    if removed:
        log.info("removed %d temporary file(s) left by an interrupted run in %s", len(removed), folder)
    return removed
