"""Daemon soak: hours of churn squeezed into minutes, with hostile clients beside the good ones.

One `edge-denoise serve` process; beside it, in this process:
- good clients, ~4 at a time: each connects, streams 2-5 s of audio paced in real time (32 ms chunks,
  lock step), stops, checks that the output length equals the input length, and closes; then again;
- one slowloris: trickles a header one byte every 2 s, reconnecting whenever it is cut;
- one non-reader: starts a stream, sends 32 KB audio messages until the server stops reading, never
  reads; reconnects when the server closes it;
- one flooder: 1 MiB audio messages (32 s of audio each), one every --flood-interval seconds, read.
Every 10 s the server's RSS and open fds are read from /proc. A good client's chunk is late when its
answer comes back later than the chunk's own duration after it was sent. The goal (issue 19): RSS
growth after the first 5 minutes <= 10 MB over 30 minutes.

    python bench/soak.py [--model DIR] [--minutes 30] [--out FILE]   # -> bench/results/soak.json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from common import EXAMPLE, REPO, summary, write_result

sys.path.insert(0, str(REPO))

from edge.daemon import Client, DaemonError, float_to_pcm16, parse_uri, request_status

RATE = 16000
CHUNK = 512
"""Samples per good-client chunk (32 ms)."""


def proc_figures(pid: int) -> dict:
    """RSS (bytes) and open fds of a process, from /proc."""
    with open(f"/proc/{pid}/status", "rb") as f:
        rss = next(int(line.split()[1]) * 1024 for line in f if line.startswith(b"VmRSS:"))
    return {"rss_bytes": rss, "open_fds": len(os.listdir(f"/proc/{pid}/fd"))}


class Soak:
    """The clients and their counters; every thread runs until ``stop`` is set."""

    def __init__(self, uri: str, audio: bytes, stop: threading.Event):
        self.uri = uri
        self.path = parse_uri(uri).path
        self.audio = audio
        self.stop = stop
        self.lock = threading.Lock()
        self.c = {"good_streams": 0, "good_chunks": 0, "good_late_chunks": 0, "good_errors": 0,
                  "good_length_mismatches": 0, "slowloris_cut": 0, "slowloris_answered": 0, "nonreader_cut": 0,
                  "flood_messages": 0, "flood_errors": 0}
        self.round_trips: list[float] = []
        self.errors: list[str] = []

    def count(self, key: str, n: int = 1) -> None:
        with self.lock:
            self.c[key] += n

    def good(self, seed: int) -> None:
        rng = random.Random(seed)
        while not self.stop.is_set():
            seconds = rng.uniform(2.0, 5.0)
            start = rng.randrange(0, len(self.audio) // 2 - int(5 * RATE)) * 2
            data = self.audio[start:start + 2 * int(seconds * RATE)]
            try:
                self._good_stream(data)
            except (DaemonError, OSError) as exc:
                self.count("good_errors")
                with self.lock:
                    self.errors.append(f"good: {exc}")

    def _good_stream(self, data: bytes) -> None:
        step = 2 * CHUNK
        with Client(self.uri, timeout=30) as c:
            c.start()
            out, late, rts = 0, 0, []
            t_next = time.monotonic()
            for i in range(0, len(data), step):
                part = data[i:i + step]
                t0 = time.monotonic()
                out += len(c.send(part))
                rt = time.monotonic() - t0
                rts.append(rt)
                late += rt > len(part) / 2 / RATE
                t_next += len(part) / 2 / RATE
                time.sleep(max(0.0, t_next - time.monotonic()))
            out += len(c.stop())
        with self.lock:
            self.c["good_streams"] += 1
            self.c["good_chunks"] += len(rts)
            self.c["good_late_chunks"] += late
            self.c["good_length_mismatches"] += out != len(data)
            self.round_trips.extend(rts)

    def slowloris(self) -> None:
        line = b'{"type":"describe"}\n'
        while not self.stop.is_set():
            try:
                with socket.socket(socket.AF_UNIX) as s:
                    s.settimeout(2.0)
                    s.connect(self.path)
                    for b in line:
                        s.sendall(bytes([b]))
                        if self.stop.wait(2.0):
                            return
                    s.recv(4096)
                    self.count("slowloris_answered")
            except OSError:
                self.count("slowloris_cut")
                self.stop.wait(0.5)

    def nonreader(self) -> None:
        msg = b'{"type":"audio","bytes":32000}\n' + self.audio[:32000]
        while not self.stop.is_set():
            try:
                with socket.socket(socket.AF_UNIX) as s:
                    s.settimeout(1.0)
                    s.connect(self.path)
                    s.sendall(b'{"type":"start"}\n')
                    while not self.stop.is_set():
                        try:
                            s.sendall(msg)
                        except socket.timeout:
                            continue  # blocked: the server stopped reading us; keep trying, never read
            except OSError:
                self.count("nonreader_cut")
                self.stop.wait(0.5)

    def flooder(self, interval: float) -> None:
        big = (self.audio * 2)[: 1 << 20]
        while not self.stop.is_set():
            try:
                with Client(self.uri, timeout=120) as c:
                    c.start()
                    while not self.stop.is_set():
                        c.send(big)
                        self.count("flood_messages")
                        self.stop.wait(interval)
                    c.stop()
            except (DaemonError, OSError) as exc:
                self.count("flood_errors")
                with self.lock:
                    self.errors.append(f"flooder: {exc}")
                self.stop.wait(1.0)


def start_server(model: str, tmp: Path, workers: int | None) -> tuple[subprocess.Popen, str]:
    uri = f"unix://{tmp}/soak.sock"
    # --idle-timeout above the flooder's pause between messages, so that only the hostile clients are cut
    cmd = [sys.executable, "-m", "edge.cli", "serve", "--model", model, "--uri", uri, "--idle-timeout", "10",
           "--header-timeout", "5", "--output-buffer-bytes", "65536", "-q"]
    if workers:
        cmd += ["--workers", str(workers)]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=open(tmp / "serve.log", "wb"))
    deadline = time.monotonic() + 60
    while True:
        try:
            request_status(parse_uri(f"unix://{tmp}/soak.control.sock"), timeout=5)
            return proc, uri
        except DaemonError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"serve did not start: {(tmp / 'serve.log').read_text()[-2000:]}") from None
            time.sleep(0.2)


def sample_loop(proc: subprocess.Popen, control: str, minutes: float, samples: list, stop: threading.Event) -> None:
    t0 = time.monotonic()
    end = t0 + 60 * minutes
    while time.monotonic() < end and proc.poll() is None:
        fig = proc_figures(proc.pid)
        try:
            st = request_status(parse_uri(control), timeout=10)
            fig.update(open=st["totals"]["open"], connections=st["totals"]["connections"])
        except DaemonError:
            fig.update(open=None, connections=None)
        fig["t_s"] = round(time.monotonic() - t0, 1)
        samples.append(fig)
        print(f"{fig['t_s'] / 60:6.1f} min: RSS {fig['rss_bytes'] / 2**20:6.1f} MiB, fds {fig['open_fds']}, open "
              f"{fig['open']}, connections {fig['connections']}", file=sys.stderr, flush=True)
        time.sleep(max(0.0, min(10.0, end - time.monotonic())))
    stop.set()


def at(samples: list, minute: float) -> dict | None:
    """The sample closest to ``minute`` (None if the run did not get there)."""
    t = 60 * minute
    if not samples or samples[-1]["t_s"] < t - 10:
        return None
    return min(samples, key=lambda s: abs(s["t_s"] - t))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="bundle folder (default: edge-denoise's default bundle)")
    p.add_argument("--minutes", type=float, default=30.0, help="length of the soak (default 30)")
    p.add_argument("--good", type=int, default=4, help="good clients streaming at a time (default 4)")
    p.add_argument("--flood-interval", type=float, default=5.0,
                   help="seconds between the flooder's 1 MiB messages (default 5; keep it under the server's "
                        "--idle-timeout of 10 s)")
    p.add_argument("--workers", type=int, default=None, help="serve --workers (default: serve's default)")
    p.add_argument("--without", nargs="*", default=[], choices=["slowloris", "nonreader", "flooder"],
                   help="leave these hostile clients out (to find which one a growth comes with)")
    p.add_argument("--out", default=None, help="write the JSON there instead of bench/results/soak.json")
    args = p.parse_args()
    from edge.cmd_denoise import default_model

    model = args.model or default_model()
    import soundfile as sf

    x, sr = sf.read(EXAMPLE, dtype="float32")
    audio = float_to_pcm16(np.resize(x, 60 * RATE))
    tmp = Path(tempfile.mkdtemp(prefix="edge-soak-"))
    proc, uri = start_server(model, tmp, args.workers)
    stop = threading.Event()
    soak = Soak(uri, audio, stop)
    threads = [threading.Thread(target=soak.good, args=(k,), daemon=True) for k in range(args.good)]
    hostile = {"slowloris": (soak.slowloris, ()), "nonreader": (soak.nonreader, ()),
               "flooder": (soak.flooder, (args.flood_interval,))}
    threads += [threading.Thread(target=f, args=a, daemon=True) for k, (f, a) in hostile.items()
                if k not in args.without]
    for t in threads:
        t.start()
    samples: list[dict] = []
    try:
        sample_loop(proc, f"unix://{tmp}/soak.control.sock", args.minutes, samples, stop)
    finally:
        stop.set()
        for t in threads:
            t.join(15)
        final = request_status(parse_uri(f"unix://{tmp}/soak.control.sock"), timeout=10)
        proc.terminate()
        rc = proc.wait(30)
    doc = report(args, model, samples, soak, final, rc)
    doc.update(rows_and_goals(doc))
    print(json.dumps({k: doc[k] for k in ("rss_mib", "rss_growth_after_5_min_mib", "good_clients")}, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(doc, indent=1) + "\n")
    else:
        write_result("soak", doc)
    return 0


def report(args, model: str, samples: list, soak: Soak, final: dict, rc: int) -> dict:
    import edge

    mib = lambda b: None if b is None else round(b / 2**20, 2)  # noqa: E731
    marks = {f"{m:g}_min": mib(s["rss_bytes"]) if (s := at(samples, m)) else None for m in (1, 5, 10, 30)}
    base = at(samples, 5)
    after5 = [s["rss_bytes"] for s in samples if base and s["t_s"] >= base["t_s"]]
    c = soak.c
    rt = np.asarray(soak.round_trips) * 1e3
    b = edge.load_bundle(model)
    return {
        "title": "Daemon soak: RSS, fds and late chunks under churn with hostile clients",
        "settings": {"minutes": args.minutes, "good_clients": args.good, "stream_seconds": [2, 5],
                     "chunk_samples": CHUNK, "flood_interval_s": args.flood_interval, "workers": args.workers,
                     "without": args.without,
                     "model": b.name, "model_sha256": b.sha256},
        "rss_mib": {"start": mib(samples[0]["rss_bytes"]) if samples else None, **marks,
                    "end": mib(samples[-1]["rss_bytes"]) if samples else None,
                    "max": mib(max(s["rss_bytes"] for s in samples)) if samples else None},
        "rss_growth_after_5_min_mib": mib(samples[-1]["rss_bytes"] - base["rss_bytes"]) if base else None,
        "rss_max_above_5_min_mib": mib(max(after5) - base["rss_bytes"]) if base else None,
        "goal": "RSS growth after the first 5 minutes <= 10 MB",
        "open_fds": {"start": samples[0]["open_fds"] if samples else None,
                     "end": samples[-1]["open_fds"] if samples else None,
                     "max": max(s["open_fds"] for s in samples) if samples else None},
        "good_clients": {"streams": c["good_streams"], "chunks": c["good_chunks"],
                         "late_chunks": c["good_late_chunks"],
                         "late_fraction": round(c["good_late_chunks"] / max(1, c["good_chunks"]), 5),
                         "length_mismatches": c["good_length_mismatches"], "errors": c["good_errors"],
                         "round_trip_ms": {**summary(rt, 3), "p99": round(float(np.percentile(rt, 99)), 3)}
                         if len(rt) else None},
        "hostile_clients": {k: v for k, v in c.items() if not k.startswith("good")},
        "server": {"connections": final["totals"]["connections"], "refused": final["totals"]["refused"],
                   "ends": final["totals"]["ends"], "streams_finished": final["totals"]["streams_finished"],
                   "exit_status": rc},
        "errors_sample": soak.errors[:10],
        "samples": samples,
    }


def rows_and_goals(doc: dict) -> dict:
    """The figures as rows and the goal as a check, in the form bench/report.py renders."""
    rows = [{"what": f"server RSS at {k.replace('_', ' ')}", "unit": "MiB", "median": v, "min": v, "max": v, "n": 1}
            for k, v in doc["rss_mib"].items() if v is not None]
    fds = [x["open_fds"] for x in doc["samples"]]
    if fds:
        rows.append({"what": "server open fds over the run (median column: at the end)", "unit": "fds",
                     "median": fds[-1], "min": min(fds), "max": max(fds), "n": len(fds)})
    good = doc["good_clients"]
    rows.append({"what": f"good clients' late chunks ({good['chunks']} chunks, {good['streams']} streams)",
                 "unit": "%", "median": 100 * good["late_fraction"], "n": good["chunks"]})
    if good["round_trip_ms"]:
        rt = good["round_trip_ms"]
        rows.append({"what": f"good clients' chunk round trip (p99 {rt['p99']:.1f} ms)", "unit": "ms",
                     "median": rt["median"], "min": rt["min"], "max": rt["max"], "n": rt["n"]})
    growth = doc["rss_growth_after_5_min_mib"]
    mb = None if growth is None else round(growth * 2**20 / 1e6, 2)
    goals = [{"what": "RSS growth after the first 5 minutes (MB)", "value": mb, "goal": "<= 10 MB",
              "met": mb is not None and mb <= 10}]
    notes = [f"{doc['server']['connections']} connections; ends: {doc['server']['ends']}; hostile clients: "
             f"{doc['hostile_clients']}. A chunk is late when its answer takes longer than its 32 ms of audio."]
    return {"rows": rows, "goals": goals, "notes": notes}


if __name__ == "__main__":
    sys.exit(main())
