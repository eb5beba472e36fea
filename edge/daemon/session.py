"""One client connection: its protocol loop (JSON headers or raw PCM), its stream, deadlines and figures."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from ..bundle import Bundle
from .batching import BatchedStream, BatchWorker
from .pcm import PcmStream, StreamWorkers
from .protocol import HEADER_LIMIT, RAW_READ, Closed, check_token, encode, parse_header
from .uri import Endpoint

if TYPE_CHECKING:
    from .server import Server

log = logging.getLogger("edge.daemon")

ABORT_AT_ONCE = {"stalled"}
"""End reasons whose connection is aborted without waiting for its output to drain (it does not read)."""


class Session:
    """A connection's state; the event loop owns it, scheduler threads touch only ``stream``."""

    def __init__(self, server: Server, cid: int, peer: str, peer_key: str, ep: Endpoint,
                 reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.server = server
        self.limits = server.limits
        self.id = cid
        self.peer = peer
        self.peer_key = peer_key
        self.ep = ep
        self.reader = reader
        self.writer = writer
        self.task: asyncio.Task | None = None
        self.stream: PcmStream | BatchedStream | None = None
        self.backend: StreamWorkers | BatchWorker | None = None
        """What runs the stream: per-stream workers, or the batch worker (``Server.backend_for``)."""
        self.opened = time.monotonic()
        self.phase = "header"
        self.deadline: float | None = None
        self.deadline_reason = "idle"
        self.cancel_reason: str | None = None
        self.bytes_in = self.bytes_out = 0
        self.seconds_done = self.compute_done = 0.0
        self.misses_done = self.streams = 0
        self.model_sha = None
        self.end_reason = ""
        self._job: asyncio.Future | None = None

    # -- deadlines: the server's sweeper calls expire(); wait() turns its cancellation into Closed ----------
    def expire(self, now: float) -> bool:
        """Cancel the connection's task if its deadline (or the raw-mode byte rate) has passed."""
        if self.task is None or self.task.done() or self.cancel_reason or self.phase == "compute":
            return False
        reason = None
        if self.deadline is not None and now > self.deadline:
            reason = self.deadline_reason
        elif self.ep.raw and self.phase == "read" and self._raw_too_slow(now):
            reason = "slow"
        if reason is None:
            return False
        self.cancel_reason = reason
        self.task.cancel()
        return True

    def _raw_too_slow(self, now: float) -> bool:
        lim = self.limits
        grace = now - self.opened - lim.header_timeout
        return lim.min_rate > 0 and grace > 0 and self.bytes_in < lim.min_rate * grace

    async def wait(self, phase: str, aw, seconds: float = 0.0, reason: str = "idle"):
        """Await ``aw`` in ``phase`` for at most ``seconds`` (0 = no limit); past it -> Closed(reason)."""
        self.phase = phase
        self.deadline = time.monotonic() + seconds if seconds else None
        self.deadline_reason = reason
        try:
            return await aw
        except asyncio.CancelledError:
            why = self.cancel_reason
            if why is None:
                raise
            task = asyncio.current_task()
            if task is not None and hasattr(task, "uncancel"):  # Python >= 3.11 counts cancellations
                task.uncancel()
            self.cancel_reason = None
            raise self._closed_for(why, phase) from None
        except asyncio.IncompleteReadError as exc:
            if exc.partial or phase == "payload" or self.stream is not None:
                raise Closed("disconnected") from None
            raise Closed("closed") from None
        finally:
            self.deadline = None

    def _closed_for(self, why: str, phase: str) -> Closed:
        lim = self.limits
        if why == "shutdown":
            return Closed("shutdown")
        if why == "stalled":
            return Closed("stalled", f"output not read for {lim.idle_timeout:g} s (--idle-timeout); closing")
        if why == "slow":
            return Closed("slow", f"too slow: a header must arrive whole within {lim.header_timeout:g} s of its "
                                  f"first byte and data at >= {lim.min_rate:g} bytes/s (--header-timeout, "
                                  f"--min-rate); got less while waiting for a {phase}")
        return Closed("idle", f"expected a message within {lim.idle_timeout:g} s (--idle-timeout), "
                              f"got none while waiting for a {phase}")

    # -- I/O ----------------------------------------------------------------------------------------------------
    async def send(self, *parts: bytes) -> None:
        data = b"".join(parts)  # one write: one send() for a header and its audio
        self.writer.write(data)
        self.bytes_out += len(data)
        self.server.totals["bytes_out"] += len(data)
        # Backpressure: while the client has not read its answers we do not read its next message. When the
        # kernel took every byte there is nothing to wait for (a closed connection shows at the next read).
        if self.writer.transport.get_write_buffer_size() or self.writer.transport.is_closing():
            await self.wait("drain", self.writer.drain(), self.limits.idle_timeout, "stalled")

    async def read_header(self) -> bytes:
        """One header line: idle_timeout for its first byte, then header_timeout for the whole line."""
        lim = self.limits
        first = await self.wait("header", self.reader.readexactly(1), lim.idle_timeout, "idle")
        if first == b"\n":
            return first
        try:
            rest = await self.wait("header", self.reader.readuntil(b"\n"), lim.header_timeout, "slow")
        except (asyncio.LimitOverrunError, ValueError):
            raise Closed("garbage", f"expected a JSON header line of at most {HEADER_LIMIT} bytes ending in "
                                    "\\n, got more bytes without a newline") from None
        return first + rest

    async def compute(self, fut: asyncio.Future):
        self._job = fut
        return await self.wait("compute", fut)

    async def chunk(self, data: bytes) -> bytes:
        """Denoise one received chunk (in pieces, fairly with the other streams); count a deadline miss if it
        took longer than its audio."""
        s = self.stream
        t0 = time.monotonic()
        out = await self.compute(self.backend.feed(s, data))
        s.chunks += 1
        if time.monotonic() - t0 > len(data) / (2 * s.rate):
            s.deadline_misses += 1
        return out

    async def new_stream(self, bundle: Bundle) -> None:
        self.backend = self.server.backend_for(bundle)
        self.stream = await self.compute(self.backend.acquire(bundle))

    def end_stream(self) -> None:
        """Count the running stream into the totals and give it back to the pool (if no work of it is pending)."""
        s, self.stream = self.stream, None
        if s is None:
            return
        self.model_sha = s.bundle.sha256
        self.seconds_done += s.seconds
        self.compute_done += s.compute_s
        self.misses_done += s.deadline_misses
        self.streams += 1
        self.server.count_stream(s)
        self.backend.release(s, self._job)

    # -- the JSON protocol ----------------------------------------------------------------------------------------
    async def run_json(self) -> None:
        try:
            await self._json_messages()
        except Closed as exc:
            # Shutdown ends a running stream like a stop: what was received is answered, flushed, counted.
            if exc.reason == "shutdown" and self.stream is not None:
                await self._stop_stream("shutdown")
            raise

    async def _json_messages(self) -> None:
        first = True
        handlers = {"describe": self._on_describe, "start": self._on_start, "audio": self._on_audio,
                    "stop": self._on_stop, "status": self._on_status}
        while True:
            if self.server.past_drain():
                raise Closed("shutdown")
            line = await self.read_header()
            self.bytes_in += len(line)
            msg = parse_header(line)
            if first:
                check_token(self.server.token, msg.get("token"))
                first = False
            handler = handlers.get(msg["type"])
            if handler is None:
                raise Closed("protocol", "expected a message type describe, start, audio, stop or status, "
                                         f"got {msg['type']!r}")
            await handler(msg)

    async def _on_describe(self, msg: dict[str, Any]) -> None:
        await self.send(encode(self.server.describe()))

    async def _on_status(self, msg: dict[str, Any]) -> None:
        await self.send(encode(self.server.status()))

    async def _on_start(self, msg: dict[str, Any]) -> None:
        if self.stream is not None:
            raise Closed("protocol", "expected audio or stop, got start (a stream is already running)")
        b = self.server.bundle  # a SIGHUP reload swaps server.bundle; this stream keeps b to its end
        rate = msg.get("rate", b.sample_rate)
        width, channels = msg.get("width", 2), msg.get("channels", 1)
        if (rate, width, channels) != (b.sample_rate, 2, 1):
            raise Closed("protocol", f"expected rate {b.sample_rate}, width 2, channels 1 (s16le mono at the "
                                     f"model rate), got rate {rate!r}, width {width!r}, channels {channels!r}")
        await self.new_stream(b)
        await self.send(encode({"type": "started", "rate": rate, "width": 2, "channels": 1, "model": b.name,
                                "sha256": b.sha256, "latency_samples": b.latency_samples}))

    async def _on_audio(self, msg: dict[str, Any]) -> None:
        n, lim = msg.get("bytes"), self.limits
        if self.stream is None:
            raise Closed("protocol", "expected start before audio, got audio")
        if not isinstance(n, int) or isinstance(n, bool) or n < 0 or n % 2:
            raise Closed("protocol", f"expected \"bytes\": an even byte count >= 0 (s16le mono), got {n!r}")
        if n > lim.max_message_bytes:
            raise Closed("too_large", f"audio message of {n} bytes exceeds --max-message-bytes "
                                      f"{lim.max_message_bytes}; send smaller chunks")
        seconds = lim.header_timeout + (n / lim.min_rate if lim.min_rate else 0.0)
        if lim.idle_timeout:
            seconds = min(seconds, lim.idle_timeout) if lim.min_rate else lim.idle_timeout
        elif not lim.min_rate:
            seconds = 0.0
        data = await self.wait("payload", self.reader.readexactly(n), seconds, "slow")
        self.bytes_in += n
        self.server.totals["bytes_in"] += n
        out = await self.chunk(data)
        await self.send(encode({"type": "audio", "bytes": len(out)}), out)

    async def _on_stop(self, msg: dict[str, Any]) -> None:
        if self.stream is None:
            raise Closed("protocol", "expected start before stop, got stop")
        await self._stop_stream(None)

    async def _stop_stream(self, reason: str | None) -> None:
        tail = await self.compute(self.backend.finish(self.stream))
        done = {"type": "done", "samples": self.stream.samples_in, **({"reason": reason} if reason else {})}
        self.end_stream()
        await self.send(encode({"type": "audio", "bytes": len(tail)}), tail, encode(done))

    # -- raw mode ---------------------------------------------------------------------------------------------------
    async def run_raw(self) -> None:
        if self.server.token is not None:
            try:
                line = await self.wait("header", self.reader.readuntil(b"\n"), self.limits.header_timeout, "slow")
            except (asyncio.LimitOverrunError, ValueError):
                raise Closed("auth", "expected a token line first") from None
            check_token(self.server.token, line.rstrip(b"\r\n").decode("utf-8", "replace"), "first line")
        await self.new_stream(self.server.bundle)
        size = min(RAW_READ, self.limits.max_message_bytes)
        while not self.server.past_drain():
            try:
                data = await self.wait("read", self.reader.read(size), self.limits.idle_timeout, "idle")
            except Closed as exc:
                if exc.reason != "shutdown":
                    raise
                data = b""
            if not data:
                break
            self.bytes_in += len(data)
            self.server.totals["bytes_in"] += len(data)
            await self.send(await self.chunk(data))
        tail = await self.compute(self.backend.finish(self.stream))
        self.end_stream()
        await self.send(tail)
        self.end_reason = "shutdown" if self.server.stopping else "eof"

    # -- the end ------------------------------------------------------------------------------------------------------
    async def close(self) -> None:
        """Release the socket for certain: a bounded graceful close, else ``abort()`` (unsent output is dropped).

        A client that does not read would otherwise keep its transport - fd and buffered output - for ever.
        """
        transport = self.writer.transport
        if self.end_reason not in ABORT_AT_ONCE and not transport.is_closing():
            # As long as a reader may lag (--idle-timeout) for our last bytes, then 1 s for its close; when the
            # server is stopping, 2 s in all (systemd's stop timeout must not pass).
            grace = 2.0 if self.server.stopping else (self.limits.idle_timeout or 30.0) + 1.0
            try:
                await asyncio.wait_for(self._close_gracefully(), grace)
            except (asyncio.TimeoutError, OSError, ConnectionError, RuntimeError):
                pass
        if transport.get_write_buffer_size():
            transport.abort()
        else:
            transport.close()
        try:
            await asyncio.wait_for(self.writer.wait_closed(), 1.0)
        except NotImplementedError:  # a stdio pipe writer has no close waiter
            pass
        except (OSError, asyncio.TimeoutError, ConnectionError):
            transport.abort()

    async def _close_gracefully(self) -> None:
        self.writer.transport.set_write_buffer_limits(high=0)  # drain() now waits for the last byte to go
        await self.writer.drain()
        if self.writer.can_write_eof():
            self.writer.write_eof()
        # Read what the client still sends until it closes, so that closing does not reset a TCP connection
        # (which could discard our last answer before the client read it).
        try:
            await asyncio.wait_for(self._discard_input(), 1.0)
        except asyncio.TimeoutError:
            pass

    async def _discard_input(self) -> None:
        while await self.reader.read(65536):
            pass

    def figures(self) -> dict[str, Any]:
        s = self.stream
        seconds = self.seconds_done + (s.seconds if s else 0.0)
        compute = self.compute_done + (s.compute_s if s else 0.0)
        transport = self.writer.transport
        buffered = transport.get_write_buffer_size() if transport is not None and not transport.is_closing() else 0
        return {"id": self.id, "peer": self.peer, "uri": str(self.ep), "mode": "raw" if self.ep.raw else "json",
                "model_sha256": s.bundle.sha256 if s else self.model_sha, "phase": self.phase,
                "age_s": round(time.monotonic() - self.opened, 3), "streams": self.streams + (1 if s else 0),
                "seconds_processed": round(seconds, 3), "compute_s": round(compute, 4),
                "real_time_factor": round(compute / seconds, 5) if seconds else None,
                "deadline_misses": self.misses_done + (s.deadline_misses if s else 0),
                "bytes_in": self.bytes_in, "bytes_out": self.bytes_out, "output_buffered_bytes": buffered,
                "reading_paused": self.phase == "drain", **({"end": self.end_reason} if self.end_reason else {})}
