"""Daemon addresses: ``unix://``, ``tcp://`` and ``stdio://`` URIs, their control sockets, and connecting."""

from __future__ import annotations

import ipaddress
import os
import socket
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

from .protocol import DaemonError


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

    @property
    def address(self) -> tuple[str, str, int]:
        """What two endpoints listening on the same socket share (the mode aside)."""
        return self.scheme, self.path, self.port if self.scheme == "tcp" else 0


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


def controls_for(eps: list[Endpoint]) -> list[Endpoint]:
    """One default control endpoint per listener (so ``status --uri`` works for each), minus clashes."""
    taken = {e.address for e in eps}
    out: list[Endpoint] = []
    for e in eps:
        c = control_for(e)
        if c is not None and c.address not in taken:
            taken.add(c.address)
            out.append(c)
    return out


def open_socket(ep: Endpoint, timeout: float) -> socket.socket:
    """A connected blocking socket for a unix:// or tcp:// endpoint."""
    try:
        if ep.scheme == "unix":
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(timeout)
            try:
                s.connect(ep.path)
            except OSError:
                s.close()
                raise
            return s
        if ep.scheme == "tcp":
            s = socket.create_connection((ep.host, ep.port), timeout=timeout)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return s
    except OSError as exc:
        raise DaemonError(f"cannot connect to {ep} ({exc.strerror or exc})") from None
    raise DaemonError(f"{ep}: expected a unix:// or tcp:// URI to connect to")
