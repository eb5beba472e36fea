"""Inference threads that serve every connection's work round-robin, one block-sized piece at a time.

A 1 MiB audio message is ~4000 model blocks; run whole, it would hold a worker for seconds while live
streams wait behind it. Here each job is a list of pieces (a few blocks each); a worker runs one piece
of the job at the head of the queue and puts the job back at the tail, so a chunk that arrives behind a
large one waits for at most one piece per other busy connection. A connection has at most one job
queued (it awaits each answer), so its pieces run in order and never two at once.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from typing import Any, Callable

PIECE_BLOCKS = 8
"""Model blocks per piece of work (8 x 128 samples = 64 ms of 16 kHz audio)."""


class _Job:
    __slots__ = ("pieces", "next", "outs", "join", "future", "loop")

    def __init__(self, pieces: list[Callable[[], Any]], join: bool, future: asyncio.Future,
                 loop: asyncio.AbstractEventLoop):
        self.pieces = pieces
        self.next = 0
        self.outs: list[Any] = []
        self.join = join
        self.future = future
        self.loop = loop


def settle(fut: asyncio.Future, result: Any, exc: BaseException | None) -> None:
    if fut.done():  # the connection was cancelled meanwhile (shutdown, abort)
        return
    if exc is not None:
        fut.set_exception(exc)
    else:
        fut.set_result(result)


class Scheduler:
    """``workers`` daemon threads and one round-robin queue of jobs."""

    def __init__(self, workers: int, name: str = "denoise"):
        self._ready: deque[_Job] = deque()
        self._cv = threading.Condition()
        self._closed = False
        self._threads = [threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True)
                         for i in range(workers)]
        for t in self._threads:
            t.start()

    def call(self, fn: Callable[..., Any], *args: Any) -> asyncio.Future:
        """Run ``fn(*args)`` as one piece; a future of its result."""
        return self._submit([lambda: fn(*args)], join=False)

    def feed(self, feed: Callable[[bytes], bytes], data: bytes, piece_bytes: int) -> asyncio.Future:
        """``feed`` over ``data`` in pieces of ``piece_bytes`` (even); a future of the joined output."""
        pieces = [(lambda part=data[i:i + piece_bytes]: feed(part)) for i in range(0, len(data), piece_bytes)]
        return self._submit(pieces or [lambda: feed(b"")], join=True)

    def _submit(self, pieces: list[Callable[[], Any]], join: bool) -> asyncio.Future:
        loop = asyncio.get_running_loop()
        job = _Job(pieces, join, loop.create_future(), loop)
        with self._cv:
            if self._closed:
                raise RuntimeError("the scheduler is closed")
            self._ready.append(job)
            self._cv.notify()
        return job.future

    def _work(self) -> None:
        while True:
            with self._cv:
                while not self._ready and not self._closed:
                    self._cv.wait()
                if not self._ready:
                    return
                job = self._ready.popleft()
            if job.future.cancelled():
                continue
            try:
                job.outs.append(job.pieces[job.next]())
            except Exception as exc:
                job.loop.call_soon_threadsafe(settle, job.future, None, exc)
                continue
            job.next += 1
            if job.next < len(job.pieces):
                with self._cv:
                    self._ready.append(job)  # to the back of the queue: round-robin
                    self._cv.notify()
                continue
            result = b"".join(job.outs) if job.join else job.outs[0]
            job.loop.call_soon_threadsafe(settle, job.future, result, None)

    def close(self, timeout: float = 5.0) -> None:
        """Finish the queued jobs, then stop the threads (waiting at most ``timeout`` seconds for each)."""
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        for t in self._threads:
            t.join(timeout)
