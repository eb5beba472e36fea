"""Hostile and unlucky clients of `edge-denoise serve` (issue 19): real processes and sockets, bounded in time.

Each test failed before its fix; the issue item it reproduces is named in its docstring.
"""

from __future__ import annotations

import grp
import json
import os
import resource
import select
import shutil
import signal
import socket
import stat
import subprocess
import threading
import time

import pytest

import edge
from edge.daemon import Client, DaemonError, parse_uri

from .conftest import REPO
from .daemon_util import CLI, free_port, offline, pcm, same_as_offline, start_servers


@pytest.fixture
def serve(tmp_path):
    yield from start_servers(tmp_path)


def _fd_limit(n: int):
    return lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (n, n))


def _recv_until_closed(s: socket.socket, limit_s: float) -> bytes:
    got, deadline = b"", time.monotonic() + limit_s
    s.settimeout(0.5)
    while time.monotonic() < deadline:
        try:
            chunk = s.recv(65536)
        except socket.timeout:
            continue
        except OSError:
            break
        if not chunk:
            break
        got += chunk
    return got


def _unix(path: str, timeout: float = 10.0) -> socket.socket:
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(timeout)
    s.connect(path)
    return s


def _open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _wait_for(cond, limit_s: float, what: str):
    deadline = time.monotonic() + limit_s
    while True:
        got = cond()
        if got:
            return got
        assert time.monotonic() < deadline, f"waited {limit_s} s for {what}"
        time.sleep(0.1)


# -- item 1: slowloris ----------------------------------------------------------------------------------
def test_a_header_trickling_in_is_cut_at_the_header_deadline(serve, small_bundle):
    """Item 1: a client sending {"type":"describe"} at 4 bytes/s used to hold its slot (idle timeout per message)."""
    srv = serve(small_bundle)  # defaults: --header-timeout 5, --idle-timeout 60
    line = b'{"type":"describe","note":"%s"}\n' % (b"x" * 20)  # 50 bytes: 12.5 s at 4 bytes/s
    with _unix(parse_uri(srv.uri).path) as s:
        sent = 0

        def trickle() -> None:
            nonlocal sent
            for b in line:
                try:
                    s.sendall(bytes([b]))
                except OSError:
                    return
                sent += 1
                time.sleep(0.25)

        t = threading.Thread(target=trickle)
        t.start()
        reply = _recv_until_closed(s, 20)
        t.join(20)
    assert reply.startswith(b'{"type":"error"') and b"--header-timeout" in reply, reply[:300]
    assert sent < len(line), "the server waited for the whole slow header"
    assert srv.status()["totals"]["ends"] == {"slow": 1}


def test_a_raw_stream_trickling_in_is_cut_at_the_minimum_rate(serve, small_bundle, tmp_path):
    """Item 1: in raw mode one byte every half second held a connection as long as --idle-timeout allowed."""
    port = free_port()
    srv = serve(small_bundle, uri=f"tcp://127.0.0.1:{port}?mode=raw", control=f"unix://{tmp_path}/c.sock")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        t0, cut = time.monotonic(), False
        while time.monotonic() - t0 < 20 and not cut:
            try:
                s.sendall(b"\x00")
            except OSError:
                cut = True
                break
            cut = bool(select.select([s], [], [], 0.5)[0]) and not _recv_until_closed(s, 5)
    assert cut, "a raw client sending 2 bytes/s was not cut within 20 s (--min-rate 1024 after --header-timeout 5)"
    _wait_for(lambda: srv.status()["totals"]["ends"] == {"slow": 1}, 10, "the end to be counted as slow")


def test_one_peer_cannot_hold_every_slot(serve, small_bundle, tmp_path):
    """Item 1: idle connections from one address used to fill --max-connections for everybody."""
    port = free_port()
    srv = serve(small_bundle, "--max-connections", "4", uri=f"tcp://127.0.0.1:{port}",
                control=f"unix://{tmp_path}/c.sock")
    hogs = []
    for _ in range(4):
        h = socket.create_connection(("127.0.0.1", port), timeout=10, source_address=("127.0.0.1", 0))
        hogs.append(h)
    refused = _recv_until_closed(hogs[-1], 10)
    assert b"too many connections from 127.0.0.1" in refused, refused
    other = socket.socket()
    other.settimeout(10)
    other.bind(("127.0.0.2", 0))  # another peer: the whole 127/8 is loopback on Linux
    other.connect(("127.0.0.1", port))
    other.sendall(b'{"type":"describe"}\n')
    answer = json.loads(other.makefile("rb").readline())
    assert answer["type"] == "describe", answer
    st = srv.status()
    assert st["totals"]["refused"] == 1 and st["limits"]["max_per_peer"] == 3
    for s in hogs + [other]:
        s.close()


