"""``edge-denoise serve`` and ``edge-denoise status``: a URI-addressed denoising daemon, one stream per connection."""

from __future__ import annotations

import argparse
import asyncio
import hmac
import ipaddress
import json
import logging
import os
import signal
import socket
import stat
import sys
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

import numpy as np

from .audio import float_to_pcm16, pcm16_to_float  # noqa: F401 (re-exported for clients)
from .bundle import Bundle, load_bundle
from .errors import EdgeError
from .options import Options
from .stream import StreamingDenoiser

log = logging.getLogger("edge.daemon")

PROTOCOL = 1
HEADER_LIMIT = 4096
"""Bytes: the longest header line (JSON mode) or token line (raw mode) a client may send."""
RAW_READ = 16384
"""Bytes: the most raw-mode PCM read in one go (also capped by --max-message-bytes)."""
RECENT = 32
"""Closed connections kept for ``status``."""


class DaemonError(EdgeError):
    """A daemon option, URI or connection is not what was expected."""


# -- PCM: the one int16 <-> float conversion of the daemon (and of the tests that check it) ----------
# -- URIs ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Endpoint:
    """A parsed ``unix://``, ``tcp://`` or ``stdio://`` URI."""

    scheme: str
    path: str = ""
    """Socket path (unix)."""
    host: str = ""
    port: int = 0
    raw: bool = False
    """``?mode=raw``: plain s16le mono PCM in, denoised PCM out, no headers."""

    def __str__(self) -> str:
        q = "?mode=raw" if self.raw else ""
        if self.scheme == "unix":
            return f"unix://{self.path}{q}"
        if self.scheme == "tcp":
            host = f"[{self.host}]" if ":" in self.host else self.host
            return f"tcp://{host}:{self.port}{q}"
        return f"stdio://{q}"

    @property
    def loopback(self) -> bool:
        """True unless this is a TCP address some other machine could reach."""
        if self.scheme != "tcp":
            return True
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            pass
        try:
            infos = socket.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM)
        except OSError:
            return False
        return all(ipaddress.ip_address(i[4][0]).is_loopback for i in infos)


def parse_uri(uri: str) -> Endpoint:
    """``unix:///run/x.sock``, ``tcp://127.0.0.1:10500``, ``stdio://``; ``?mode=raw`` selects raw PCM."""
    parts = urlsplit(uri)
    query = parse_qs(parts.query, keep_blank_values=True)
    unknown = sorted(set(query) - {"mode"})
    mode = query.get("mode", ["json"])[-1]
    if unknown or mode not in ("json", "raw"):
        raise DaemonError(f"{uri}: expected at most the query ?mode=json or ?mode=raw, got ?{parts.query}")
    raw = mode == "raw"
    if parts.scheme == "unix":
        path = parts.netloc + parts.path  # unix://rel.sock keeps a relative path
        if not path:
            raise DaemonError(f"{uri}: expected unix:///path/to/socket, got no path")
        return Endpoint("unix", path=path, raw=raw)
    if parts.scheme == "tcp":
        try:
            port = parts.port
        except ValueError:
            port = None
        if not parts.hostname or port is None:
            raise DaemonError(f"{uri}: expected tcp://HOST:PORT (e.g. tcp://127.0.0.1:10500)")
        return Endpoint("tcp", host=parts.hostname, port=port, raw=raw)
    if parts.scheme == "stdio":
        if parts.netloc or parts.path not in ("", "/"):
            raise DaemonError(f"{uri}: expected stdio:// with no path")
        return Endpoint("stdio", raw=raw)
    raise DaemonError(f"{uri}: expected a unix://, tcp:// or stdio:// URI, got scheme {parts.scheme!r}")


def default_uri() -> str:
    """``$EDGE_DENOISE_URI``, else a socket in ``$XDG_RUNTIME_DIR``, else ``/run/edge-denoise/edge-denoise.sock``."""
    env = os.environ.get("EDGE_DENOISE_URI")
    if env:
        return env
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    return f"unix://{runtime}/edge-denoise.sock" if runtime else "unix:///run/edge-denoise/edge-denoise.sock"


def control_for(ep: Endpoint) -> Endpoint | None:
    """Default control endpoint of a serve endpoint: ``X.sock`` -> ``X.control.sock``; TCP port + 1 on loopback."""
    if ep.scheme == "unix":
        base = ep.path[:-5] if ep.path.endswith(".sock") else ep.path
        return Endpoint("unix", path=base + ".control.sock")
    if ep.scheme == "tcp":
        return Endpoint("tcp", host="127.0.0.1" if not ep.loopback else ep.host, port=ep.port + 1)
    return None


def open_socket(ep: Endpoint, timeout: float) -> socket.socket:
    """A connected blocking socket for a unix:// or tcp:// endpoint."""
    try:
        if ep.scheme == "unix":
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(timeout)
            s.connect(ep.path)
            return s
        if ep.scheme == "tcp":
            s = socket.create_connection((ep.host, ep.port), timeout=timeout)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return s
    except OSError as exc:
        raise DaemonError(f"cannot connect to {ep} ({exc.strerror or exc})") from None
    raise DaemonError(f"{ep}: expected a unix:// or tcp:// URI to connect to")


