"""One connection's denoising stream: s16le mono in, delay-compensated s16le out."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np

from ..audio import float_to_pcm16, pcm16_chunk
from ..bundle import Bundle
from ..options import Options
from ..stream import AlignedStream
from .scheduler import PIECE_BLOCKS, Scheduler


class PcmStream:
    """s16le mono in, delay-compensated s16le out (same total length).

    Output sample ``k`` is the denoised input sample ``k`` (``edge.stream.AlignedStream``, the one
    delay-compensated stream every caller uses), exactly as ``edge-denoise denoise`` does offline.
    Not thread-safe: one call at a time (the scheduler never runs two pieces of a connection at once).
    """

    def __init__(self, bundle: Bundle, options: Options):
        self.den = AlignedStream(bundle, options)
        self.bundle = bundle
        self.options = options
        self.rate = bundle.sample_rate
        self.block_shift = bundle.block_shift
        self.reset()

    def reset(self) -> None:
        """Zero the model state and the counters: the next byte starts a new stream."""
        self.den.reset()
        self.samples_in = 0
        self.samples_out = 0
        self.compute_s = 0.0
        self.chunks = 0
        self.deadline_misses = 0
        self._odd = b""

    def _emit(self, y: np.ndarray) -> bytes:
        self.samples_out += len(y)
        return float_to_pcm16(y)

    def feed(self, data: bytes) -> bytes:
        """PCM in (any byte count: an odd trailing byte waits for the next call) -> the PCM now ready."""
        t0 = time.perf_counter()
        x, self._odd = pcm16_chunk(data, self._odd)
        self.samples_in += len(x)
        out = self._emit(self.den.process(x))
        self.compute_s += time.perf_counter() - t0
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


class StreamPool:
    """Idle streams of the current bundle, reset and handed to the next connection.

    A stream owns its interpreters (megabytes of tensor arenas and packed weights). Allocated and freed
    per connection on several worker threads, they fragmented the allocator's per-thread arenas and the
    daemon's RSS grew with every connection (~1 MB each, issue 19 item 12). Reused, they are allocated
    once per concurrent stream. Thread-safe: workers acquire, the event loop releases.
    """

    def __init__(self, keep: int):
        self.keep = keep
        self._bundle: Bundle | None = None
        self._idle: list[PcmStream] = []
        self._lock = threading.Lock()
        self.created = 0
        self.reused = 0

    def acquire(self, bundle: Bundle, options: Options) -> PcmStream:
        """A zeroed stream of ``bundle``: an idle one if there is one, else a new one."""
        with self._lock:
            if bundle is not self._bundle:  # a reload: the old bundle's idle streams go
                self._bundle, self._idle = bundle, []
            if self._idle and self._idle[-1].options == options:
                self.reused += 1
                return self._idle.pop()
            self.created += 1
        return PcmStream(bundle, options)

    def release(self, stream: PcmStream) -> None:
        """Take back a stream no one uses any more (no call of it running or queued)."""
        stream.reset()
        with self._lock:
            if stream.bundle is self._bundle and len(self._idle) < self.keep:
                self._idle.append(stream)


class StreamWorkers:
    """The per-stream way to serve: each connection its own ``PcmStream`` (pooled), run in pieces by the
    scheduler's worker threads. Same calls as ``batching.BatchWorker``."""

    def __init__(self, workers: int, keep: int, options: Options):
        self.scheduler = Scheduler(workers)
        self.pool = StreamPool(keep)
        self.options = options

    def acquire(self, bundle: Bundle) -> asyncio.Future:
        return self.scheduler.call(self.pool.acquire, bundle, self.options)

    def feed(self, stream: PcmStream, data: bytes) -> asyncio.Future:
        return self.scheduler.feed(stream.feed, data, 2 * PIECE_BLOCKS * stream.block_shift)

    def finish(self, stream: PcmStream) -> asyncio.Future:
        return self.scheduler.call(stream.finish)

    def release(self, stream: PcmStream, job: asyncio.Future | None) -> None:
        """Back to the pool, unless a cancelled job of it may still be running (then it is left to the GC)."""
        if job is None or (job.done() and not job.cancelled()):
            self.pool.release(stream)

    def close(self) -> None:
        self.scheduler.close()
