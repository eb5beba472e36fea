"""Many streams per invoke in the daemon: the event loop's thread runs the batch engines.

Each tick gathers every connection with received audio waiting, gives each at most ``PIECE_BLOCKS``
hops of it, and runs them through the engine of their bundle as one batch per round
(``edge.batch.BatchEngine``: round r is hop r of every stream that has one); it scatters the outputs
back and answers each chunk whose audio is all done. A tick starts a little after the first chunk that
waits (``--batch-wait``, at most a quarter of what that chunk's deadline leaves; at once when every open
stream has audio, or few streams are open), then runs what is there; audio that arrives during a tick
goes into the next one. Opening a stream, and the zeros that flush its end, happen on the same thread.

Used by ``serve`` for bundles whose manifest has a ``streams`` section (``python -m convert.streams``),
unless ``--batch off``; other bundles go through the per-stream workers (``scheduler``).
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections import deque
from typing import Any, Callable

import numpy as np

from ..audio import float_to_pcm16, pcm16_even, pcm16_to_float
from ..batch import BatchEngine
from ..bundle import Bundle
from ..options import Options
from .scheduler import PIECE_BLOCKS, settle

WAIT_ABOVE = 4
"""Open streams up to which a tick never waits for others (the core has room: waiting only adds latency)."""
RESERVE_S = 0.006
"""Of a chunk's duration (its deadline), what is kept for the ticks ahead of it and its own; a tick waits at
most a quarter of the rest (0.5 ms for 8 ms chunks, 1 ms for 10 ms, 2 ms from 14 ms; at most --batch-wait)."""
RECENT_TICKS = 2048
"""Ticks kept for the status figures (rows and compute per tick)."""


class BatchedStream:
    """One connection's stream: its engine slot and the figures a ``PcmStream`` has (all on the loop's
    thread)."""

    def __init__(self, engine: BatchEngine, slot: int):
        self.engine = engine
        self.slot: int | None = slot
        self.bundle: Bundle = engine.bundle
        self.rate = self.bundle.sample_rate
        self.block_shift = self.bundle.block_shift
        self.samples_in = 0
        self.compute_s = 0.0
        self.chunks = 0
        self.deadline_misses = 0
        self.odd = b""

    @property
    def seconds(self) -> float:
        return self.samples_in / self.rate


class _Feed:
    """One received chunk being denoised: its s16le samples, how far the ticks got (in bytes), its s16le
    output so far."""

    __slots__ = ("stream", "data", "pos", "outs", "future", "tail")

    def __init__(self, stream: BatchedStream, data: bytes, future: asyncio.Future, tail: bool = False):
        self.stream, self.data, self.pos, self.outs = stream, data, 0, []
        self.future = future
        self.tail = tail
        """The zeros that push out the rest of the stream's output; the slot closes when they are done."""