# -- process figures from /proc -----------------------------------------------------------------------
def process_figures() -> dict[str, Any]:
    """CPU seconds, RSS and threads of this process, read from /proc/self (os.times() where there is none)."""
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
    return fig


# -- one stream -----------------------------------------------------------------------------------------
class PcmStream:
    """One connection's denoising stream: s16le mono in, delay-compensated s16le out (same total length).

    Output sample ``k`` is the denoised input sample ``k`` (the first ``latency_samples`` of the model's
    output are dropped and ``finish`` flushes the rest), exactly as ``edge-denoise denoise`` does offline.
    Not thread-safe: one call at a time (the daemon never has two chunks of a connection in flight).
    """

    def __init__(self, bundle: Bundle, options: Options):
        self.den = StreamingDenoiser(bundle, options)
        self.bundle = bundle
        self.rate = bundle.sample_rate
        self._to_drop = self.den.latency_samples
        self.samples_in = 0
        self.samples_out = 0
        self.compute_s = 0.0
        self.chunks = 0
        self.deadline_misses = 0
        self._odd = b""

    def _emit(self, y: np.ndarray) -> bytes:
        if self._to_drop:
            cut = min(self._to_drop, len(y))
            y, self._to_drop = y[cut:], self._to_drop - cut
        y = y[: max(0, self.samples_in - self.samples_out)]
        self.samples_out += len(y)
        return float_to_pcm16(y)

    def feed(self, data: bytes) -> bytes:
        """PCM in (any byte count: an odd trailing byte waits for the next call) -> the PCM now ready."""
        t0 = time.perf_counter()
        if self._odd:
            data, self._odd = self._odd + data, b""
        if len(data) % 2:
            data, self._odd = data[:-1], data[-1:]
        x = pcm16_to_float(data)
        self.samples_in += len(x)
        out = self._emit(self.den.process(x))
        self.compute_s += time.perf_counter() - t0
        self.chunks += 1
        return out

    def finish(self) -> bytes:
        """Flush: the rest of the output, so that output length == input length. The stream is then spent."""
        t0 = time.perf_counter()
        out = self._emit(self.den.flush())
        self.compute_s += time.perf_counter() - t0
        return out

    @property
    def seconds(self) -> float:
        return self.samples_in / self.rate


# -- the server -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Limits:
    """What keeps the daemon alive under bad clients."""

    max_connections: int = 32
    max_message_bytes: int = 1 << 20
    """Bytes of PCM in one audio message (JSON mode) or one read (raw mode)."""
    output_buffer_bytes: int = 256 << 10
    """Bytes of answer a connection may have unsent before the server stops reading from it."""
    idle_timeout: float = 60.0
    """Seconds a connection may spend without completing a header, a payload or an output drain; 0 = never."""
    drain_timeout: float = 2.0
    """Seconds after SIGTERM during which open streams go on; then each is flushed and closed."""


class _Closed(Exception):
    """A connection ends; ``reason`` names why (counted in status), ``message`` goes to the client."""

    def __init__(self, reason: str, message: str = ""):
        super().__init__(message or reason)
        self.reason = reason
        self.message = message


class _Conn:
    """Book-keeping of one client connection (the event loop owns it; workers touch only ``stream``)."""

    def __init__(self, cid: int, peer: str, ep: Endpoint, writer: asyncio.StreamWriter):
        self.id = cid
        self.peer = peer
        self.ep = ep
        self.writer = writer
        self.task: asyncio.Task | None = None
        self.stream: PcmStream | None = None
        self.opened = time.monotonic()
        self.phase = "header"
        self.phase_since = self.opened
        self.cancel_reason: str | None = None
        self.bytes_in = self.bytes_out = 0
        self.seconds_done = 0.0
        self.compute_done = 0.0
        self.misses_done = 0
        self.streams = 0
        self.model_sha = None
        self.end_reason = ""

    def enter(self, phase: str) -> None:
        self.phase = phase
        self.phase_since = time.monotonic()

    def figures(self) -> dict[str, Any]:
        s = self.stream
        seconds = self.seconds_done + (s.seconds if s else 0.0)
        compute = self.compute_done + (s.compute_s if s else 0.0)
        buffered = 0
        transport = self.writer.transport
        if transport is not None and not transport.is_closing():
            buffered = transport.get_write_buffer_size()
        return {"id": self.id, "peer": self.peer, "uri": str(self.ep), "mode": "raw" if self.ep.raw else "json",
                "model_sha256": s.bundle.sha256 if s else self.model_sha, "phase": self.phase,
                "age_s": round(time.monotonic() - self.opened, 3), "streams": self.streams + (1 if s else 0),
                "seconds_processed": round(seconds, 3), "compute_s": round(compute, 4),
                "real_time_factor": round(compute / seconds, 5) if seconds else None,
                "deadline_misses": self.misses_done + (s.deadline_misses if s else 0),
                "bytes_in": self.bytes_in, "bytes_out": self.bytes_out, "output_buffered_bytes": buffered,
                "reading_paused": self.phase == "drain", **({"end": self.end_reason} if self.end_reason else {})}


