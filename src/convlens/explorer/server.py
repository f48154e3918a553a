"""Serving the explorer: waitress (a production WSGI server) behind a Host-header allowlist.

- **Host allowlist** (:class:`HostAllowlist`): a request whose ``Host`` header is not one of the
  allowed names (localhost names, the bound address, and names given with ``--allow-host``) gets a
  400 with a clear text, so a web page on another origin cannot reach the explorer through DNS
  rebinding.
- **waitress** (:func:`make_server`): a bounded pool of worker threads; a connection idle for
  ``timeout`` seconds is closed (a body shorter than its Content-Length holds no worker: waitress
  buffers request bodies before dispatching, and drops the stalled connection after the timeout);
  bodies over ``max_body`` bytes are refused with 413 before reaching the app; at most
  ``connection_limit`` connections are open at once.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["LOCAL_HOSTS", "HostAllowlist", "ServerLimits", "allowed_hosts", "make_server"]

LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1")
WILDCARD_BINDS = ("0.0.0.0", "::", "")


@dataclass(frozen=True)
class ServerLimits:
    """Resource limits of the server (see the module docstring)."""

    threads: int = 8
    timeout: float = 30.0
    max_body: int = 9 * 1024 * 1024
    connection_limit: int = 100

    def __post_init__(self) -> None:
        if self.threads < 1 or self.timeout <= 0 or self.max_body < 1 or self.connection_limit < 1:
            raise ValueError(f"server limits must be positive, got {self}")


def _host_name(header: str) -> str:
    """``Host`` header -> lower-case name without the port (``[::1]:8765`` -> ``::1``)."""
    h = header.strip().lower()
    if h.startswith("["):
        return h[1:h.find("]")] if "]" in h else h
    return h.rsplit(":", 1)[0] if h.count(":") == 1 else h


def allowed_hosts(bind: str, extra: Sequence[str] = ()) -> tuple[str, ...]:
    """The names a server bound to ``bind`` answers to: localhost names, ``bind`` itself, ``extra``."""
    names = [*LOCAL_HOSTS]
    if bind not in WILDCARD_BINDS:
        names.append(_host_name(bind if ":" not in bind or bind.startswith("[") else f"[{bind}]"))
    names += [_host_name(h) if h != "*" else "*" for h in extra]
    return tuple(dict.fromkeys(n for n in names if n))


class HostAllowlist:
    """WSGI middleware: 400 for a ``Host`` header outside ``hosts`` (``"*"`` in ``hosts`` allows any)."""

    def __init__(self, app: Callable[..., Iterable[bytes]], hosts: Sequence[str]) -> None:
        self.app = app
        self.hosts = frozenset(h.lower() for h in hosts)

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        header = environ.get("HTTP_HOST") or environ.get("SERVER_NAME", "")
        name = _host_name(str(header))
        if "*" in self.hosts or name in self.hosts:
            return self.app(environ, start_response)
        shown = str(header)[:80].encode("ascii", "replace").decode("ascii")
        text = (f"400 Bad Request: this explorer does not answer to the host name {shown!r}. Open it as "
                f"http://localhost:PORT/ (allowed: {', '.join(sorted(self.hosts))}), or restart it with "
                f"--allow-host {_host_name(shown) or 'NAME'} to allow that name.\n").encode()
        start_response("400 Bad Request", [("Content-Type", "text/plain; charset=utf-8"),
                                           ("Content-Length", str(len(text)))])
        return [text]


def make_server(app: Callable[..., Iterable[bytes]], host: str, port: int, limits: ServerLimits) -> Any:
    """A waitress server for ``app`` (not started: call ``.run()``; ``.close()`` stops it;
    ``.effective_port`` is the bound port, useful with ``port=0``)."""
    from waitress.server import create_server

    return create_server(
        app, host=host, port=port, threads=limits.threads, channel_timeout=limits.timeout,
        cleanup_interval=max(0.2, min(30.0, limits.timeout / 2)), max_request_body_size=limits.max_body,
        connection_limit=limits.connection_limit, ident="convlens", expose_tracebacks=False,
        clear_untrusted_proxy_headers=True,
    )
