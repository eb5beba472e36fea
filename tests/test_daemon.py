"""`edge-denoise serve`/`status`: real server processes and sockets, each bounded in time."""

from __future__ import annotations

import configparser
import json
import os
import re
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
from edge.daemon import Client, DaemonError, float_to_pcm16, parse_uri, pcm16_to_float

from .conftest import REPO
from .daemon_util import CLI, RATE, concurrent_clients, free_port, offline, pcm, start_servers, stream

DEFAULT_BUNDLE = "pretrained_model/dtln-finetuned/float32"
"""The default bundle the units tell users to copy (the lead ships it on main)."""


@pytest.fixture
def serve(tmp_path):
    yield from start_servers(tmp_path)


# -- serve: correctness ---------------------------------------------------------------------------------
@pytest.mark.parametrize("batched", [False, True], ids=["per-stream", "batched"])
def test_16_concurrent_clients_each_get_the_offline_output(serve, small_bundle, batched_bundle, batched):
    """Per-stream: each client's output is the offline output to the byte. Batched (the streams of a tick through
    one resizable batch graph): within the float32 tolerance (max abs <= 1e-5, so at most 1 LSB of int16)."""
    bundle = batched_bundle if batched else small_bundle
    srv = serve(bundle)
    inputs = [pcm(0.5 + 0.1 * k, seed=k) for k in range(16)]
    chunks = [2 * c for c in (1, 127, 128, 160, 1000, 4000, 333, 512)] * 2
    results = concurrent_clients(srv, inputs, chunks)
    for k in range(16):
        got = results.get(k)
        assert isinstance(got, bytes), f"client {k}: {got!r}"
        assert len(got) == len(inputs[k])
        want = offline(inputs[k], bundle)
        if batched:
            diff = np.abs(np.frombuffer(got, "<i2").astype(int) - np.frombuffer(want, "<i2"))
            assert diff.max() <= 1, f"client {k} (chunk {chunks[k]} bytes) differs by {diff.max()} LSB"
        else:
            assert got == want, f"client {k} (chunk {chunks[k]} bytes) differs"
    st = srv.status()
    assert st["totals"]["streams_finished"] == 16
    assert st["totals"]["connections"] == 16
    assert abs(st["totals"]["seconds_processed"] - sum(len(x) for x in inputs) / 2 / RATE) < 1e-3
    b = st["batch"]
    assert b["mode"] == "auto" and b["model_batched"] is batched
    if batched:
        assert b["streams_opened"] == 16 and b["streams_open"] == 0 and b["engines"] == 1
        assert b["ticks"] > 0 and b["rows_max"] >= 2, b  # 16 clients at once share ticks
        assert b["tick_ms"]["max"] > 0 and 1 in b["graph_batches"]
        assert st["totals"]["denoisers_created"] == 0  # no per-stream interpreter was made
    else:
        assert b["streams_opened"] == 0 and st["totals"]["denoisers_created"] >= 1


@pytest.mark.parametrize("batched", [False, True], ids=["per-stream", "batched"])
def test_auto_level_clients_get_the_offline_output_with_the_same_option(serve, small_bundle, batched_bundle, batched):
    """``serve --auto-level``: quiet streams (about -40 dBFS) are boosted before the model, as ``edge-denoise denoise
    --auto-level`` boosts them; the server says so in ``describe`` and ``status``."""
    bundle = batched_bundle if batched else small_bundle
    srv = serve(bundle, "--auto-level")
    assert srv.status()["model"]["auto_level"] is True
    inputs = [float_to_pcm16(pcm16_to_float(pcm(0.8 + 0.2 * k, seed=40 + k)) * np.float32(0.02)) for k in range(4)]
    with srv.client() as c:
        assert c.describe()["auto_level"] is True
    results = concurrent_clients(srv, inputs, [256, 2000, 318, 4096])
    for k, data in enumerate(inputs):
        got = results.get(k)
        assert isinstance(got, bytes), f"client {k}: {got!r}"
        want = offline(data, bundle, edge.Options(auto_level=True))
        diff = np.abs(np.frombuffer(got, "<i2").astype(int) - np.frombuffer(want, "<i2"))
        assert diff.max() <= (1 if batched else 0), f"client {k} differs by {diff.max()} LSB"
        assert got != offline(data, bundle), f"client {k}: the same output as without --auto-level"


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


def _send_until_blocked(s: socket.socket, msg: bytes, limit_s: float) -> int | None:
    """Send ``msg`` again and again until a send blocks (the socket's timeout); the bytes sent, None if never."""
    sent, t0 = 0, time.monotonic()
    try:
        while time.monotonic() - t0 < limit_s:
            s.sendall(msg)
            sent += len(msg)
    except (socket.timeout, OSError):
        return sent
    return None


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
        except Exception as exc:
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
    sent = _send_until_blocked(slow, b'{"type":"audio","bytes":32000}\n' + pcm(1.0, 12), 10)
    assert sent is not None, "the server kept reading from a client that reads nothing"
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


def test_batch_options_are_checked_at_start(small_bundle, batched_bundle, tmp_path, serve):
    def refused(model, *extra):
        r = subprocess.run(CLI + ["serve", "--model", model, "--uri", f"unix://{tmp_path}/x.sock", *extra],
                           capture_output=True, text=True, timeout=60, cwd=REPO)
        assert r.returncode == 2, r.stderr
        return r.stderr

    assert "has no batch-axis graphs" in refused(small_bundle, "--batch", "on")
    assert "expected at most one hop of the model, 8 ms" in refused(batched_bundle, "--batch-wait", "9")
    srv = serve(batched_bundle, "--batch", "off")  # a bundle with batch graphs served per stream on request
    with srv.client() as c:
        assert stream(c, pcm(0.3, 5), 700) == offline(pcm(0.3, 5), batched_bundle)
    st = srv.status()
    assert st["batch"] == {"mode": "off", "model_batched": False} and st["totals"]["denoisers_created"] == 1


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
    text = (REPO / "packaging" / unit).read_text()
    for rel in re.findall(r"pretrained_model/[\w./-]+", text):  # what the header tells users to copy exists
        assert rel == DEFAULT_BUNDLE or (REPO / rel / "manifest.json").is_file(), f"{unit}: {rel} does not exist"
    if args.command == "serve":  # no world-writable socket: group access, a token, or the user's own folder
        assert args.socket_mode & 0o007 == 0, f"{unit}: --socket-mode {args.socket_mode:o} lets every user in"
        if svc.get("DynamicUser") == "yes":
            assert args.socket_group and args.socket_group in svc.get("SupplementaryGroups", "").split()


def test_bench_daemon_streams_runs(small_bundle, tmp_path):
    out = tmp_path / "daemon.json"
    r = subprocess.run([sys.executable, str(REPO / "bench" / "daemon_streams.py"), "--model", small_bundle,
                        "--seconds", "1", "--warmup", "0.2", "--max-streams", "2", "--attempts", "1", "--out",
                        str(out)], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert r.returncode == 0, r.stderr[-2000:]
    doc = json.loads(out.read_text())
    assert doc["bench"] == "daemon" and doc["trials"][0]["streams"] == 1 and doc["trials"][0]["chunks"] > 0
    assert {"p50", "p99"} <= set(doc["added_latency_ms"]["1_stream"]) and doc["rows"]
