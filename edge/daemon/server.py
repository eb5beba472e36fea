"""The daemon process: listeners, connection limits, signals, what runs the streams, and model reloads."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import socket
import struct
import threading
import time
from collections import deque
from dataclasses import dataclass, fields
from typing import Any

from ..batch import SECTION as BATCH_SECTION
from ..bundle import Bundle, load_bundle
from ..errors import EdgeError
from ..options import Options
from .batching import BatchedStream, BatchWorker
from .listen import Listener, bind
from .pcm import PcmStream, StreamWorkers
from .protocol import HEADER_LIMIT, PROTOCOL, Closed, encode
from .session import Session
from .status import build_status, serve_control
from .stdio import stdio_streams
from .uri import Endpoint

log = logging.getLogger("edge.daemon")

RECENT = 32
"""Closed connections kept for ``status``."""
SWEEP_S = 0.25
"""Seconds between two checks of every connection's deadline."""


@dataclass(frozen=True)
class Limits:
    """What keeps the daemon alive under bad clients."""

    max_connections: int = 32
    max_per_peer: int = 0
    """Open connections one peer (IP address, or uid on a unix socket) may hold; 0 = 3/4 of max_connections."""
    max_message_bytes: int = 1 << 20
    """Bytes of PCM in one audio message (JSON mode) or one read (raw mode)."""
    output_buffer_bytes: int = 256 << 10
    """Bytes of answer a connection may have unsent before the server stops reading from it."""
    idle_timeout: float = 60.0
    """Seconds a connection may wait before a message's first byte, or leave its answer unread; 0 = never."""
    header_timeout: float = 5.0
    """Seconds from a header's first byte to its newline (and the grace before --min-rate applies)."""
    min_rate: float = 1024.0
    """Bytes/s: the slowest a payload (or a raw-mode stream) may arrive; 0 = any rate."""
    drain_timeout: float = 2.0
    """Seconds after SIGTERM during which open streams go on; then each is flushed and closed."""

    @property
    def per_peer(self) -> int:
        return self.max_per_peer or max(1, self.max_connections - self.max_connections // 4)


def _peer(writer: asyncio.StreamWriter, ep: Endpoint) -> tuple[str, str]:
    """(a printable peer, the key the per-peer cap counts by: the IP address, or the uid on a unix socket)."""
    peer = writer.get_extra_info("peername")
    if isinstance(peer, tuple):
        return f"{peer[0]}:{peer[1]}", peer[0]
    sock = writer.get_extra_info("socket")
    if ep.scheme == "unix" and sock is not None and hasattr(socket, "SO_PEERCRED"):
        try:
            pid, uid, _ = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
            return f"unix pid {pid} uid {uid}", f"uid {uid}"
        except OSError:
            pass
    return ep.scheme, ep.scheme


BATCH_MODES = ("auto", "on", "off")
"""``--batch``: auto = batched for bundles with batch-axis graphs (``streams``), per-stream otherwise; on =
the same, but the bundle given at start must have them; off = per-stream workers only."""


def batchable(bundle: Bundle) -> bool:
    """Whether the bundle has batch-axis graphs (its manifest's ``streams`` section)."""
    return BATCH_SECTION in bundle.manifest


class Server:
    """The daemon: listeners, a shared bundle, per-connection sessions, and what runs their streams:
    per-stream worker threads, or for bundles with batch-axis graphs batched ticks on the event loop."""

    def __init__(self, bundle: Bundle, options: Options, endpoints: list[Endpoint], controls: list[Endpoint],
                 limits: Limits, token: str | None = None, workers: int = 1, socket_mode: int = 0o660,
                 socket_gid: int | None = None, batch: str = "auto", batch_wait: float = 0.0):
        self.model_path = bundle.path  # SIGHUP reloads this folder (replace its contents, then kill -HUP)
        self.options = options
        self.endpoints = endpoints
        self.controls = controls
        self.limits = limits
        self.token = token
        self.socket_mode = socket_mode
        self.socket_gid = socket_gid
        self.bundle = bundle
        self.loaded_at = time.time()
        self.workers = workers
        if batch not in BATCH_MODES:
            raise ValueError(f"batch: expected one of {BATCH_MODES}, got {batch!r}")
        self.batch = batch
        self.batch_wait = batch_wait
        self.stream_workers: StreamWorkers | None = None
        self.batcher: BatchWorker | None = None
        self.sessions: dict[int, Session] = {}
        self.recent: deque[dict[str, Any]] = deque(maxlen=RECENT)
        self.totals: dict[str, Any] = {"connections": 0, "refused": 0, "streams_finished": 0,
                                       "seconds_processed": 0.0, "compute_s": 0.0, "deadline_misses": 0,
                                       "bytes_in": 0, "bytes_out": 0, "reloads": 0, "reload_failures": 0}
        self.ends: dict[str, int] = {}
        self.listeners: list[Listener] = []
        self.stopping = False
        self.started = time.time()
        self._next_id = 0
        self._unix_paths: list[str] = []
        self._drain_deadline = 0.0
        self._done: asyncio.Event | None = None
        self._reloading = False

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
        self.stream_workers = StreamWorkers(self.workers, self.limits.max_connections, self.options)
        # What was loaded (modules, the bundle) stays: the collector no longer walks it on every full
        # collection (tens of ms that a live stream would feel as a late chunk).
        gc.freeze()
        if self.batch != "off":
            self.batcher = BatchWorker(self.options, self.batch_wait)
        try:
            self._listen_all()
            b = self.bundle
            log.info("serving on %s (control %s); model %s sha256 %s, %s, pid %d",
                     ", ".join(str(e) for e in self.endpoints), ", ".join(map(str, self.controls)) or "none",
                     b.name, b.sha256[:12], "streams batched on the event loop" if self.batched(b)
                     else f"{self.workers} per-stream workers", os.getpid())
            sweeper = asyncio.create_task(self._sweep())
            stdio = [ep for ep in self.endpoints if ep.scheme == "stdio"]
            if stdio:
                async with stdio_streams(HEADER_LIMIT) as (reader, writer):
                    await self._client(reader, writer, stdio[0])
                self._begin_stop("end of stdio stream")
            await self._done.wait()
            sweeper.cancel()
            await asyncio.gather(*(s.task for s in self.sessions.values() if s.task), return_exceptions=True)
        finally:
            self._close_listeners()
            self.stream_workers.close()
            if self.batcher is not None:
                self.batcher.close()
        log.info("stopped: %d connections served, %.1f s of audio", self.totals["connections"],
                 self.totals["seconds_processed"])
        return 0

    def _listen_all(self) -> None:
        for ep in self.endpoints:
            if ep.scheme != "stdio":
                self._listen(ep, self._client)
        for ep in self.controls:
            self._listen(ep, self._control)

    def _listen(self, ep: Endpoint, handler) -> None:
        listener = Listener(ep, bind(ep, self.socket_mode, self.socket_gid), handler)
        if ep.scheme == "unix":
            self._unix_paths.append(ep.path)
        self.listeners.append(listener)
        listener.start()

    def _close_listeners(self) -> None:
        for listener in self.listeners:
            listener.close()
        self.listeners = []
        for path in self._unix_paths:
            try:
                os.unlink(path)
            except OSError:
                pass
        self._unix_paths = []

    def _begin_stop(self, why: str) -> None:
        if self.stopping:
            return
        self.stopping = True
        self._drain_deadline = time.monotonic() + self.limits.drain_timeout
        log.info("%s: no new connections; %d open stream(s) end within %.1f s", why, len(self.sessions),
                 self.limits.drain_timeout)
        self._close_listeners()
        self._check_done()

    def _check_done(self) -> None:
        if self.stopping and not self.sessions and self._done is not None:
            self._done.set()

    def past_drain(self) -> bool:
        return self.stopping and time.monotonic() >= self._drain_deadline

    async def _sweep(self) -> None:
        """Every SWEEP_S: end connections past a deadline (idle, slow, stalled) or past the shutdown drain."""
        while True:
            await asyncio.sleep(min(SWEEP_S, 0.1) if self.stopping else SWEEP_S)
            now = time.monotonic()
            for s in list(self.sessions.values()):
                if s.phase in ("compute", "closing") or s.task is None or s.task.done() or s.cancel_reason:
                    continue
                past = now - self._drain_deadline if self.stopping else -1.0
                # After the drain period a stream ends at its next message boundary; a half-sent payload
                # gets one more second (it is not in flight until it is whole).
                if past >= 0 and (s.phase in ("header", "read", "drain") or past >= 1.0):
                    s.cancel_reason = "shutdown"
                    s.task.cancel()
                else:
                    s.expire(now)

    # -- reload: on a thread of its own, so that a slow or hung load never holds an inference worker ------
    def _reload(self) -> None:
        if self._reloading:
            log.warning("SIGHUP: a reload is already running; ignored")
            return
        self._reloading = True
        loop = asyncio.get_running_loop()

        def load() -> None:
            try:
                bundle, exc = load_bundle(self.model_path), None
            except Exception as e:
                bundle, exc = None, e
            try:
                loop.call_soon_threadsafe(self._reloaded, bundle, exc)
            except RuntimeError:  # the loop closed meanwhile (the server stopped)
                pass

        threading.Thread(target=load, name="reload", daemon=True).start()

    def _reloaded(self, bundle: Bundle | None, exc: BaseException | None) -> None:
        self._reloading = False
        if bundle is None:
            self.totals["reload_failures"] += 1
            log.error("SIGHUP: reload of %s failed, still serving %s (sha256 %s): %s", self.model_path,
                      self.bundle.name, self.bundle.sha256[:12], exc,
                      exc_info=None if isinstance(exc, EdgeError) else exc)
            return
        old, self.bundle, self.loaded_at = self.bundle, bundle, time.time()
        self.totals["reloads"] += 1
        log.info("SIGHUP: reloaded %s: sha256 %s -> %s; new streams use it, running ones finish on the old",
                 self.model_path, old.sha256[:12], bundle.sha256[:12])

    # -- connections -----------------------------------------------------------------------------------
    def _refusal(self, peer_key: str) -> str | None:
        lim = self.limits
        if self.stopping:
            return "shutting down"
        # A connection being closed holds no slot: its socket is released within seconds whatever the client does.
        live = [s for s in self.sessions.values() if s.phase != "closing"]
        if len(live) >= lim.max_connections:
            return f"server full: {len(live)} connections open (--max-connections {lim.max_connections})"
        mine = sum(1 for s in live if s.peer_key == peer_key)
        if peer_key != "stdio" and mine >= lim.per_peer:
            return f"too many connections from {peer_key}: {mine} open (--max-per-peer {lim.per_peer})"
        return None

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, ep: Endpoint) -> None:
        peer, peer_key = _peer(writer, ep)
        self._next_id += 1
        s = Session(self, self._next_id, peer, peer_key, ep, reader, writer)
        why = self._refusal(peer_key)
        if why is not None:
            self.totals["refused"] += 1
            log.warning("refused %s: %s", peer, why)
            if not ep.raw:
                writer.write(encode({"type": "error", "message": why}))
            s.end_reason = "refused"
            await s.close()
            return
        sock = writer.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.task = asyncio.current_task()
        writer.transport.set_write_buffer_limits(high=self.limits.output_buffer_bytes)
        self.sessions[s.id] = s
        self.totals["connections"] += 1
        log.info("conn %d: %s on %s", s.id, peer, ep)
        try:
            await (s.run_raw() if ep.raw else s.run_json())
            s.end_reason = s.end_reason or "closed"
        except Closed as exc:
            s.end_reason = exc.reason
            if exc.message:
                log.warning("conn %d (%s): %s", s.id, peer, exc.message)
                if not ep.raw and exc.reason not in ("stalled",):
                    writer.write(encode({"type": "error", "message": exc.message}))
        except (ConnectionError, OSError) as exc:
            s.end_reason = "disconnected"
            log.info("conn %d (%s): connection lost (%s)", s.id, peer, exc)
        finally:
            await self._end(s)

    async def _end(self, s: Session) -> None:
        s.end_stream()
        s.phase = "closing"
        self.ends[s.end_reason] = self.ends.get(s.end_reason, 0) + 1
        try:
            await s.close()
        finally:
            del self.sessions[s.id]  # only now: status counts a connection open until its socket is released
            fig = s.figures()
            self.recent.append(fig)
            log.info("conn %d: closed (%s): %.2f s of audio, real-time factor %s, %d deadline misses",
                     s.id, s.end_reason, fig["seconds_processed"], fig["real_time_factor"], fig["deadline_misses"])
            self._check_done()

    def batched(self, bundle: Bundle) -> bool:
        return self.batch != "off" and batchable(bundle)

    def backend_for(self, bundle: Bundle) -> StreamWorkers | BatchWorker:
        """What runs a new stream of ``bundle``: the batch worker where the bundle can be batched."""
        return self.batcher if self.batcher is not None and batchable(bundle) else self.stream_workers

    def count_stream(self, stream: PcmStream | BatchedStream | None) -> None:
        """Add a finished stream's figures to the totals."""
        if stream is None:
            return
        t = self.totals
        t["streams_finished"] += 1
        t["seconds_processed"] += stream.seconds
        t["compute_s"] += stream.compute_s
        t["deadline_misses"] += stream.deadline_misses

    async def _control(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, ep: Endpoint) -> None:
        await serve_control(self, reader, writer, ep)

    def describe(self) -> dict[str, Any]:
        from .. import __version__

        b = self.bundle
        return {"type": "describe", "model": b.name, "sha256": b.sha256, "family": b.family,
                "sample_rate": b.sample_rate, "block_shift": b.block_shift, "latency_samples": b.latency_samples,
                "quantization": b.quantization, "auto_level": self.options.auto_level, "version": __version__,
                "protocol": PROTOCOL, "max_message_bytes": self.limits.max_message_bytes}

    def status(self) -> dict[str, Any]:
        """Live figures: every open stream, the last closed ones, totals, process CPU/RSS, the model."""
        limits = {f.name: getattr(self.limits, f.name) for f in fields(Limits)}
        limits["max_per_peer"] = self.limits.per_peer
        return build_status(self, limits)