class Server:
    """The daemon: listeners, a shared bundle, a worker pool, per-connection streams, a control socket."""

    def __init__(self, bundle: Bundle, options: Options, endpoints: list[Endpoint], control: Endpoint | None,
                 limits: Limits, token: str | None = None, workers: int = 1, socket_mode: int = 0o660):
        self.model_path = bundle.path  # SIGHUP reloads this folder (replace its contents, then kill -HUP)
        self.options = options
        self.endpoints = endpoints
        self.control = control
        self.limits = limits
        self.token = token
        self.socket_mode = socket_mode
        self.bundle = bundle
        self.loaded_at = time.time()
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="denoise")
        self.workers = workers
        self.conns: dict[int, _Conn] = {}
        self.recent: deque[dict[str, Any]] = deque(maxlen=RECENT)
        self.totals: dict[str, Any] = {"connections": 0, "refused": 0, "streams_finished": 0,
                                       "seconds_processed": 0.0, "compute_s": 0.0, "deadline_misses": 0,
                                       "bytes_in": 0, "bytes_out": 0, "reloads": 0, "reload_failures": 0}
        self.ends: dict[str, int] = {}
        self._next_id = 0
        self._servers: list[asyncio.AbstractServer] = []
        self._unix_paths: list[str] = []
        self._stopping = False
        self._drain_deadline = 0.0
        self._done: asyncio.Event | None = None
        self._reloading = False
        self.started = time.time()

    # -- lifecycle -------------------------------------------------------------------------------------
    def run(self) -> int:
        """Serve until SIGTERM/SIGINT (or, for stdio://, until its one stream ends); 0 on a clean stop."""
        return asyncio.run(self._main())

    async def _main(self) -> int:
        loop = asyncio.get_running_loop()
        self._done = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._begin_stop, sig.name)
        loop.add_signal_handler(signal.SIGHUP, self._reload)
        stdio = [ep for ep in self.endpoints if ep.scheme == "stdio"]
        try:
            for ep in self.endpoints:
                if ep.scheme != "stdio":
                    self._servers.append(await self._listen(ep, self._client))
            if self.control is not None:
                self._servers.append(await self._listen(self.control, self._control))
            b = self.bundle
            log.info("serving on %s (control %s); model %s sha256 %s, %d workers, pid %d",
                     ", ".join(str(e) for e in self.endpoints), self.control or "none",
                     b.name, b.sha256[:12], self.workers, os.getpid())
            sweeper = asyncio.create_task(self._sweep())
            if stdio:
                await self._serve_stdio(stdio[0])
                self._begin_stop("end of stdio stream")
            await self._done.wait()
            sweeper.cancel()
            for c in list(self.conns.values()):
                if c.task is not None:
                    await asyncio.gather(c.task, return_exceptions=True)
        finally:
            for srv in self._servers:
                srv.close()
            for path in self._unix_paths:
                try:
                    os.unlink(path)
                except OSError:
                    pass
            self.pool.shutdown(wait=True)
        log.info("stopped: %d connections served, %.1f s of audio", self.totals["connections"],
                 self.totals["seconds_processed"])
        return 0

    async def _listen(self, ep: Endpoint, handler) -> asyncio.AbstractServer:
        async def on_connect(reader, writer):
            await handler(reader, writer, ep)

        try:
            if ep.scheme == "unix":
                _clear_stale_socket(ep.path)
                srv = await asyncio.start_unix_server(on_connect, path=ep.path, limit=HEADER_LIMIT)
                os.chmod(ep.path, self.socket_mode)
                self._unix_paths.append(ep.path)
                return srv
            return await asyncio.start_server(on_connect, host=ep.host, port=ep.port, limit=HEADER_LIMIT,
                                              reuse_address=True)
        except OSError as exc:
            raise DaemonError(f"cannot listen on {ep} ({exc.strerror or exc})") from None

    def _begin_stop(self, why: str) -> None:
        if self._stopping:
            return
        self._stopping = True
        self._drain_deadline = time.monotonic() + self.limits.drain_timeout
        log.info("%s: no new connections; %d open stream(s) end within %.1f s", why, len(self.conns),
                 self.limits.drain_timeout)
        for srv in self._servers:
            srv.close()
        self._check_done()

    def _check_done(self) -> None:
        if self._stopping and not self.conns and self._done is not None:
            self._done.set()

    async def _sweep(self) -> None:
        """Once in a while: end idle or stalled connections, and streams past the shutdown drain."""
        idle = self.limits.idle_timeout
        while True:
            await asyncio.sleep(0.1 if self._stopping else min(1.0, idle / 4) if idle else 1.0)
            now = time.monotonic()
            for c in list(self.conns.values()):
                if c.task is None or c.task.done() or c.cancel_reason or c.phase == "compute":
                    continue
                past = now - self._drain_deadline if self._stopping else -1.0
                # After the drain period a stream ends at its next message boundary; a half-sent payload
                # gets one more second (it is not in flight until it is whole).
                if past >= 0 and (c.phase in ("header", "drain") or past >= 1.0):
                    c.cancel_reason = "shutdown"
                elif idle and now - c.phase_since > idle:
                    c.cancel_reason = "stalled" if c.phase == "drain" else "idle"
                else:
                    continue
                c.task.cancel()

    def _reload(self) -> None:
        if self._reloading:
            log.warning("SIGHUP: a reload is already running; ignored")
            return
        self._reloading = True
        asyncio.get_running_loop().create_task(self._do_reload())

    async def _do_reload(self) -> None:
        try:
            bundle = await asyncio.get_running_loop().run_in_executor(self.pool, load_bundle, self.model_path)
        except EdgeError as exc:
            self.totals["reload_failures"] += 1
            log.error("SIGHUP: reload of %s failed, still serving %s (sha256 %s): %s", self.model_path,
                      self.bundle.name, self.bundle.sha256[:12], exc)
        else:
            old, self.bundle, self.loaded_at = self.bundle, bundle, time.time()
            self.totals["reloads"] += 1
            log.info("SIGHUP: reloaded %s: sha256 %s -> %s; new streams use it, running ones finish on the old",
                     self.model_path, old.sha256[:12], bundle.sha256[:12])
        finally:
            self._reloading = False

    # -- connections -----------------------------------------------------------------------------------
    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, ep: Endpoint) -> None:
        peer = _peer_name(writer, ep)
        if self._stopping or len(self.conns) >= self.limits.max_connections:
            self.totals["refused"] += 1
            why = "shutting down" if self._stopping else \
                f"server full: {len(self.conns)} connections open (--max-connections {self.limits.max_connections})"
            log.warning("refused %s: %s", peer, why)
            if not ep.raw:
                writer.write(_header({"type": "error", "message": why}))
            await _close(writer)
            return
        sock = writer.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._next_id += 1
        c = _Conn(self._next_id, peer, ep, writer)
        c.task = asyncio.current_task()
        writer.transport.set_write_buffer_limits(high=self.limits.output_buffer_bytes)
        self.conns[c.id] = c
        self.totals["connections"] += 1
        log.info("conn %d: %s on %s", c.id, peer, ep)
        try:
            await (self._raw(c, reader) if ep.raw else self._json(c, reader))
            c.end_reason = c.end_reason or "closed"
        except _Closed as exc:
            c.end_reason = exc.reason
            if exc.message:
                log.warning("conn %d (%s): %s", c.id, peer, exc.message)
                if not ep.raw:
                    writer.write(_header({"type": "error", "message": exc.message}))
        except (ConnectionError, OSError) as exc:
            c.end_reason = "disconnected"
            log.info("conn %d (%s): connection lost (%s)", c.id, peer, exc)
        finally:
            self._end_stream(c)
            del self.conns[c.id]
            self.ends[c.end_reason] = self.ends.get(c.end_reason, 0) + 1
            fig = c.figures()
            self.recent.append(fig)
            await _close(writer)
            log.info("conn %d: closed (%s): %.2f s of audio, real-time factor %s, %d deadline misses",
                     c.id, c.end_reason, fig["seconds_processed"], fig["real_time_factor"], fig["deadline_misses"])
            self._check_done()

    def _end_stream(self, c: _Conn) -> None:
        s = c.stream
        if s is None:
            return
        c.stream = None
        c.model_sha = s.bundle.sha256
        c.seconds_done += s.seconds
        c.compute_done += s.compute_s
        c.misses_done += s.deadline_misses
        c.streams += 1
        t = self.totals
        t["streams_finished"] += 1
        t["seconds_processed"] += s.seconds
        t["compute_s"] += s.compute_s
        t["deadline_misses"] += s.deadline_misses

    async def _wait(self, c: _Conn, phase: str, aw):
        """Await ``aw`` in ``phase``; the sweeper may cancel it (idle, stalled, shutdown) -> _Closed."""
        c.enter(phase)
        try:
            return await aw
        except asyncio.CancelledError:
            reason = c.cancel_reason
            if reason is None:
                raise
            task = asyncio.current_task()
            if hasattr(task, "uncancel"):  # Python >= 3.11 counts cancellations
                task.uncancel()
            c.cancel_reason = None
            if reason == "shutdown":
                raise _Closed("shutdown") from None
            if reason == "stalled":
                raise _Closed("stalled", f"output not read for {self.limits.idle_timeout:g} s "
                                         "(--idle-timeout); closing") from None
            raise _Closed("idle", f"expected a message within {self.limits.idle_timeout:g} s (--idle-timeout), "
                                  f"got none while waiting for a {phase}") from None
        except asyncio.IncompleteReadError as exc:
            if exc.partial or phase == "payload" or c.stream is not None:
                raise _Closed("disconnected", "") from None
            raise _Closed("closed", "") from None

    async def _send(self, c: _Conn, *parts: bytes) -> None:
        for p in parts:
            if p:
                c.writer.write(p)
                c.bytes_out += len(p)
        self.totals["bytes_out"] += sum(len(p) for p in parts)
        # Backpressure: while the client has not read its answers we do not read its next message.
        await self._wait(c, "drain", c.writer.drain())

    async def _compute(self, c: _Conn, fn, *args) -> bytes:
        loop = asyncio.get_running_loop()
        return await self._wait(c, "compute", loop.run_in_executor(self.pool, fn, *args))

    async def _chunk(self, c: _Conn, data: bytes) -> bytes:
        """Denoise one received chunk off the loop; count a deadline miss if it took longer than its audio."""
        t0 = time.monotonic()
        out = await self._compute(c, c.stream.feed, data)
        if time.monotonic() - t0 > len(data) / (2 * c.stream.rate):
            c.stream.deadline_misses += 1
        return out

    def _check_token(self, given: Any) -> None:
        if self.token is None:
            return
        if not isinstance(given, str) or not hmac.compare_digest(given.encode(), self.token.encode()):
            raise _Closed("auth", "expected the server's token in the first message (\"token\": ...), got "
                                  + ("none" if given is None else "a wrong one"))

    async def _json(self, c: _Conn, reader: asyncio.StreamReader) -> None:
        try:
            await self._json_messages(c, reader)
        except _Closed as exc:
            # Shutdown ends a running stream like a stop: what was received is answered, flushed, counted.
            if exc.reason == "shutdown" and c.stream is not None:
                await self._stop_stream(c, "shutdown")
            raise

    async def _json_messages(self, c: _Conn, reader: asyncio.StreamReader) -> None:
        first = True
        while True:
            if self._stopping and time.monotonic() >= self._drain_deadline:
                raise _Closed("shutdown")
            try:
                line = await self._wait(c, "header", reader.readuntil(b"\n"))
            except (asyncio.LimitOverrunError, ValueError):
                raise _Closed("garbage", f"expected a JSON header line of at most {HEADER_LIMIT} bytes ending in "
                                         "\\n, got more bytes without a newline") from None
            c.bytes_in += len(line)
            msg = _parse_header(line)
            if first:
                self._check_token(msg.get("token"))
                first = False
            kind = msg["type"]
            if kind == "describe":
                await self._send(c, _header(self._describe()))
            elif kind == "start":
                if c.stream is not None:
                    raise _Closed("protocol", "expected audio or stop, got start (a stream is already running)")
                b = self.bundle  # a SIGHUP reload swaps self.bundle; this stream keeps b to its end
                rate = self._check_start(msg, b)
                c.stream = await self._compute(c, PcmStream, b, self.options)
                await self._send(c, _header({"type": "started", "rate": rate, "width": 2, "channels": 1,
                                             "model": b.name, "sha256": b.sha256,
                                             "latency_samples": b.latency_samples}))
            elif kind == "audio":
                n = msg.get("bytes")
                if c.stream is None:
                    raise _Closed("protocol", "expected start before audio, got audio")
                if not isinstance(n, int) or isinstance(n, bool) or n < 0 or n % 2:
                    raise _Closed("protocol", f"expected \"bytes\": an even byte count >= 0 (s16le mono), got {n!r}")
                if n > self.limits.max_message_bytes:
                    raise _Closed("too_large", f"audio message of {n} bytes exceeds --max-message-bytes "
                                               f"{self.limits.max_message_bytes}; send smaller chunks")
                data = await self._wait(c, "payload", reader.readexactly(n))
                c.bytes_in += n
                self.totals["bytes_in"] += n
                out = await self._chunk(c, data)
                await self._send(c, _header({"type": "audio", "bytes": len(out)}), out)
            elif kind == "stop":
                if c.stream is None:
                    raise _Closed("protocol", "expected start before stop, got stop")
                await self._stop_stream(c, None)
            else:
                raise _Closed("protocol", f"expected a message type describe, start, audio or stop, got {kind!r}")

    async def _stop_stream(self, c: _Conn, reason: str | None) -> None:
        tail = await self._compute(c, c.stream.finish)
        done = {"type": "done", "samples": c.stream.samples_in, **({"reason": reason} if reason else {})}
        self._end_stream(c)
        await self._send(c, _header({"type": "audio", "bytes": len(tail)}), tail, _header(done))

    @staticmethod
    def _check_start(msg: dict[str, Any], bundle: Bundle) -> int:
        rate = msg.get("rate", bundle.sample_rate)
        width = msg.get("width", 2)
        channels = msg.get("channels", 1)
        if (rate, width, channels) != (bundle.sample_rate, 2, 1):
            raise _Closed("protocol", f"expected rate {bundle.sample_rate}, width 2, channels 1 "
                                      f"(s16le mono at the model rate), got rate {rate!r}, width {width!r}, "
                                      f"channels {channels!r}")
        return rate

    async def _raw(self, c: _Conn, reader: asyncio.StreamReader) -> None:
        if self.token is not None:
            try:
                line = await self._wait(c, "header", reader.readuntil(b"\n"))
            except (asyncio.LimitOverrunError, ValueError):
                raise _Closed("auth", "expected a token line first") from None
            self._check_token(line.rstrip(b"\r\n").decode("utf-8", "replace"))
        c.stream = await self._compute(c, PcmStream, self.bundle, self.options)
        size = min(RAW_READ, self.limits.max_message_bytes)
        while True:
            if self._stopping and time.monotonic() >= self._drain_deadline:
                break
            try:
                data = await self._wait(c, "header", reader.read(size))
            except _Closed as exc:
                if exc.reason != "shutdown":
                    raise
                data = b""
            if not data:
                break
            c.bytes_in += len(data)
            self.totals["bytes_in"] += len(data)
            await self._send(c, await self._chunk(c, data))
        tail = await self._compute(c, c.stream.finish)
        self._end_stream(c)
        await self._send(c, tail)
        if c.writer.can_write_eof():
            c.writer.write_eof()
        c.end_reason = "shutdown" if self._stopping else "eof"

    def _describe(self) -> dict[str, Any]:
        from . import __version__

        b = self.bundle
        return {"type": "describe", "model": b.name, "sha256": b.sha256, "family": b.family,
                "sample_rate": b.sample_rate, "block_shift": b.block_shift, "latency_samples": b.latency_samples,
                "quantization": b.quantization, "version": __version__, "protocol": PROTOCOL,
                "max_message_bytes": self.limits.max_message_bytes}

    async def _serve_stdio(self, ep: Endpoint) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=HEADER_LIMIT)
        rfile, _ = _pipe_fd(0, "r")
        wfile, pump = _pipe_fd(1, "w")
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), rfile)
        wt, wp = await loop.connect_write_pipe(asyncio.streams.FlowControlMixin, wfile)
        writer = asyncio.StreamWriter(wt, wp, reader, loop)
        await self._client(reader, writer, ep)
        if pump is not None:  # stdout is a regular file: let the copying thread finish it
            await loop.run_in_executor(None, pump.join, 10.0)

    # -- control -------------------------------------------------------------------------------------------
    async def _control(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, ep: Endpoint) -> None:
        try:
            line = await asyncio.wait_for(reader.readuntil(b"\n"), 5.0)
            msg = _parse_header(line)
            if self.token is not None and not ep.loopback:
                given = msg.get("token")
                if not isinstance(given, str) or not hmac.compare_digest(given.encode(), self.token.encode()):
                    raise _Closed("auth", "expected the server's token in the status request")
            if msg["type"] != "status":
                raise _Closed("protocol", f"expected {{\"type\": \"status\"}}, got type {msg['type']!r}")
            writer.write(_header(self.status()))
        except _Closed as exc:
            writer.write(_header({"type": "error", "message": exc.message}))
        except (asyncio.TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError,
                ConnectionError):
            pass
        await _close(writer)

    def status(self) -> dict[str, Any]:
        """Live figures: every open stream, the last closed ones, totals, process CPU/RSS, the model."""
        from . import __version__

        b = self.bundle
        streams = [c.figures() for c in self.conns.values()]
        t = dict(self.totals)
        t["seconds_processed"] = round(t["seconds_processed"] + sum(s["seconds_processed"] for s in streams), 3)
        t["compute_s"] = round(t["compute_s"] + sum(s["compute_s"] for s in streams), 4)
        t["deadline_misses"] += sum(s["deadline_misses"] for s in streams)
        t["open"] = len(streams)
        t["ends"] = dict(self.ends)
        return {"type": "status", "version": __version__, "pid": os.getpid(),
                "uptime_s": round(time.time() - self.started, 3), "stopping": self._stopping,
                "uris": [str(e) for e in self.endpoints], "workers": self.workers,
                "limits": {k: getattr(self.limits, k) for k in Limits.__dataclass_fields__},
                "model": {"name": b.name, "sha256": b.sha256, "path": self.model_path, "family": b.family,
                          "sample_rate": b.sample_rate, "latency_samples": b.latency_samples,
                          "loaded_at": self.loaded_at},
                "process": process_figures(), "totals": t, "streams": streams, "recent": list(self.recent)}


