"""`edge-denoise serve`/`status`/`live`: real server processes and sockets, each bounded in time."""

from __future__ import annotations

import configparser
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import edge
from edge.cmd_denoise import denoise_array
from edge.daemon import Client, DaemonError, float_to_pcm16, parse_uri, pcm16_to_float, request_status

from .conftest import REPO, noise_audio

CLI = [sys.executable, "-m", "edge.cli"]
RATE = 16000


# -- helpers --------------------------------------------------------------------------------------------
def pcm(seconds: float, seed: int) -> bytes:
    """A different test signal per seed: noise plus a tone, int16 (what a client would send)."""
    n = int(RATE * seconds)
    t = np.arange(n) / RATE
    x = 0.1 * np.random.default_rng(seed).standard_normal(n) + 0.2 * np.sin(2 * np.pi * (200 + 37 * seed) * t)
    return float_to_pcm16(x.astype(np.float32))


def offline(data: bytes, bundle: str) -> bytes:
    """`edge-denoise denoise` on the same int16 input, quantised as the server quantises."""
    x = pcm16_to_float(data)
    return float_to_pcm16(denoise_array(x[:, None], RATE, edge.load_bundle(bundle), edge.Options())[:, 0])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`edge-denoise serve` in a child process; stopped (SIGTERM, then kill) when the test ends."""

    def __init__(self, tmp: Path, model: str, *extra: str, uri: str | None = None, control: str | None = None):
        self.uri = uri or f"unix://{tmp}/s.sock"
        self.control = control or (f"unix://{tmp}/s.control.sock" if self.uri.startswith("unix://") else None)
        self.log = tmp / f"serve-{time.monotonic_ns()}.log"
        cmd = CLI + ["serve", "--model", model, "--uri", self.uri, *extra]
        if control:
            cmd += ["--control", control]
        self._log = open(self.log, "wb")
        self.proc = subprocess.Popen(cmd, stderr=self._log, stdout=subprocess.DEVNULL, cwd=REPO)
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


@pytest.fixture
def serve(tmp_path):
    servers = []

    def start(model, *extra, **kw):
        s = Server(tmp_path, model, *extra, **kw)
        servers.append(s)
        return s

    yield start
    for s in servers:
        s.stop()


def stream(client: Client, data: bytes, chunk: int) -> bytes:
    client.start()
    out = [client.send(data[i:i + chunk]) for i in range(0, len(data), chunk)]
    return b"".join(out) + client.stop()


# -- serve: correctness ---------------------------------------------------------------------------------
def test_16_concurrent_clients_each_get_the_offline_output(serve, small_bundle):
    srv = serve(small_bundle)
    inputs = [pcm(0.5 + 0.1 * k, seed=k) for k in range(16)]
    chunks = [2 * c for c in (1, 127, 128, 160, 1000, 4000, 333, 512)] * 2
    results: dict[int, object] = {}

    def run(k: int) -> None:
        try:
            with srv.client() as c:
                results[k] = stream(c, inputs[k], chunks[k])
        except Exception as exc:  # noqa: BLE001 (reported by the main thread)
            results[k] = exc

    threads = [threading.Thread(target=run, args=(k,)) for k in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    for k in range(16):
        got = results.get(k)
        assert isinstance(got, bytes), f"client {k}: {got!r}"
        assert len(got) == len(inputs[k])
        assert got == offline(inputs[k], small_bundle), f"client {k} (chunk {chunks[k]} bytes) differs"
    st = srv.status()
    assert st["totals"]["streams_finished"] == 16
    assert st["totals"]["connections"] == 16
    assert abs(st["totals"]["seconds_processed"] - sum(len(x) for x in inputs) / 2 / RATE) < 1e-3


def test_describe_and_started_name_the_model(serve, small_bundle):
    srv = serve(small_bundle)
    b = edge.load_bundle(small_bundle)
    with srv.client() as c:
        d = c.describe()
        assert {k: d[k] for k in ("type", "sha256", "family", "sample_rate", "block_shift", "latency_samples")} == {
            "type": "describe", "sha256": b.sha256, "family": "dtln", "sample_rate": 16000, "block_shift": 128,
            "latency_samples": b.latency_samples}
        assert d["model"] == b.name and d["version"] == edge.__version__
        started = c.start()
        assert started["type"] == "started" and started["sha256"] == b.sha256
        # two streams on one connection: the second starts from zero states
        first = b"".join([c.send(pcm(0.3, 1)), c.stop()])
        second = stream(c, pcm(0.3, 1), 640)
        assert first == second == offline(pcm(0.3, 1), small_bundle)


def test_stdio_raw_and_json(small_bundle):
    data = pcm(0.7, 3)
    r = subprocess.run(CLI + ["serve", "--model", small_bundle, "--uri", "stdio://?mode=raw", "-q"], input=data,
                       capture_output=True, timeout=60, cwd=REPO)
    assert r.returncode == 0, r.stderr.decode()[-1000:]
    assert r.stdout == offline(data, small_bundle)
    msgs = (b'{"type":"start","rate":16000,"width":2,"channels":1}\n'
            + f'{{"type":"audio","bytes":{len(data)}}}\n'.encode() + data + b'{"type":"stop"}\n')
    r = subprocess.run(CLI + ["serve", "--model", small_bundle, "--uri", "stdio://", "-q"], input=msgs,
                       capture_output=True, timeout=60, cwd=REPO)
    assert r.returncode == 0, r.stderr.decode()[-1000:]
    out, rest = b"", r.stdout
    kinds = []
    while rest:
        line, rest = rest.split(b"\n", 1)
        msg = json.loads(line)
        kinds.append(msg["type"])
        if msg["type"] == "audio":
            out, rest = out + rest[:msg["bytes"]], rest[msg["bytes"]:]
    assert kinds == ["started", "audio", "audio", "done"]
    assert out == offline(data, small_bundle)


def test_raw_mode_over_tcp_loopback(serve, small_bundle, tmp_path):
    port = free_port()
    srv = serve(small_bundle, uri=f"tcp://127.0.0.1:{port}?mode=raw", control=f"unix://{tmp_path}/c.sock")
    data = pcm(1.1, 5)
    with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
        sender = threading.Thread(target=lambda: (s.sendall(data), s.shutdown(socket.SHUT_WR)))
        sender.start()  # send and receive at once: the server answers as it goes
        got = bytearray()
        while chunk := s.recv(65536):
            got += chunk
        sender.join(20)
    assert bytes(got) == offline(data, small_bundle)
    assert srv.status()["totals"]["ends"] == {"eof": 1}


def test_raw_mode_with_nc(serve, small_bundle, tmp_path):
    nc = shutil.which("nc")
    if nc is None:
        pytest.skip("nc (netcat-openbsd) is not installed")
    port = free_port()
    serve(small_bundle, uri=f"tcp://127.0.0.1:{port}?mode=raw", control=f"unix://{tmp_path}/c.sock")
    data = pcm(0.6, 6)
    (tmp_path / "in.raw").write_bytes(data)
    with open(tmp_path / "in.raw", "rb") as fin:
        r = subprocess.run([nc, "-N", "127.0.0.1", str(port)], stdin=fin, capture_output=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert r.stdout == offline(data, small_bundle)


# -- serve: bad clients ---------------------------------------------------------------------------------
def _recv_all(s: socket.socket) -> bytes:
    got = b""
    try:
        while chunk := s.recv(65536):
            got += chunk
    except OSError:
        pass
    return got


def test_bad_clients_are_dropped_while_others_are_served(serve, small_bundle):
    srv = serve(small_bundle, "--max-message-bytes", "65536", "--idle-timeout", "2.5",
                "--output-buffer-bytes", "16384")
    sock_path = parse_uri(srv.uri).path
    good_in = pcm(8.0, 11)
    good: dict[str, object] = {}

    def good_client() -> None:
        try:
            with srv.client() as c:
                c.start()
                out = []
                for i in range(0, len(good_in), 2048):
                    out.append(c.send(good_in[i:i + 2048]))
                    time.sleep(0.02)  # a paced stream (~4 s) that overlaps every misbehaving client below
                good["out"] = b"".join(out) + c.stop()
        except Exception as exc:  # noqa: BLE001
            good["out"] = exc

    t = threading.Thread(target=good_client)
    t.start()

    def connect() -> socket.socket:
        s = socket.socket(socket.AF_UNIX)
        s.settimeout(10)
        s.connect(sock_path)
        return s

    # garbage bytes (no newline within the header limit), then a garbage line
    for junk in (bytes(np.random.default_rng(0).integers(0, 256, 9000, dtype=np.uint8)), b"\x00\xffhello\n"):
        with connect() as s:
            s.sendall(junk)
            reply = _recv_all(s)
        assert reply.startswith(b'{"type":"error"') and b"expected a JSON header" in reply, reply[:200]
    # an audio message over --max-message-bytes
    with connect() as s:
        s.sendall(b'{"type":"start"}\n{"type":"audio","bytes":1000000}\n')
        reply = _recv_all(s)
    assert b"exceeds --max-message-bytes 65536" in reply
    # disconnects mid-stream (mid-payload)
    with connect() as s:
        s.sendall(b'{"type":"start"}\n{"type":"audio","bytes":4000}\n' + bytes(100))
    # stalls: starts and then sends nothing
    staller = connect()
    staller.sendall(b'{"type":"start"}\n')
    # reads nothing: sends as much as the server takes, never reads an answer
    slow = connect()
    slow.settimeout(0.5)
    slow.sendall(b'{"type":"start"}\n')
    rss0 = srv.status()["process"]["rss_bytes"]
    sent = 0
    msg = b'{"type":"audio","bytes":32000}\n' + pcm(1.0, 12)
    t0 = time.monotonic()
    try:
        while time.monotonic() - t0 < 10:
            slow.sendall(msg)
            sent += len(msg)
    except (socket.timeout, OSError):
        pass
    assert time.monotonic() - t0 < 10, "the server kept reading from a client that reads nothing"
    paused = [s for s in srv.status()["streams"] if s["reading_paused"]]
    assert paused and paused[0]["output_buffered_bytes"] > 0
    rss1 = srv.status()["process"]["rss_bytes"]
    assert sent < 8 << 20, f"{sent} bytes accepted from a client that reads nothing"
    assert rss1 - rss0 < 32 << 20
    t.join(60)
    assert good.get("out") == offline(good_in, small_bundle)
    deadline = time.monotonic() + 15  # past --idle-timeout the staller and the slow reader are closed
    while srv.status()["totals"]["open"] and time.monotonic() < deadline:
        time.sleep(0.2)
    st = srv.status()
    ends = st["totals"]["ends"]
    assert ends.get("garbage") == 2 and ends.get("too_large") == 1 and ends.get("disconnected") == 1, ends
    assert ends.get("idle") == 1 and ends.get("stalled") == 1 and ends.get("closed") == 1, ends
    assert st["totals"]["open"] == 0
    assert st["process"]["cpu_s"] > 0 and st["process"]["rss_bytes"] > 0
    assert {"seconds_processed", "real_time_factor", "deadline_misses"} <= set(st["recent"][-1])
    staller.close()
    slow.close()
    # the status command prints the same figures
    r = subprocess.run(CLI + ["status", "--uri", srv.uri], capture_output=True, timeout=30, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr
    printed = json.loads(r.stdout)
    assert printed["model"]["sha256"] == edge.load_bundle(small_bundle).sha256
    assert printed["totals"]["ends"] == ends
    assert srv.stop() == 0


def test_max_connections(serve, small_bundle):
    srv = serve(small_bundle, "--max-connections", "2")
    a, b = srv.client(), srv.client()
    a.describe()
    b.describe()
    with srv.client() as c, pytest.raises(DaemonError, match="server full"):
        c.read()  # the server says so as soon as it accepts
    a.close()
    b.close()
    with srv.client() as c:
        assert c.describe()["type"] == "describe"
    assert srv.status()["totals"]["refused"] == 1


def test_non_loopback_bind_needs_a_token(small_bundle, tmp_path, serve):
    port = free_port()
    r = subprocess.run(CLI + ["serve", "--model", small_bundle, "--uri", f"tcp://0.0.0.0:{port}"],
                       capture_output=True, text=True, timeout=60, cwd=REPO,
                       env={k: v for k, v in os.environ.items() if k != "EDGE_DENOISE_TOKEN"})
    assert r.returncode == 2
    assert "not a loopback address" in r.stderr and "--token" in r.stderr
    srv = serve(small_bundle, "--token", "s3cret", uri=f"tcp://0.0.0.0:{port}", control=f"unix://{tmp_path}/c.sock")
    loop = f"tcp://127.0.0.1:{port}"
    with pytest.raises(DaemonError, match="token"):
        Client(loop).describe()
    with pytest.raises(DaemonError, match="token"):
        Client(loop, token="wrong").describe()
    with Client(loop, token="s3cret") as c:
        assert stream(c, pcm(0.3, 2), 512) == offline(pcm(0.3, 2), small_bundle)
    assert srv.status()["totals"]["ends"]["auth"] == 2


# -- serve: signals -------------------------------------------------------------------------------------
def test_sigterm_answers_in_flight_chunks_and_exits_0(serve, small_bundle):
    srv = serve(small_bundle, "--drain-timeout", "0.5")
    data = pcm(20.0, 21)
    chunk = 2048
    results: dict[str, object] = {}
    going, termed = threading.Event(), threading.Event()

    def endless() -> None:  # streams until the server ends the stream
        with srv.client() as c:
            c.start()
            out, i = [], 0
            try:
                while c.done is None and i < len(data):
                    out.append(c.send(data[i:i + chunk]))
                    i += chunk
                    going.set()
                    time.sleep(0.005)
            except (DaemonError, OSError):
                pass
            if c.done is None:
                out.append(c.finish())
            results["endless"] = (b"".join(out), c.done)

    def finisher() -> None:  # sends stop within the drain period
        with srv.client() as c:
            c.start()
            out = [c.send(data[:8000])]
            termed.wait(30)
            time.sleep(0.1)
            out.append(c.stop())
            results["finisher"] = (b"".join(out), c.done)

    threads = [threading.Thread(target=endless), threading.Thread(target=finisher)]
    for t in threads:
        t.start()
    assert going.wait(30)
    time.sleep(0.3)
    srv.proc.send_signal(signal.SIGTERM)
    termed.set()
    for t in threads:
        t.join(30)
    assert srv.proc.wait(30) == 0
    out, done = results["endless"]
    assert done["reason"] == "shutdown"
    received = done["samples"]
    assert 0 < received < len(data) // 2
    assert out == offline(data[:2 * received], small_bundle)  # every chunk it took was answered, then flushed
    out, done = results["finisher"]
    assert done == {"type": "done", "samples": 4000} and out == offline(data[:8000], small_bundle)
    assert not Path(parse_uri(srv.uri).path).exists()
    assert "SIGTERM" in srv.text()


def test_sighup_reloads_new_streams_only_and_survives_a_bad_bundle(serve, small_bundle, other_bundle, tmp_path):
    other = Path(other_bundle)
    model = tmp_path / "model"
    shutil.copytree(small_bundle, model)
    old_sha, new_sha = edge.load_bundle(small_bundle).sha256, edge.load_bundle(str(other)).sha256
    assert old_sha != new_sha
    srv = serve(str(model))
    data = pcm(1.0, 31)
    running = srv.client()
    running.start()
    out = [running.send(data[:10000])]

    shutil.move(model, tmp_path / "model.old")  # what an update does: a new folder in place of the old
    shutil.copytree(other, model)
    srv.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 30
    while srv.status()["model"]["sha256"] != new_sha:
        assert time.monotonic() < deadline, srv.text()[-2000:]
        time.sleep(0.1)
    with srv.client() as c:
        assert c.describe()["sha256"] == new_sha
        assert stream(c, data, 4000) == offline(data, str(other))
    out += [running.send(data[10000:]), running.stop()]
    running.close()
    assert b"".join(out) == offline(data, small_bundle)  # the running stream finished on the old model

    (model / "manifest.json").write_text("{ not json")
    srv.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 30
    while srv.status()["totals"]["reload_failures"] == 0:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    st = srv.status()
    assert st["model"]["sha256"] == new_sha and st["totals"]["reloads"] == 1
    with srv.client() as c:
        assert c.describe()["sha256"] == new_sha
    assert "reload of" in srv.text() and "failed" in srv.text()
    assert srv.stop() == 0


# -- packaging ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("unit", ["edge-denoise.service", "edge-denoise-user.service", "edge-denoise-live.service"])
def test_systemd_units(unit):
    from edge.cli import build_parser

    cfg = configparser.ConfigParser(strict=False, interpolation=None)
    cfg.optionxform = str
    cfg.read(REPO / "packaging" / unit)
    svc = cfg["Service"]
    assert svc["Type"] == "simple" and svc["Restart"] == "on-failure"
    argv = shlex.split(svc["ExecStart"].replace("%t", "/run/user/1000").replace("%h", "/home/u"))[1:]
    args = build_parser().parse_args(argv)  # the unit's command line is one this CLI accepts
    assert args.command in ("serve", "live")
    assert "WantedBy" in cfg["Install"]


# -- live -----------------------------------------------------------------------------------------------
def test_bench_daemon_streams_runs(small_bundle, tmp_path):
    out = tmp_path / "daemon.json"
    r = subprocess.run([sys.executable, str(REPO / "bench" / "daemon_streams.py"), "--model", small_bundle,
                        "--seconds", "1", "--warmup", "0.2", "--max-streams", "2", "--attempts", "1", "--out",
                        str(out)], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert r.returncode == 0, r.stderr[-2000:]
    doc = json.loads(out.read_text())
    assert doc["bench"] == "daemon" and doc["trials"][0]["streams"] == 1 and doc["trials"][0]["chunks"] > 0
    assert {"p50", "p99"} <= set(doc["added_latency_ms"]["1_stream"]) and doc["rows"]


def test_import_and_cli_work_without_sounddevice(small_bundle):
    code = ("import sys; sys.modules['sounddevice'] = None\n"
            "import edge, edge.cli\n"
            "edge.cli.build_parser()\n"
            "assert 'sounddevice' not in [m for m, v in sys.modules.items() if v is not None]\n"
            "sys.exit(edge.cli.main(['live', '--model', sys.argv[1], '--list-devices']))\n")
    r = subprocess.run([sys.executable, "-c", code, small_bundle], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, r.stderr
    assert "live audio needs sounddevice" in r.stderr


class FakeStream:
    """Stands in for a PortAudio duplex stream: a thread calls the pipeline's callback with a signal.

    A mock, because this machine may have no sound device: it drives the same callbacks PortAudio
    would, in lock step (each callback waits until the worker has caught up) so the output is exact.
    """

    def __init__(self, pipeline, x: np.ndarray, blocksize: int, lockstep: bool = True, die_after: int | None = None):
        self.p, self.x, self.bs = pipeline, x, blocksize
        self.out: list[np.ndarray] = []
        self.active = True
        self.lockstep = lockstep
        self.die_after = die_after
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        for k, i in enumerate(range(0, len(self.x) - self.bs + 1, self.bs)):
            if not self.active or (self.die_after is not None and k >= self.die_after):
                break
            indata = self.x[i:i + self.bs, None].copy()
            outdata = np.full((self.bs, 1), np.nan, np.float32)
            self.p.callback(indata, outdata, self.bs, None, None)
            self.out.append(outdata[:, 0].copy())
            deadline = time.monotonic() + 5
            while self.lockstep and not self.p.idle and time.monotonic() < deadline:
                time.sleep(0.0005)
        self.active = False

    def abort(self) -> None:
        self.active = False
        self.thread.join(5)

    def close(self) -> None:
        pass


def test_live_pipeline_with_a_fake_stream_is_exact(small_bundle):
    """MOCK (no sound device needed): the queue/worker/cushion path gives the model's output, delayed."""
    from edge.live import LivePipeline, Supervisor

    bundle = edge.load_bundle(small_bundle)
    x = noise_audio(1.0, 7)
    for blocksize in (128, 64, 300):
        p = LivePipeline(bundle, edge.Options(), blocksize)
        streams = []

        def opener(pipe, x=x, blocksize=blocksize):
            streams.append(FakeStream(pipe, x, blocksize))
            return streams[-1]

        stop = threading.Event()
        sup = Supervisor(p, opener, stop, duration=(len(x) // blocksize) * blocksize / RATE, stall_s=5)
        st = sup.run()
        got = np.concatenate(streams[0].out)
        den = edge.StreamingDenoiser(bundle)
        want = np.concatenate([np.zeros(p.prefill, np.float32), den.process(x[:len(got)])])[:len(got)]
        assert st.overruns == st.underruns == 0
        np.testing.assert_array_equal(got, want)


def test_live_counts_overruns_and_underruns_and_reopens(small_bundle):
    """MOCK: a device that floods input, one that dies, one that cannot open: counted, never fatal."""
    from edge.live import LivePipeline, Supervisor

    bundle = edge.load_bundle(small_bundle)
    x = noise_audio(3.0, 8)
    p = LivePipeline(bundle, edge.Options(), 128, queue_seconds=0.02)
    opens = []

    def opener(pipe):
        opens.append(len(opens))
        if len(opens) == 1:
            raise OSError("device busy")
        if len(opens) == 2:  # floods callbacks with no waiting, then dies
            return FakeStream(pipe, x, 128, lockstep=False, die_after=200)
        return FakeStream(pipe, x, 128)

    sup = Supervisor(p, opener, threading.Event(), duration=1.0, backoff=(0.01, 0.05), stall_s=1.0)
    st = sup.run()
    assert len(opens) >= 3
    assert st.device_errors >= 2 and st.reopens >= 1
    assert st.overruns > 0  # the flood outran the small queue
    assert st.seconds_in >= 1.0
    # starve the output: no worker running, so callbacks find the cushion, then nothing
    q = LivePipeline(bundle, edge.Options(), 128)
    out = np.zeros((128, 1), np.float32)
    for _ in range(5):
        q.callback(np.zeros((128, 1), np.float32), out, 128, None, None)
    assert q.stats.underruns == 5 - q.prefill // 128


def test_live_through_a_real_pulseaudio_server(small_bundle, tmp_path):
    """Real sound server: a WAV into a PulseAudio pipe source, `edge-denoise live`, the pipe sink read back."""
    out = tmp_path / "live.json"
    # Real-time audio on a shared 2-core machine can glitch when other work runs: up to three tries,
    # each judged in full; a machine without a sound server skips on the first.
    for _ in range(3):
        r = subprocess.run([sys.executable, str(REPO / "bench" / "live_pulse.py"), "--model", small_bundle, "--out",
                            str(out), "--min-exact", "0.5", "--timeout", "60"], capture_output=True, text=True,
                           timeout=150, cwd=REPO)
        result = json.loads(out.read_text()) if out.exists() else {}
        if r.returncode in (0, 3):
            break
    if r.returncode == 3:
        pytest.skip(f"no PulseAudio/PortAudio here: {result.get('skipped')}")
    assert r.returncode == 0, (result or r.stderr[-2000:])
    assert result["live_rc"] == 0 and result["input_exact"]  # the file reached the denoiser sample for sample
    assert result["segments_exact"] >= result["segments"] // 2  # the denoised audio came back sample for sample
    st = result["live_stats"]
    # A change of alignment between input and output means the device glitched: the counters saw it
    # (one PortAudio underflow flag can stand for several ALSA recoveries, so not one count per shift).
    glitches = st["underruns"] + st["overruns"] + st["input_overflows"] + st["output_underflows"]
    assert len(result["alignments"]) == 1 or glitches > 0
