"""``stdio://``: one stream on the process's stdin/stdout, as an asyncio reader/writer pair."""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
import threading
from typing import Any, AsyncIterator


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


@contextlib.asynccontextmanager
async def stdio_streams(limit: int) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    """stdin/stdout as a stream pair; on exit, waits for a copying thread to finish a regular-file stdout."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=limit)
    rfile, _ = _pipe_fd(0, "r")
    wfile, pump = _pipe_fd(1, "w")
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), rfile)
    wt, wp = await loop.connect_write_pipe(asyncio.streams.FlowControlMixin, wfile)
    writer = asyncio.StreamWriter(wt, wp, reader, loop)
    yield reader, writer
    if pump is not None:  # stdout is a regular file: let the copying thread finish it
        await loop.run_in_executor(None, pump.join, 10.0)