# -- helpers --------------------------------------------------------------------------------------------
def _header(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode() + b"\n"


def _parse_header(line: bytes) -> dict[str, Any]:
    try:
        msg = json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError):
        shown = line[:40]
        raise _Closed("garbage", f"expected a JSON header line such as {{\"type\":\"start\"}}, got {shown!r}"
                                 + ("..." if len(line) > 40 else "")) from None
    if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
        raise _Closed("garbage", f"expected a JSON object with a string \"type\", got {str(msg)[:60]}")
    return msg


def _peer_name(writer: asyncio.StreamWriter, ep: Endpoint) -> str:
    peer = writer.get_extra_info("peername")
    if isinstance(peer, tuple):
        return f"{peer[0]}:{peer[1]}"
    return ep.scheme if not peer else str(peer)


async def _close(writer: asyncio.StreamWriter) -> None:
    try:
        writer.close()
        await asyncio.wait_for(writer.wait_closed(), 1.0)
    except (OSError, asyncio.TimeoutError, ConnectionError, NotImplementedError):
        pass  # NotImplementedError: a stdio pipe writer has no close waiter


def _clear_stale_socket(path: str) -> None:
    """Remove a socket file left by a dead server; refuse to steal a live one or to remove a non-socket."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise DaemonError(f"{path}: exists and is not a socket; expected a free path for unix://{path}")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError:
        os.unlink(path)
        return
    finally:
        probe.close()
    raise DaemonError(f"{path}: another server is listening there; stop it or choose another --uri")


def _pipe_fd(fd: int, mode: str) -> tuple[Any, threading.Thread | None]:
    """A file asyncio can watch: the fd itself if it is a pipe/socket/tty, else a pipe copied by a thread."""
    kind = os.fstat(fd).st_mode
    if stat.S_ISFIFO(kind) or stat.S_ISSOCK(kind) or stat.S_ISCHR(kind):
        return os.fdopen(fd, mode + "b", buffering=0, closefd=False), None
    r, w = os.pipe()

    def pump(src: int, dst: int) -> None:
        try:
            while True:
                data = os.read(src, 65536)
                if not data:
                    break
                view = memoryview(data)
                while view:
                    view = view[os.write(dst, view):]
        except OSError:
            pass
        finally:
            os.close(w if mode == "r" else r)

    # A regular file is always "ready", which asyncio pipes refuse; a thread copies it through a pipe.
    t = threading.Thread(target=pump, args=((fd, w) if mode == "r" else (r, fd)), daemon=True)
    t.start()
    return os.fdopen(r if mode == "r" else w, mode + "b", buffering=0), t


# -- CLI ------------------------------------------------------------------------------------------------
def _positive(kind, name):
    def conv(text: str):
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name}: expected a {kind.__name__}, got {text!r}") from None
        if v < 0:
            raise argparse.ArgumentTypeError(f"{name}: expected >= 0, got {text}")
        return v
    return conv


def register(sub) -> None:
    from .check import add_check_option
    from .cmd_denoise import add_model_options

    p = sub.add_parser("serve", help="run the denoising daemon (foreground; one stream per connection)",
                       description="Serve denoising streams on unix://, tcp:// or stdio:// URIs. JSON mode: a JSON "
                                   "header line, then PCM (see docs/daemon.md); ?mode=raw: s16le mono PCM in, "
                                   "denoised PCM out. Runs in the foreground and logs to stderr; SIGTERM drains and "
                                   "exits 0, SIGHUP reloads the model.")
    add_model_options(p)
    add_check_option(p, default=True)
    p.add_argument("--uri", action="append", default=None, metavar="URI",
                   help="where to listen; repeat for several (default: $EDGE_DENOISE_URI, else "
                        "unix://$XDG_RUNTIME_DIR/edge-denoise.sock, else unix:///run/edge-denoise/edge-denoise.sock)")
    p.add_argument("--control", default=None, metavar="URI",
                   help="control socket for `edge-denoise status` (default: from the first --uri: X.sock -> "
                        "X.control.sock, tcp port + 1 on loopback; 'none' to disable)")
    p.add_argument("--token", default=os.environ.get("EDGE_DENOISE_TOKEN"),
                   help="shared secret clients must send; required for a non-loopback tcp:// bind "
                        "(default: $EDGE_DENOISE_TOKEN)")
    p.add_argument("--max-connections", type=_positive(int, "--max-connections"), default=Limits.max_connections,
                   help=f"open client connections at most (default: {Limits.max_connections})")
    p.add_argument("--max-message-bytes", type=_positive(int, "--max-message-bytes"),
                   default=Limits.max_message_bytes,
                   help=f"bytes of PCM in one audio message (default: {Limits.max_message_bytes})")
    p.add_argument("--output-buffer-bytes", type=_positive(int, "--output-buffer-bytes"),
                   default=Limits.output_buffer_bytes,
                   help="unsent answer bytes per connection before the server stops reading from it "
                        f"(default: {Limits.output_buffer_bytes})")
    p.add_argument("--idle-timeout", type=_positive(float, "--idle-timeout"), default=Limits.idle_timeout,
                   help="seconds without a complete message or output drain before a connection is closed; "
                        f"0 = never (default: {Limits.idle_timeout:g})")
    p.add_argument("--drain-timeout", type=_positive(float, "--drain-timeout"), default=Limits.drain_timeout,
                   help="seconds open streams go on after SIGTERM before each is flushed and closed "
                        f"(default: {Limits.drain_timeout:g})")
    p.add_argument("--workers", type=_positive(int, "--workers"), default=None,
                   help="inference threads (default: the CPU cores this process may use)")
    p.add_argument("--socket-mode", type=lambda s: int(s, 8), default=0o660,
                   help="permissions of unix sockets, octal (default: 660)")
    p.add_argument("--quiet", "-q", action="store_true", help="log warnings and errors only")
    p.set_defaults(func=run)

    s = sub.add_parser("status", help="print the live figures of a running daemon as JSON",
                       description="Connect to a daemon's control socket and print its figures as JSON: streams "
                                   "(seconds, real-time factor, deadline misses), totals, CPU, RSS, model.")
    s.add_argument("--uri", default=None, help="the daemon's serve URI; its control URI is derived from it "
                                                "(default: as for serve)")
    s.add_argument("--control", default=None, metavar="URI", help="the control URI itself (overrides --uri)")
    s.add_argument("--token", default=os.environ.get("EDGE_DENOISE_TOKEN"),
                   help="token, if the control socket is not on loopback (default: $EDGE_DENOISE_TOKEN)")
    s.add_argument("--timeout", type=_positive(float, "--timeout"), default=5.0, help="seconds (default: 5)")
    s.set_defaults(func=run_status)


def _endpoints(args) -> tuple[list[Endpoint], Endpoint | None]:
    eps = [parse_uri(u) for u in (args.uri or [default_uri()])]
    if sum(e.scheme == "stdio" for e in eps) > 1:
        raise DaemonError("expected at most one stdio:// URI, got several")
    if args.control == "none":
        control = None
    elif args.control:
        control = parse_uri(args.control)
        if control.scheme == "stdio" or control.raw:
            raise DaemonError(f"--control {args.control}: expected a unix:// or tcp:// URI without ?mode")
    else:
        control = next((control_for(e) for e in eps if e.scheme != "stdio"), None)
    for e in eps + ([control] if control else []):
        if e.scheme == "tcp" and not e.loopback and not args.token:
            raise DaemonError(f"{e} is not a loopback address: anyone on the network could use it; "
                              "expected --token (or $EDGE_DENOISE_TOKEN), got none")
    return eps, control


def run(args) -> int:
    from .check import check_at_start
    from .cmd_denoise import model_and_options

    eps, control = _endpoints(args)
    if args.workers == 0:
        raise DaemonError("--workers: expected at least 1 inference thread, got 0")
    bundle, options = model_and_options(args)
    if not check_at_start(args, bundle, options):
        return 1
    workers = args.workers or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                               else os.cpu_count() or 1)
    limits = Limits(max_connections=args.max_connections, max_message_bytes=args.max_message_bytes,
                    output_buffer_bytes=args.output_buffer_bytes, idle_timeout=args.idle_timeout,
                    drain_timeout=args.drain_timeout)
    server = Server(bundle, options, eps, control, limits, token=args.token, workers=workers,
                    socket_mode=args.socket_mode)
    return server.run()


def request_status(ep: Endpoint, token: str | None = None, timeout: float = 5.0) -> dict[str, Any]:
    """Ask a daemon's control endpoint for its figures."""
    with open_socket(ep, timeout) as s:
        s.sendall(_header({"type": "status", **({"token": token} if token else {})}))
        f = s.makefile("rb")
        try:
            line = f.readline(1 << 24)
        except OSError as exc:
            raise DaemonError(f"{ep}: no answer ({exc})") from None
    if not line:
        raise DaemonError(f"{ep}: closed without an answer; is it a control socket (--control)?")
    msg = json.loads(line)
    if msg.get("type") == "error":
        raise DaemonError(f"{ep}: {msg.get('message')}")
    return msg


