"""Listening sockets with our own accept loop: a full fd table pauses accepting and is logged once.

asyncio's own accept loop (CPython 3.11) answers EMFILE with a logged traceback and a retry timer per
failed ``accept()`` - up to its backlog per loop tick - so at the fd limit it writes tracebacks by the
hundred thousand. Here a failed accept stops watching the socket for a second and says so once, and
again once when accepting works again.
"""

from __future__ import annotations

import asyncio
import errno
import grp
import logging
import os
import socket
import stat
from typing import Awaitable, Callable

from .protocol import HEADER_LIMIT, DaemonError
from .uri import Endpoint

log = logging.getLogger("edge.daemon")

BACKLOG = 128
RETRY_S = 1.0
"""Seconds accepting pauses after the process ran out of file descriptors (or memory)."""
OUT_OF_RESOURCES = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, Endpoint], Awaitable[None]]


def clear_stale_socket(path: str) -> None:
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


def group_id(name: str) -> int:
    """A group name (or number) -> its gid; DaemonError if there is no such group."""
    try:
        return int(name) if name.isdigit() else grp.getgrnam(name).gr_gid
    except KeyError:
        raise DaemonError(f"--socket-group: expected an existing group name or gid, got {name!r}") from None


def bind(ep: Endpoint, mode: int = 0o660, gid: int | None = None) -> list[socket.socket]:
    """Listening sockets for ``ep``: a unix socket with ``mode`` (and group) set before it listens, or TCP."""
    socks: list[socket.socket] = []
    try:
        if ep.scheme == "unix":
            clear_stale_socket(ep.path)
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            socks.append(s)
            s.bind(ep.path)
            if gid is not None:
                os.chown(ep.path, -1, gid)
            os.chmod(ep.path, mode)  # before listen(): no one connects under looser permissions
            s.listen(BACKLOG)
        else:
            infos = socket.getaddrinfo(ep.host, ep.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
            for family, kind, proto, _, addr in dict.fromkeys(infos):
                s = socket.socket(family, kind, proto)
                socks.append(s)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                s.bind(addr)
                s.listen(BACKLOG)
        for s in socks:
            s.setblocking(False)
        return socks
    except OSError as exc:
        for s in socks:
            s.close()
        raise DaemonError(f"cannot listen on {ep} ({exc.strerror or exc})") from None


class Listener:
    """Accepts connections on one endpoint's sockets and hands each to ``handler`` as a stream pair."""

    def __init__(self, ep: Endpoint, socks: list[socket.socket], handler: Handler):
        self.ep = ep
        self.socks = socks
        self.handler = handler
        self.accept_failures = 0
        self._paused_since_failure = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._retry: asyncio.TimerHandle | None = None
        self._closed = False
        self._tasks: set[asyncio.Task] = set()  # the loop keeps only weak references to tasks

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        for s in self.socks:
            self._loop.add_reader(s.fileno(), self._accept, s)

    def _accept(self, sock: socket.socket) -> None:
        for _ in range(BACKLOG):
            try:
                conn, _ = sock.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                break
            except OSError as exc:
                self._pause(exc)
                return
            if self._paused_since_failure:
                log.warning("accepting on %s again (after %d failed accept() calls)", self.ep, self.accept_failures)
                self._paused_since_failure = False
            conn.setblocking(False)
            task = self._loop.create_task(self._serve(conn))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _pause(self, exc: OSError) -> None:
        self.accept_failures += 1
        if not self._paused_since_failure:
            what = "out of file descriptors or memory" if exc.errno in OUT_OF_RESOURCES else "failed"
            log.error("accept() on %s %s (%s): pausing accepting for %g s at a time until it works "
                      "(logged once)", self.ep, what, exc.strerror or exc, RETRY_S)
            self._paused_since_failure = True
        for s in self.socks:
            self._loop.remove_reader(s.fileno())
        if self._retry is None:
            self._retry = self._loop.call_later(RETRY_S, self._resume)

    def _resume(self) -> None:
        self._retry = None
        if not self._closed:
            self.start()

    async def _serve(self, conn: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=HEADER_LIMIT, loop=loop)
        protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
        try:
            transport, _ = await loop.connect_accepted_socket(lambda: protocol, sock=conn)
        except OSError as exc:
            conn.close()
            log.warning("connection on %s lost while being set up (%s)", self.ep, exc)
            return
        writer = asyncio.StreamWriter(transport, protocol, reader, loop)
        await self.handler(reader, writer, self.ep)

    def close(self) -> None:
        """Stop accepting; close the sockets (the caller removes a unix socket file)."""
        self._closed = True
        if self._retry is not None:
            self._retry.cancel()
        for s in self.socks:
            if self._loop is not None and s.fileno() >= 0:
                self._loop.remove_reader(s.fileno())
            s.close()
