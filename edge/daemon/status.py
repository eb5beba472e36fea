"""``status``: the daemon's live figures, its control sockets, and asking a daemon for them."""

from __future__ import annotations

import asyncio
import json
import os
import time
from typing import TYPE_CHECKING, Any

from .protocol import Closed, DaemonError, check_token, encode, parse_header
from .uri import Endpoint, control_for, open_socket

if TYPE_CHECKING:
    from .server import Server

CONTROL_TIMEOUT = 5.0
"""Seconds a control connection has to send its one request."""


def process_figures() -> dict[str, Any]:
    """CPU seconds, RSS, threads and open fds of this process, from /proc/self (os.times() where there is none)."""
    fig: dict[str, Any] = {}
    try:
        with open("/proc/self/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        tick = os.sysconf("SC_CLK_TCK")
        fig["cpu_user_s"] = int(fields[11]) / tick
        fig["cpu_system_s"] = int(fields[12]) / tick
        fig["threads"] = int(fields[17])
    except (OSError, IndexError, ValueError):
        t = os.times()
        fig["cpu_user_s"], fig["cpu_system_s"] = t.user, t.system
    fig["cpu_s"] = round(fig["cpu_user_s"] + fig["cpu_system_s"], 3)
    fig["rss_bytes"] = None
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmRSS:"):
                    fig["rss_bytes"] = int(line.split()[1]) * 1024
                    break
    except OSError:
        pass
    try:
        fig["open_fds"] = len(os.listdir("/proc/self/fd"))
    except OSError:
        fig["open_fds"] = None
    return fig


def build_status(server: Server, limits: dict[str, Any]) -> dict[str, Any]:
    """The JSON document ``edge-denoise status`` prints."""
    from .. import __version__

    b = server.bundle
    streams = [s.figures() for s in server.sessions.values()]
    t = dict(server.totals)
    t["seconds_processed"] = round(t["seconds_processed"] + sum(s["seconds_processed"] for s in streams), 3)
    t["compute_s"] = round(t["compute_s"] + sum(s["compute_s"] for s in streams), 4)
    t["deadline_misses"] += sum(s["deadline_misses"] for s in streams)
    t["open"] = len(streams)
    t["ends"] = dict(server.ends)
    t["accept_failures"] = sum(li.accept_failures for li in server.listeners)
    pool = server.stream_workers.pool if server.stream_workers is not None else None
    t["denoisers_created"] = pool.created if pool else 0
    t["denoisers_reused"] = pool.reused if pool else 0
    return {"type": "status", "version": __version__, "pid": os.getpid(),
            "uptime_s": round(time.time() - server.started, 3), "stopping": server.stopping,
            "uris": [str(e) for e in server.endpoints], "controls": [str(e) for e in server.controls],
            "workers": server.workers, "limits": limits,
            "batch": {"mode": server.batch, "model_batched": server.batched(b),
                      **(server.batcher.figures() if server.batcher is not None else {})},
            "model": {"name": b.name, "sha256": b.sha256, "path": server.model_path, "family": b.family,
                      "sample_rate": b.sample_rate, "latency_samples": b.latency_samples,
                      "loaded_at": server.loaded_at, "auto_level": server.options.auto_level},
            "process": process_figures(), "totals": t, "streams": streams, "recent": list(server.recent)}


async def serve_control(server: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                        ep: Endpoint) -> None:
    """One control request: ``{"type":"status"}`` (with the token when the socket is not on loopback)."""
    try:
        line = await asyncio.wait_for(reader.readuntil(b"\n"), CONTROL_TIMEOUT)
        msg = parse_header(line)
        if not ep.loopback:
            check_token(server.token, msg.get("token"), "status request")
        if msg["type"] != "status":
            raise Closed("protocol", f"expected {{\"type\": \"status\"}}, got type {msg['type']!r}")
        writer.write(encode(server.status()))
    except Closed as exc:
        writer.write(encode({"type": "error", "message": exc.message}))
    except (asyncio.TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError,
            ConnectionError):
        pass
    try:
        writer.close()
        await asyncio.wait_for(writer.wait_closed(), 1.0)
    except (OSError, asyncio.TimeoutError, ConnectionError):
        writer.transport.abort()


def request_status(ep: Endpoint, token: str | None = None, timeout: float = 5.0) -> dict[str, Any]:
    """Ask a daemon for its figures: a control endpoint, or a JSON-mode serve endpoint (same answer)."""
    with open_socket(ep, timeout) as s:
        s.sendall(encode({"type": "status", **({"token": token} if token else {})}))
        f = s.makefile("rb")
        try:
            line = f.readline(1 << 24)
        except OSError as exc:
            raise DaemonError(f"{ep}: no answer ({exc})") from None
    if not line:
        raise DaemonError(f"{ep}: closed without an answer; is it a control socket (--control)?")
    try:
        msg = json.loads(line)
    except ValueError:
        raise DaemonError(f"{ep}: expected a JSON status line, got {line[:60]!r}") from None
    if msg.get("type") == "error":
        raise DaemonError(f"{ep}: {msg.get('message')}")
    return msg


def status_of(serve: Endpoint, token: str | None, timeout: float) -> dict[str, Any]:
    """The figures of the daemon serving ``serve``: from its default control socket, else (JSON mode) itself."""
    control = control_for(serve)
    if control is None:
        raise DaemonError(f"{serve} has no default control socket; pass --control URI")
    try:
        return request_status(control, token, timeout)
    except DaemonError as first:
        if serve.raw:
            raise
        try:
            return request_status(serve, token, timeout)
        except DaemonError:
            raise first from None
