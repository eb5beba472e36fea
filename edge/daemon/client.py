"""A small blocking JSON-mode client of the daemon (tests, bench, and Python users)."""

from __future__ import annotations

import json
from typing import Any

from .protocol import HEADER_LIMIT, DaemonError, encode
from .uri import open_socket, parse_uri


class Client:
    """Blocking JSON-mode client: ``describe()``, ``start()``, ``send(pcm) -> pcm``, ``stop() -> pcm``.

    Each audio message is answered by exactly one audio message (possibly empty), so a client may go in
    lock step; ``stop`` returns the flushed tail, after which the output length equals the input length.
    When the server ends the stream itself (SIGTERM drain) it answers what it took, flushes, sends
    ``done`` and closes: ``send``/``stop`` then return that audio and set ``self.done`` instead of raising.
    """

    def __init__(self, uri: str, token: str | None = None, timeout: float = 10.0):
        self.ep = parse_uri(uri)
        self.sock = open_socket(self.ep, timeout)
        self._f = self.sock.makefile("rb")
        self._token = token
        self.done: dict[str, Any] | None = None

    def _send(self, msg: dict[str, Any], payload: bytes = b"") -> bool:
        """Send a message; False if the server has closed its side (what it sent before is still readable)."""
        if self._token is not None:
            msg = {**msg, "token": self._token}
            self._token = None
        try:
            self.sock.sendall(encode(msg) + payload)
        except (BrokenPipeError, ConnectionResetError):
            return False
        return True

    def read(self) -> tuple[dict[str, Any], bytes]:
        """The next message from the server and its payload; DaemonError for an error or a closed socket."""
        try:
            line = self._f.readline(HEADER_LIMIT)
        except ConnectionResetError:
            line = b""
        if not line:
            raise DaemonError(f"{self.ep}: connection closed by the server")
        try:
            msg = json.loads(line)
        except ValueError:
            raise DaemonError(f"{self.ep}: expected a JSON header line, got {line[:60]!r}") from None
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

    def status(self) -> dict[str, Any]:
        """The daemon's live figures (as ``edge-denoise status`` prints them)."""
        self._send({"type": "status"})
        return self.read()[0]

    def start(self, rate: int = 16000) -> dict[str, Any]:
        self.done = None
        self._send({"type": "start", "rate": rate, "width": 2, "channels": 1})
        return self.read()[0]

    def send(self, pcm: bytes) -> bytes:
        """One chunk in -> its answer. After the server ended the stream: the rest it sent, up to ``done``."""
        if self.done is not None:
            return b""
        if not self._send({"type": "audio", "bytes": len(pcm)}, pcm):
            return self.finish()  # the server ended the stream (shutdown) and closed before taking this chunk
        msg, payload = self.read()
        if msg.get("type") == "done":  # the server ended the stream (shutdown): no tail follows
            self.done = msg
        return payload

    def stop(self) -> bytes:
        if self.done is not None:
            return b""
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