class BatchWorker:
    """The batch engines (per bundle, as many as the open streams need), run on the event loop's thread.

    Inference runs where the sockets are served: a tick is scheduled on the loop whenever work waits, and
    runs after the loop has read what every ready socket sent, so the chunks that came in together go in one
    batch. There is no hand-over between threads per chunk (a futex wake, a self-pipe write and a GIL
    exchange each way, which cost more than the model on a small core) and no lock: only the loop thread
    touches the engines.
    """

    def __init__(self, options: Options, wait: float = 0.0):
        self.options = options
        self.wait = wait
        """Seconds a tick may wait for more streams' audio after the first chunk arrives (at most one hop: a
        stream then waits at most that long for the others); it runs at once when every open stream waits,
        and when at most ``WAIT_ABOVE`` streams are open."""
        self._engines: dict[int, list[BatchEngine]] = {}
        """id(bundle) -> its engines (a reload brings a new bundle; old streams finish on the old one)."""
        self._newest: int | None = None
        """id of the bundle the last stream was opened for: its first engine stays, warm, when idle."""
        self._feeds: dict[BatchedStream, _Feed] = {}
        self._scheduled: asyncio.Handle | asyncio.TimerHandle | None = None
        self._closed = False
        self.ticks = 0
        self.rows_total = self.rows_max = 0
        self.busy_s = 0.0
        self.rows: deque[int] = deque(maxlen=RECENT_TICKS)
        self.tick_s: deque[float] = deque(maxlen=RECENT_TICKS)
        self.streams_opened = 0

    # -- what sessions call (on the loop) -------------------------------------------------------------------------
    def _now(self, fn: Callable[[], Any]) -> asyncio.Future:
        """A future of ``fn()``, run now (opening a stream)."""
        fut = asyncio.get_running_loop().create_future()
        if self._closed:
            raise RuntimeError("the batch worker is closed")
        try:
            fut.set_result(fn())
        except Exception as exc:
            fut.set_exception(exc)
        return fut

    def acquire(self, bundle: Bundle) -> asyncio.Future:
        """A future of a new stream of ``bundle`` (zero states)."""
        return self._now(lambda: self._open(bundle))

    def feed(self, stream: BatchedStream, data: bytes) -> asyncio.Future:
        """A future of the s16le output for ``data`` (s16le; an odd trailing byte waits for the next chunk)."""
        if self._closed:
            raise RuntimeError("the batch worker is closed")
        data, stream.odd = pcm16_even(data, stream.odd)
        stream.samples_in += len(data) // 2
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self._feeds[stream] = _Feed(stream, data, fut)
        self._schedule(loop, (len(data) / (2 * stream.rate) - RESERVE_S) / 4)
        return fut

    def _open_streams(self) -> int:
        return sum(e.open_streams for es in self._engines.values() for e in es)

    def _schedule(self, loop: asyncio.AbstractEventLoop, wait: float = 0.0) -> None:
        """A tick at once when every open stream has audio waiting, or few are open, or no wait is set; else
        after ``wait`` seconds (at most ``self.wait``) from the first chunk that waits."""
        open_streams = self._open_streams()
        wait = min(wait, self.wait)
        now = wait <= 0 or open_streams <= WAIT_ABOVE or len(self._feeds) >= open_streams
        if self._scheduled is not None:
            if not now or not isinstance(self._scheduled, asyncio.TimerHandle):
                return
            self._scheduled.cancel()
        self._scheduled = loop.call_soon(self._tick) if now else loop.call_later(wait, self._tick)

    def finish(self, stream: BatchedStream) -> asyncio.Future:
        """A future of the rest of the stream's output (total out == total in); the slot is then free. The
        zeros that push it out go through the ticks with the other streams' audio."""
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        if stream.slot is None:
            fut.set_result(b"")
            return fut
        if self._closed:
            raise RuntimeError("the batch worker is closed")
        pad = bytes(2 * stream.engine.tail_samples(stream.slot))  # s16le zeros
        self._feeds[stream] = _Feed(stream, pad, fut, tail=True)
        self._schedule(loop)
        return fut

    def release(self, stream: BatchedStream, job: asyncio.Future | None) -> None:
        """Give the stream's slot back (its waiting audio, if any, is dropped). ``job`` (the ``StreamWorkers``
        interface) does not matter here: nothing of the stream runs off the loop's thread."""
        self._feeds.pop(stream, None)
        self._close(stream)

    def figures(self) -> dict[str, Any]:
        rows, tick_s = list(self.rows), list(self.tick_s)
        engines = [e for es in self._engines.values() for e in es]
        return {"engines": len(engines), "capacity": sum(e.capacity for e in engines),
                "streams_open": sum(e.open_streams for e in engines), "streams_opened": self.streams_opened,
                "ticks": self.ticks, "busy_s": round(self.busy_s, 3),
                "graph_batches": sorted({z for e in engines for z in e.sizes}),
                "rows_max": self.rows_max, "rows_mean": round(self.rows_total / self.ticks, 2) if self.ticks else None,
                "recent_ticks": len(rows),
                "rows_per_tick": _spread(rows, 1), "tick_ms": _spread([1e3 * t for t in tick_s], 3)}

    def close(self) -> None:
        """Answer what waits (one tick at a time), then refuse new work."""
        while self._feeds:
            self._run_tick()
        self._closed = True

    # -- engines --------------------------------------------------------------------------------------------------
    def _open(self, bundle: Bundle) -> BatchedStream:
        self._newest = id(bundle)
        engines = self._engines.setdefault(id(bundle), [])
        eng = next((e for e in engines if e.open_streams < e.capacity), None)
        if eng is None:
            eng = BatchEngine(bundle, self.options)
            engines.append(eng)
        self.streams_opened += 1
        return BatchedStream(eng, eng.open())

    def _close(self, stream: BatchedStream) -> None:
        if stream.slot is not None:
            stream.engine.close(stream.slot)
            stream.slot = None
        key = id(stream.bundle)
        engines = self._engines.get(key)
        if engines is None:
            return
        # Idle engines go, but the newest bundle's first one; a replaced bundle's go with its last stream.
        engines[:] = [e for i, e in enumerate(engines) if e.open_streams or (i == 0 and key == self._newest)]
        if not engines:
            del self._engines[key]

    # -- ticks ------------------------------------------------------------------------------------------------------
    def _tick(self) -> None:
        """Scheduled on the loop while audio waits: one tick, then the loop serves the sockets again."""
        self._scheduled = None
        self._run_tick()
        if self._feeds and self._scheduled is None:  # chunks of more than PIECE_BLOCKS hops go on next time
            self._scheduled = asyncio.get_running_loop().call_soon(self._tick)

    def _run_tick(self) -> None:
        """At most PIECE_BLOCKS hops of every waiting chunk, one engine call per engine."""
        for stream in [s for s, f in self._feeds.items() if f.future.cancelled()]:
            del self._feeds[stream]  # its connection went (shutdown, abort)
        feeds = list(self._feeds.values())
        if not feeds:
            return
        t0 = time.perf_counter()
        by_engine: dict[int, list[_Feed]] = {}
        for f in feeds:
            by_engine.setdefault(id(f.stream.engine), []).append(f)
        rows = 0
        for group in by_engine.values():
            t1 = time.perf_counter()
            try:
                self._engine_call(group)
            except Exception as exc:
                for f in group:
                    self._done(f, None, exc)
                continue
            share = (time.perf_counter() - t1) / len(group)
            rows += len(group)
            for f in group:
                f.stream.compute_s += share
                if f.pos >= len(f.data):
                    if f.tail:
                        f.stream.engine.close(f.stream.slot)
                        f.stream.slot = None
                    self._done(f, f.outs[0] if len(f.outs) == 1 else b"".join(f.outs), None)
        dt = time.perf_counter() - t0
        self.ticks += 1
        self.busy_s += dt
        self.rows_total += rows
        self.rows_max = max(self.rows_max, rows)
        self.rows.append(rows)
        self.tick_s.append(dt)

    @staticmethod
    def _engine_call(group: list[_Feed]) -> None:
        """The next piece (at most PIECE_BLOCKS hops) of each of ``group``'s chunks through their engine in one
        call; its s16le output is appended to each feed's ``outs``.

        The common case goes as arrays: streams past their first chunks that send whole hops (``steady``),
        with pieces of one length, are converted from and to s16le all at once and run as rows, with no
        per-stream numpy work; the rest (a stream's first chunks, odd lengths, ends) goes per stream in the
        same batch calls.
        """
        eng = group[0].stream.engine
        piece = 2 * PIECE_BLOCKS * eng.bundle.block_shift  # bytes
        hop = 2 * eng.bundle.block_shift
        steady: list[_Feed] = []
        size = -1
        for f in group:
            n = min(piece, len(f.data) - f.pos)
            if not f.tail and n % hop == 0 and (size < 0 or n == size) and eng.steady(f.stream.slot):
                steady.append(f)
                size = n
        if len(steady) < len(group):
            ids = {id(f) for f in steady}
            others = {f.stream.slot: pcm16_to_float(f.data[f.pos:f.pos + piece]) for f in group if id(f) not in ids}
            tails = {f.stream.slot for f in group if f.tail}
        else:
            others, tails = None, ()
        if steady:  # a whole-chunk slice of bytes is the chunk itself, not a copy
            x = pcm16_to_float(b"".join([f.data[f.pos:f.pos + size] for f in steady])).reshape(len(steady), size // 2)
        else:
            x = np.zeros((0, 0), np.float32)
        y, outs = eng.process_steady([f.stream.slot for f in steady], x, others, tails, checked=True)
        out = float_to_pcm16(y)
        for j, f in enumerate(steady):
            f.outs.append(out[j * size:(j + 1) * size])
            f.pos += size
        if others:
            for f in group:
                if f.stream.slot in others:
                    f.outs.append(float_to_pcm16(outs[f.stream.slot]))
                    f.pos += piece

    def _done(self, f: _Feed, result: bytes | None, exc: BaseException | None) -> None:
        if self._feeds.get(f.stream) is f:
            del self._feeds[f.stream]
        settle(f.future, result, exc)


def _spread(values: list[float], digits: int) -> dict[str, float] | None:
    """Median, 99th percentile and max of recent values (None when there are none)."""
    if not values:
        return None
    v = sorted(values)
    return {"median": round(statistics.median(v), digits), "p99": round(v[min(len(v) - 1, int(0.99 * len(v)))],
                                                                          digits), "max": round(v[-1], digits)}