# -- item 2: clients that never read; the fd limit ------------------------------------------------------------
def test_non_readers_release_their_fds_and_status_counts_them(serve, small_bundle):
    """Item 2: stalled connections used to keep their fd and buffered output after `status` dropped them."""
    srv = serve(small_bundle, "--idle-timeout", "1", "--max-connections", "8", "--output-buffer-bytes", "16384",
                preexec_fn=_fd_limit(128))
    path = parse_uri(srv.uri).path
    fds0 = _open_fds(srv.proc.pid)
    rss0 = srv.status()["process"]["rss_bytes"]
    msg = b'{"type":"audio","bytes":32000}\n' + pcm(1.0, 12)
    hold = []
    for _ in range(30):  # they never read and never close (until the test ends)
        s = _unix(path, timeout=0.3)
        hold.append(s)
        try:
            s.sendall(b'{"type":"start"}\n')
            for _ in range(64):
                s.sendall(msg)
        except OSError:  # socket.timeout: the server stopped reading; EPIPE: refused or closed
            pass
    _wait_for(lambda: srv.status()["totals"]["open"] == 0, 20, "every stalled connection to be closed")
    st = srv.status()
    fds1 = _open_fds(srv.proc.pid)
    assert fds1 <= fds0 + 2, f"{fds1 - fds0} fds still held for connections status no longer counts"
    assert st["process"]["rss_bytes"] - rss0 < 48 << 20
    assert st["totals"]["ends"].get("stalled", 0) >= 1, st["totals"]["ends"]
    with Client(srv.uri) as c:  # and it still serves
        assert c.describe()["type"] == "describe"
    for s in hold:
        s.close()
    assert "Traceback" not in srv.text()


def test_accept_at_the_fd_limit_is_logged_once_and_recovers(serve, small_bundle):
    """Item 2: at the fd limit asyncio's accept loop wrote hundreds of thousands of tracebacks."""
    srv = serve(small_bundle, "--max-connections", "200", "--idle-timeout", "30", preexec_fn=_fd_limit(48))
    path = parse_uri(srv.uri).path
    clients = []
    for _ in range(60):  # more than the server has fds for: the backlog takes the rest
        clients.append(_unix(path))
    _wait_for(lambda: "accept()" in srv.text(), 20, "the server to reach its fd limit")
    time.sleep(3)  # a few retry periods at the limit
    text = srv.text()
    assert "Traceback" not in text, text[-3000:]
    assert text.count("accept() on") == 1, text[-3000:]
    for s in clients:
        s.close()

    def served() -> bool:
        try:
            with Client(srv.uri, timeout=5) as c:
                return c.describe()["type"] == "describe"
        except (DaemonError, OSError):
            return False

    _wait_for(served, 20, "the server to accept again")
    assert "accepting on" in srv.text()
    assert srv.status()["totals"]["accept_failures"] >= 1


# -- item 3: fairness -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("batched", [False, True], ids=["per-stream", "batched"])
def test_big_messages_do_not_hold_back_a_live_stream(serve, small_bundle, batched_bundle, batched):
    """Item 3: with one worker, a live stream's chunk used to wait for whole 1 MiB messages queued before it.
    Batched: every tick takes at most 8 hops of each message, the live stream's among them."""
    bundle = batched_bundle if batched else small_bundle
    srv = serve(bundle, "--workers", "1")
    big = pcm(32.0, 40)[: 1 << 20]
    flooders = []
    for _ in range(3):
        c = Client(srv.uri, timeout=60)
        c.start()
        flooders.append(c)
    for c in flooders:
        c._send({"type": "audio", "bytes": len(big)}, big)  # answers not read yet
    _wait_for(lambda: any(s["phase"] == "compute" for s in srv.status()["streams"]), 20, "a flood in compute")
    live_in = pcm(0.1, 41)
    with Client(srv.uri, timeout=60) as live:
        live.start()
        got = b"".join(live.send(live_in[i:i + 256]) for i in range(0, len(live_in), 256)) + live.stop()
        waiting = [c for c in flooders if not select.select([c.sock], [], [], 0)[0]]
    assert same_as_offline(got, live_in, bundle, lsb=int(batched))
    assert waiting, "every 1 MiB message was answered before the live stream's chunks"
    for c in flooders:  # and the big messages come out right too
        msg, out = c.read()
        assert msg["type"] == "audio" and len(out) > 0
        c.close()


