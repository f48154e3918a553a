"""What the explorer does when something breaks under a page: one clear answer, never a dead thread.

:func:`damage_message` turns an exception raised while building a page (a damaged or missing file of
the run) into one line naming the exception and the run's file; :func:`survive` answers 500 when a
request raises ``SystemExit`` or ``KeyboardInterrupt`` (a model's own code, run for a page), which
Flask lets through and which would otherwise end the request's thread without an answer.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from convlens.explorer.jobs import failure_reason

__all__ = ["damage_message", "survive"]

log = logging.getLogger(__name__)


def damage_message(exc: BaseException, root: Path) -> str:
    """What went wrong building a page, naming the run's file when the error has one."""
    text = " ".join(str(exc).split())[:400]
    name = getattr(exc, "filename", None)
    if isinstance(name, (str, Path)):
        path = Path(name)
        shown = path.relative_to(root).as_posix() if path.is_absolute() and path.is_relative_to(root) else path.name
        text = f"{getattr(exc, 'strerror', None) or text}: {shown}"
    return (f"{type(exc).__name__}: {text or 'no details'}. A file of the run may be damaged or missing; the start "
            "page lists what can be read, and the server log has the details")


def survive(wsgi: Callable[..., Any]) -> Callable[..., Any]:
    """``wsgi`` answering 500 when a request raises ``SystemExit``/``KeyboardInterrupt`` (a model's code run
    for a page): Flask lets them through, and they would end the request's thread without an answer."""
    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        try:
            return wsgi(environ, start_response)
        except (SystemExit, KeyboardInterrupt) as exc:
            if threading.current_thread() is threading.main_thread():
                raise  # a real Ctrl-C (or exit) of a single-threaded server
            log.error("%s %s: %s", environ.get("REQUEST_METHOD"), environ.get("PATH_INFO"), failure_reason(exc))
            body = f"500: {failure_reason(exc)}".encode()
            start_response("500 INTERNAL SERVER ERROR", [("Content-Type", "text/plain; charset=utf-8"),
                                                         ("Content-Length", str(len(body)))])
            return [body]

    return app
