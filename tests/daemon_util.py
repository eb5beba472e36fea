"""Shared by the daemon tests: test signals, the offline reference, and `edge-denoise serve` in a child process."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

import edge
from edge.cmd_denoise import denoise_array
from edge.daemon import Client, DaemonError, float_to_pcm16, parse_uri, pcm16_to_float, request_status

from .conftest import REPO

CLI = [sys.executable, "-m", "edge.cli"]
RATE = 16000


def pcm(seconds: float, seed: int) -> bytes:
    """A different test signal per seed: noise plus a tone, int16 (what a client would send)."""
    n = int(RATE * seconds)
    t = np.arange(n) / RATE
    x = 0.1 * np.random.default_rng(seed).standard_normal(n) + 0.2 * np.sin(2 * np.pi * (200 + 37 * seed) * t)
    return float_to_pcm16(x.astype(np.float32))


def offline(data: bytes, bundle: str, options: edge.Options | None = None) -> bytes:
    """`edge-denoise denoise` on the same int16 input, quantised as the server quantises."""
    x = pcm16_to_float(data)
    return float_to_pcm16(denoise_array(x[:, None], RATE, edge.load_bundle(bundle), options or edge.Options())[:, 0])


def same_as_offline(got: bytes, data: bytes, bundle: str, lsb: int = 0) -> bool:
    """Whether ``got`` is the offline output of ``data`` to within ``lsb`` int16 steps (0: to the byte; 1: a
    float32 stream within 1e-5 of it, such as one run in a batch)."""
    want = offline(data, bundle)
    if lsb == 0 or len(got) != len(want):
        return got == want
    return int(np.max(np.abs(np.frombuffer(got, "<i2").astype(int) - np.frombuffer(want, "<i2")), initial=0)) <= lsb


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`edge-denoise serve` in a child process; stopped (SIGTERM, then kill) when the test ends."""

    def __init__(self, tmp: Path, model: str, *extra: str, uri: str | None = None, control: str | None = None,
                 **popen):
        self.uri = uri or f"unix://{tmp}/s.sock"
        self.control = control or (f"unix://{tmp}/s.control.sock" if self.uri.startswith("unix://") else None)
        self.log = tmp / f"serve-{time.monotonic_ns()}.log"
        cmd = CLI + ["serve", "--model", model, "--uri", self.uri, *extra]
        if control:
            cmd += ["--control", control]
        self._log = open(self.log, "wb")
        self.proc = subprocess.Popen(cmd, stderr=self._log, stdout=subprocess.DEVNULL, cwd=REPO, **popen)
        deadline = time.monotonic() + 60
        while True:
            try:
                self.status()
                break
            except (DaemonError, OSError):
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise AssertionError(f"serve did not come up: {self.log.read_text()[-2000:]}") from None
                time.sleep(0.1)

    def status(self) -> dict:
        return request_status(parse_uri(self.control), timeout=5)

    def client(self, timeout: float = 20.0, **kw) -> Client:
        return Client(self.uri, timeout=timeout, **kw)

    def stop(self, timeout: float = 20.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode

    def text(self) -> str:
        return self.log.read_text(errors="replace")


def start_servers(tmp: Path):
    """A factory of servers that stops each one afterwards (the body of a `serve` fixture)."""
    servers = []

    def start(model, *extra, **kw):
        s = Server(tmp, model, *extra, **kw)
        servers.append(s)
        return s

    yield start
    for s in servers:
        s.stop()


def stream(client: Client, data: bytes, chunk: int) -> bytes:
    client.start()
    out = [client.send(data[i:i + chunk]) for i in range(0, len(data), chunk)]
    return b"".join(out) + client.stop()


def concurrent_clients(srv: Server, inputs: list[bytes], chunks: list[int]) -> dict[int, object]:
    """Each input streamed by its own client at once (chunk ``chunks[k]`` bytes): its output bytes, or the
    exception that client met (the caller asserts)."""
    results: dict[int, object] = {}

    def run(k: int) -> None:
        try:
            with srv.client() as c:
                results[k] = stream(c, inputs[k], chunks[k])
        except Exception as exc:  # reported by the caller
            results[k] = exc

    threads = [threading.Thread(target=run, args=(k,)) for k in range(len(inputs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return results
