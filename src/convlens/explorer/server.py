"""Serving the explorer: waitress (a production WSGI server) behind a request guard.

- **Request guard** (:func:`guard`, WSGI middleware around the app):
  - a ``Host`` header outside the allowed names gets 400 (DNS rebinding); localhost names are
    answered only to connections from this machine;
  - a write (``POST``/``PUT``/``PATCH``/``DELETE``) sent by a page of another site gets 403: when
    the browser sends ``Sec-Fetch-Site`` it must be ``same-origin`` or ``none``; otherwise the
    ``Origin`` (or, without it, the ``Referer``) must be this server's own ``scheme://host:port``.
    A request with none of the three headers comes from a script (``curl``), not from a page
    (every current browser sends ``Origin`` with a cross-site ``POST``), and is answered;
  - every response carries ``X-Frame-Options: DENY``, a ``Content-Security-Policy`` (scripts,
    styles, images and forms from this server only; ``data:`` images; inline ``style=""``
    attributes, which the pages use for bars and colour keys), ``X-Content-Type-Options: nosniff``
    and ``Referrer-Policy: same-origin``.
- **waitress** (:func:`make_server`): a bounded pool of worker threads; a connection idle for
  ``timeout`` seconds is closed; bodies over ``max_body`` bytes are refused with 413 before reaching
  the app. Slow clients cannot lock others out (Apache's ``mod_reqtimeout`` rules): the request head
  must be complete within ``head_timeout`` seconds of its first byte, whatever the pace it trickles
  in at, and a body must arrive at ``min_body_rate`` bytes/s on average after a ``timeout`` grace;
  at ``connection_limit`` open connections, a new one closes the oldest connection that is not
  being answered and has no complete request head (idle keep-alive or slow head), instead of
  waiting in the backlog behind it.
"""
from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from waitress.channel import HTTPChannel
from waitress.server import TcpWSGIServer

__all__ = ["LOCAL_HOSTS", "ServerLimits", "allowed_hosts", "guard", "machine_addresses", "make_server"]

LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1")
WILDCARD_BINDS = ("0.0.0.0", "::", "")
WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
SECURITY_HEADERS = (
    ("X-Frame-Options", "DENY"),
    ("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
                                "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "same-origin"),
)


@dataclass(frozen=True)
class ServerLimits:
    """Resource limits of the server (see the module docstring)."""

    threads: int = 8
    timeout: float = 30.0
    max_body: int = 9 * 1024 * 1024
    connection_limit: int = 100
    head_timeout: float = 10.0
    min_body_rate: float = 500.0

    def __post_init__(self) -> None:
        if min(self.threads, self.timeout, self.max_body, self.connection_limit, self.head_timeout,
               self.min_body_rate) <= 0:
            raise ValueError(f"server limits must be positive, got {self}")


def _host_name(header: str) -> str:
    """``Host`` header -> lower-case name without the port (``[::1]:8765`` -> ``::1``)."""
    h = header.strip().lower()
    if h.startswith("["):
        return h[1:h.find("]")] if "]" in h else h
    return h.rsplit(":", 1)[0] if h.count(":") == 1 else h


def machine_addresses() -> tuple[str, ...]:
    """This machine's host names and addresses (what other machines may call it), loopback excluded."""
    names: list[str] = []
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:  # the address of the default route first (a UDP "connect" sends nothing)
        probe.connect(("10.255.255.255", 1))
        names.append(probe.getsockname()[0])
    except OSError:
        pass
    finally:
        probe.close()
    for name in dict.fromkeys((socket.gethostname(), socket.getfqdn())):
        names.append(name.lower())
        with contextlib.suppress(OSError):
            names += [str(info[4][0]) for info in socket.getaddrinfo(name, None)]
    return tuple(n for n in dict.fromkeys(names) if n and n not in LOCAL_HOSTS and not n.startswith("127."))


def allowed_hosts(bind: str, extra: Sequence[str] = ()) -> tuple[str, ...]:
    """The names a server bound to ``bind`` answers to: localhost names, ``bind`` itself (for a
    wildcard bind, this machine's names and addresses), ``extra``."""
    names = [*LOCAL_HOSTS]
    if bind in WILDCARD_BINDS:
        names += machine_addresses()
    else:
        names.append(_host_name(bind if ":" not in bind or bind.startswith("[") else f"[{bind}]"))
    names += [_host_name(h) if h != "*" else "*" for h in extra]
    return tuple(dict.fromkeys(n for n in names if n))


def _is_loopback(addr: str) -> bool:
    return addr.startswith("127.") or addr in ("::1", "localhost") or addr.startswith("::ffff:127.")


def _text(start_response: Callable[..., Any], status: str, text: str) -> list[bytes]:
    body = text.encode()
    start_response(status, [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))])
    return [body]