def run_status(args) -> int:
    if args.control:
        ep = parse_uri(args.control)
    else:
        serve = parse_uri(args.uri or default_uri())
        ep = control_for(serve)
        if ep is None:
            raise DaemonError(f"{serve} has no default control socket; pass --control URI")
    json.dump(request_status(ep, args.token, args.timeout), sys.stdout, indent=1)
    sys.stdout.write("\n")
    return 0


# -- a small blocking client (tests, bench, and Python users) ------------------------------------------
class Client:
    """Blocking JSON-mode client: ``describe()``, ``start()``, ``send(pcm) -> pcm``, ``stop() -> pcm``.

    Each audio message is answered by exactly one audio message (possibly empty), so a client may go in
    lock step; ``stop`` returns the flushed tail, after which the output length equals the input length.
    """

    def __init__(self, uri: str, token: str | None = None, timeout: float = 10.0):
        self.ep = parse_uri(uri)
        self.sock = open_socket(self.ep, timeout)
        self._f = self.sock.makefile("rb")
        self._token = token
        self.done: dict[str, Any] | None = None

    def _send(self, msg: dict[str, Any], payload: bytes = b"") -> None:
        if self._token is not None:
            msg = {**msg, "token": self._token}
            self._token = None
        self.sock.sendall(_header(msg) + payload)

    def read(self) -> tuple[dict[str, Any], bytes]:
        """The next message from the server and its payload; DaemonError for an error or a closed socket."""
        line = self._f.readline(HEADER_LIMIT)
        if not line:
            raise DaemonError(f"{self.ep}: connection closed by the server")
        msg = json.loads(line)
        if msg.get("type") == "error":
            raise DaemonError(f"{self.ep}: server error: {msg.get('message')}")
        payload = b""
        if msg.get("type") == "audio":
            payload = self._f.read(msg["bytes"])
            if len(payload) != msg["bytes"]:
                raise DaemonError(f"{self.ep}: expected {msg['bytes']} bytes of audio, got {len(payload)}")
        return msg, payload

    def describe(self) -> dict[str, Any]:
        self._send({"type": "describe"})
        return self.read()[0]

    def start(self, rate: int = 16000) -> dict[str, Any]:
        self._send({"type": "start", "rate": rate, "width": 2, "channels": 1})
        return self.read()[0]

    def send(self, pcm: bytes) -> bytes:
        self._send({"type": "audio", "bytes": len(pcm)}, pcm)
        msg, payload = self.read()
        if msg.get("type") == "done":  # the server ended the stream (shutdown): no tail follows
            self.done = msg
        return payload

    def stop(self) -> bytes:
        self._send({"type": "stop"})
        return self.finish()

    def finish(self) -> bytes:
        """Read to the ``done`` message; returns the audio that came before it."""
        out = []
        while True:
            msg, payload = self.read()
            out.append(payload)
            if msg.get("type") == "done":
                self.done = msg
                return b"".join(out)

    def close(self) -> None:
        self._f.close()
        self.sock.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