# -- item 5: header parsing -------------------------------------------------------------------------------------
def test_deeply_nested_json_gets_an_error_line(serve, small_bundle):
    """Item 5: 2,000 nested arrays raised an unhandled RecursionError and the client got no answer."""
    srv = serve(small_bundle)
    with _unix(parse_uri(srv.uri).path) as s:
        s.sendall(b"[" * 2000 + b"]" * 2000 + b"\n")
        reply = _recv_until_closed(s, 10)
    assert reply.startswith(b'{"type":"error"') and b"nested too deeply" in reply, reply[:200]
    assert srv.status()["totals"]["ends"] == {"garbage": 1}
    assert "Traceback" not in srv.text() and "RecursionError" not in srv.text()


# -- item 10: the Client on SIGTERM drain ---------------------------------------------------------------------------
@pytest.mark.parametrize("batched", [False, True], ids=["per-stream", "batched"])
def test_client_returns_what_the_server_sent_before_done_on_sigterm(serve, small_bundle, batched_bundle, batched):
    """Item 10: Client.send raised BrokenPipeError when the draining server had closed (8 of 8)."""
    bundle = batched_bundle if batched else small_bundle
    srv = serve(bundle, "--drain-timeout", "0.2")
    data = pcm(30.0, 50)
    results: dict[int, object] = {}
    going = threading.Barrier(9, timeout=60)

    def client(k: int) -> None:
        try:
            with srv.client() as c:
                c.start()
                out, i = [c.send(data[:2048])], 2048
                going.wait()
                while c.done is None and i < len(data):  # no exception handling: send must not raise
                    out.append(c.send(data[i:i + 2048]))
                    i += 2048
                if c.done is None:
                    out.append(c.stop())
                results[k] = (b"".join(out), c.done)
        except Exception as exc:
            results[k] = exc

    threads = [threading.Thread(target=client, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    going.wait()
    time.sleep(0.3)
    srv.proc.send_signal(signal.SIGTERM)
    for t in threads:
        t.join(60)
    assert srv.proc.wait(30) == 0
    for k in range(8):
        got = results.get(k)
        assert isinstance(got, tuple), f"client {k}: {got!r}"
        out, done = got
        assert done["reason"] == "shutdown" and 0 < done["samples"] < len(data) // 2
        assert same_as_offline(out, data[:2 * done["samples"]], bundle, lsb=int(batched)), f"client {k}"


# -- item 11: socket permissions ------------------------------------------------------------------------------------
def test_socket_mode_and_group(serve, small_bundle, tmp_path):
    """Item 11: a unit needs 0660 with a group instead of 666; the socket gets both before it listens."""
    group = grp.getgrgid(os.getgid()).gr_name
    srv = serve(small_bundle, "--socket-mode", "640", "--socket-group", group)
    st = os.stat(parse_uri(srv.uri).path)
    assert stat.S_IMODE(st.st_mode) == 0o640 and st.st_gid == os.getgid()
    r = subprocess.run(CLI + ["serve", "--model", small_bundle, "--uri", f"unix://{tmp_path}/x.sock",
                              "--socket-group", "no-such-group-here"], capture_output=True, text=True, timeout=60,
                       cwd=REPO)
    assert r.returncode == 2 and "expected an existing group" in r.stderr


# -- item 13: status of every listener; tokens out of `ps` ------------------------------------------------------------
def test_status_of_a_second_tcp_listener(small_bundle):
    """Item 13: the control socket followed the first --uri only, so `status --uri SECOND` failed."""
    p1, p2 = free_port(), free_port()
    uri1, uri2 = f"tcp://127.0.0.1:{p1}", f"tcp://127.0.0.1:{p2}?mode=raw"
    proc = subprocess.Popen(CLI + ["serve", "--model", small_bundle, "--uri", uri1, "--uri", uri2],
                            cwd=REPO, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL)
    try:
        def status(uri: str) -> dict | None:
            r = subprocess.run(CLI + ["status", "--uri", uri], capture_output=True, text=True, timeout=30, cwd=REPO)
            return json.loads(r.stdout) if r.returncode == 0 else None

        first = _wait_for(lambda: status(uri1), 60, "the server")
        second = status(uri2)
        assert second is not None and second["pid"] == first["pid"] == proc.pid
        assert set(second["uris"]) == {uri1, uri2}
    finally:
        proc.terminate()
        proc.wait(30)


def test_token_from_a_file_or_the_environment_stays_out_of_ps(serve, small_bundle, tmp_path):
    """Item 13: --token was the only way besides the environment, and it shows in `ps`."""
    secret = "s3cret-from-file"
    token_file = tmp_path / "token"
    token_file.write_text(secret + "\n")
    token_file.chmod(0o600)
    srv = serve(small_bundle, "--token-file", str(token_file))
    cmdline = open(f"/proc/{srv.proc.pid}/cmdline", "rb").read()
    assert secret.encode() not in cmdline
    with pytest.raises(DaemonError, match="token"):
        Client(srv.uri).describe()
    with Client(srv.uri, token=secret) as c:
        assert c.describe()["type"] == "describe"
    env = {**os.environ, "EDGE_DENOISE_TOKEN": secret}
    r = subprocess.run(CLI + ["status", "--uri", srv.uri], capture_output=True, text=True, timeout=30, cwd=REPO,
                       env=env)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["totals"]["ends"] == {"auth": 1, "closed": 1}
    r = subprocess.run(CLI + ["status", "--uri", srv.uri, "--token", "x", "--token-file", str(token_file)],
                       capture_output=True, text=True, timeout=30, cwd=REPO)
    assert r.returncode == 2 and "one of --token and --token-file" in r.stderr


# -- item 12: no allocation churn per connection ------------------------------------------------------------------
def test_denoisers_are_reused_and_start_from_zero(serve, small_bundle):
    """Item 12: every connection allocated (and freed) its own interpreters; RSS grew ~1 MB per connection."""
    srv = serve(small_bundle, "--workers", "2")
    path = parse_uri(srv.uri).path
    for k in range(6):
        data = pcm(0.3 + 0.05 * k, 70 + k)
        if k % 2:  # a client that leaves mid-stream: its denoiser goes back to the pool with state in it
            with _unix(path) as s:
                s.sendall(b'{"type":"start"}\n' + b'{"type":"audio","bytes":%d}\n' % len(data) + data)
                s.recv(256)
            _wait_for(lambda: srv.status()["totals"]["open"] == 0, 10, "the leaver to be closed")
            continue
        with srv.client() as c:
            c.start()
            out = c.send(data) + c.stop()
        assert out == offline(data, small_bundle), f"connection {k}"
    _wait_for(lambda: srv.status()["totals"]["open"] == 0, 10, "the connections to close")
    t = srv.status()["totals"]
    assert t["denoisers_created"] == 1 and t["denoisers_reused"] == 5, t


# -- #18: a reload never holds an inference worker ----------------------------------------------------------------
def test_a_fifo_manifest_neither_hangs_the_reload_nor_stalls_streams_with_one_worker(serve, small_bundle, tmp_path):
    """SIGHUP used to load the bundle on the inference pool, and a manifest that was a fifo hung the load:
    with one worker every stream stalled. The loader now opens without blocking and refuses what is not a
    regular file, and the reload runs on its own thread; a stream with one worker is served throughout."""
    model = tmp_path / "model"
    shutil.copytree(small_bundle, model)
    srv = serve(str(model), "--workers", "1")
    (model / "manifest.json").unlink()
    os.mkfifo(model / "manifest.json")  # no writer: a blocking open would wait for ever
    srv.proc.send_signal(signal.SIGHUP)
    data = pcm(0.5, 60)
    with srv.client(timeout=20) as c:
        assert c.describe()["sha256"] == edge.load_bundle(small_bundle).sha256
        c.start()
        out = c.send(data) + c.stop()
    assert out == offline(data, small_bundle)
    _wait_for(lambda: srv.status()["totals"]["reload_failures"] == 1, 30, "the fifo reload to be refused")
    assert srv.status()["totals"]["reloads"] == 0
    assert "not a regular file" in srv.text()


def test_a_reload_failing_with_any_error_is_counted(serve, small_bundle, tmp_path):
    """Item 4 (daemon side): a load failing with a non-bundle error was a 'Task exception was never retrieved'."""
    model = tmp_path / "model"
    shutil.copytree(small_bundle, model)
    srv = serve(str(model))
    (model / "manifest.json").unlink()
    (model / "manifest.json").mkdir()  # open() raises IsADirectoryError unless the loader checks first
    srv.proc.send_signal(signal.SIGHUP)
    _wait_for(lambda: srv.status()["totals"]["reload_failures"] == 1, 30, "the reload to fail")
    with srv.client() as c:
        assert c.describe()["sha256"] == edge.load_bundle(small_bundle).sha256
    assert srv.stop() == 0
    assert "never retrieved" not in srv.text() and "reload of" in srv.text()