class _Guard:
    """The request guard of the module docstring (build it with :func:`guard`)."""

    def __init__(self, app: Callable[..., Iterable[bytes]], hosts: Sequence[str]) -> None:
        self.app = app
        self.hosts = frozenset(h.lower() for h in hosts)

    def refusal(self, environ: dict[str, Any]) -> tuple[str, str] | None:
        """(status, text) for a request the guard refuses, else None."""
        header = str(environ.get("HTTP_HOST") or environ.get("SERVER_NAME", ""))
        name = _host_name(header)
        peer = str(environ.get("REMOTE_ADDR", "127.0.0.1"))
        local_name = name in LOCAL_HOSTS and "*" not in self.hosts
        if not ("*" in self.hosts or name in self.hosts) or (local_name and not _is_loopback(peer)):
            shown = header[:80].encode("ascii", "replace").decode("ascii")
            return "400 Bad Request", (
                f"400 Bad Request: this explorer does not answer to the host name {shown!r} from {peer}. Open "
                f"it as http://localhost:PORT/ on this machine (allowed: {', '.join(sorted(self.hosts))}; "
                "localhost names only from this machine), or restart it with "
                f"--allow-host {_host_name(shown) or 'NAME'} to allow that name.\n")
        if environ.get("REQUEST_METHOD", "GET").upper() in WRITE_METHODS and not _same_site(environ, header):
            return "403 Forbidden", (
                "403 Forbidden: this form was sent by a page of another site (its Origin, Referer or "
                "Sec-Fetch-Site header says so); the explorer accepts uploads only from its own pages. "
                "Open the explorer's own page and send the form from there.\n")
        return None

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        def with_headers(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            have = {k.lower() for k, _ in headers}
            headers += [(k, v) for k, v in SECURITY_HEADERS if k.lower() not in have]
            return start_response(status, headers, exc_info) if exc_info else start_response(status, headers)

        refused = self.refusal(environ)
        if refused is not None:
            return _text(with_headers, *refused)
        return self.app(environ, with_headers)


def _same_site(environ: dict[str, Any], host_header: str) -> bool:
    """Whether a write comes from this server's own pages (or from a script: no browser headers)."""
    fetch_site = environ.get("HTTP_SEC_FETCH_SITE")
    if fetch_site is not None:
        return str(fetch_site).strip().lower() in ("same-origin", "none")
    source = environ.get("HTTP_ORIGIN") or environ.get("HTTP_REFERER")
    if source is None:
        return True
    parts = urlsplit(str(source).strip())
    scheme = str(environ.get("wsgi.url_scheme", "http"))
    return parts.scheme == scheme and parts.netloc.lower() == host_header.strip().lower() != ""


def guard(app: Callable[..., Iterable[bytes]], hosts: Sequence[str]) -> Callable[..., Iterable[bytes]]:
    """``app`` behind the request guard: ``Host`` allowlist (``"*"`` in ``hosts`` allows any),
    cross-site writes refused, security headers added (see the module docstring)."""
    return _Guard(app, hosts)


class _Channel(HTTPChannel):
    """A waitress connection that knows since when its current request has been arriving."""

    started: float | None = None  # first byte of the request being read (None: none being read)
    body_bytes = 0

    def received(self, data: bytes) -> bool:
        before = self.request
        result = bool(super().received(data))
        if self.request is None:
            self.started = None
        elif self.request is not before:
            self.started, self.body_bytes = time.time(), 0
        elif self.request.headers_finished:
            self.body_bytes += len(data)
        return result

    def evictable(self) -> bool:
        """Not being answered, nothing to send, and no complete request head: idle or slow head."""
        return not (self.requests or self.total_outbufs_len or self.will_close or self.close_when_flushed) and (
            self.request is None or not self.request.headers_finished)

    def overdue(self, now: float, limits: ServerLimits) -> bool:
        if self.started is None or self.request is None or self.requests:
            return False
        if not self.request.headers_finished:
            return now - self.started > limits.head_timeout
        return now - self.started > limits.timeout + self.body_bytes / limits.min_body_rate


class _Server(TcpWSGIServer):
    """waitress's TCP server with the slow-client rules of the module docstring."""

    channel_class = _Channel
    limits = ServerLimits()

    def maintenance(self, now: float) -> None:
        super().maintenance(now)
        for channel in list(self.active_channels.values()):
            if isinstance(channel, _Channel) and channel.overdue(now, self.limits):
                channel.will_close = True

    def readable(self) -> bool:
        full = self.accepting and len(self._map) >= self.adj.connection_limit  # waitress stops accepting there
        if full:
            self._evict()
        self.in_connection_overflow = full  # set here, waitress would log a line at each switch
        return bool(super().readable())

    def _evict(self) -> None:
        """Close the oldest idle or slow-head connections (a tenth of the limit), preferring the
        address holding the most, so that a new connection is accepted at once."""
        victims = [c for c in self.active_channels.values() if isinstance(c, _Channel) and c.evictable()]
        per_peer: dict[str, int] = {}
        for c in victims:
            per_peer[str(c.addr[0])] = per_peer.get(str(c.addr[0]), 0) + 1
        victims.sort(key=lambda c: (-per_peer[str(c.addr[0])], c.started or c.last_activity))
        for c in victims[:max(1, self.adj.connection_limit // 10)]:
            c.will_close = True


def make_server(app: Callable[..., Iterable[bytes]], host: str, port: int, limits: ServerLimits) -> Any:
    """A waitress server for ``app`` on the first address ``host`` resolves to (not started: call
    ``.run()``; ``.close()`` stops it; ``.effective_port`` is the bound port, useful with ``port=0``)."""
    from waitress.adjustments import Adjustments

    adj = Adjustments(host=host, port=port, **_settings(limits))
    server = _Server(app, {}, adj=adj, sockinfo=adj.listen[0])
    server.limits = limits
    return server


def _settings(limits: ServerLimits) -> dict[str, Any]:
    return {"threads": limits.threads, "channel_timeout": limits.timeout,
            "cleanup_interval": max(0.2, min(1.0, limits.head_timeout / 4, limits.timeout / 2)),
            "max_request_body_size": limits.max_body, "connection_limit": limits.connection_limit,
            "ident": "convlens", "expose_tracebacks": False, "clear_untrusted_proxy_headers": True,
            "asyncore_use_poll": True}
