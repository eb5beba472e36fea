"""Many streams per invoke: RSS per added stream and streams one core sustains, engine vs streams alone.

    python bench/batch_streams.py [--bundle pretrained_model/dtln-16k/dynamic] [--weights H5] [--batch 64]
                                  [--rounds 5] [--seconds 2]

Two ways to run B streams in one process, one thread:
- alone: B ``edge.StreamingDenoiser`` objects, each with its own interpreters (today's daemon);
- engine: one ``edge.batch.BatchEngine`` (one interpreter per submodel, states [B, ...]).
RSS: a child process per (way, stream count) opens the streams, feeds each 1 s hop by hop and reports
VmRSS; per added stream = (RSS with B streams - RSS with 1) / (B - 1), median of 3 children.
Compute: every stream gets one 8 ms hop per tick, as from live clients; CPU time per stream-hop over
``--seconds`` of audio, rounds alternating; streams per core = 8 ms / that time. The engine's outputs
are compared with the streams alone. A bundle without ``streams`` graphs is copied to
``$EDGE_BENCH_WORK`` and upgraded there with ``python -m convert.streams`` (convert extra needed).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from common import REPO, WORK, example_hops, skip, summary, write_result

import edge
from edge.batch import BatchEngine


def upgraded(folder: Path, weights: Path | None, batch: int) -> Path:
    m = json.loads((folder / "manifest.json").read_text())
    if m.get("streams", {}).get("batch") == batch:
        return folder
    copy = WORK / f"streams-{folder.parent.name}-{folder.name}-b{batch}"
    if (copy / "manifest.json").is_file():
        cm = json.loads((copy / "manifest.json").read_text())
        if cm.get("streams", {}).get("batch") == batch and \
                [s["sha256"] for s in cm["submodels"]] == [s["sha256"] for s in m["submodels"]]:
            return copy
    if weights is None:
        found = sorted(folder.parent.glob("*_weights.h5"))
        if not found:
            skip(f"{folder} has no streams graphs and no --weights were given to add them")
        weights = found[0]
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(folder, copy)
    cmd = [sys.executable, "-m", "convert.streams", str(copy), "--weights", str(weights), "--batch", str(batch), "-q"]
    print("building", " ".join(cmd), file=sys.stderr, flush=True)
    subprocess.run(cmd, cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    return copy


def vm_rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status (Linux only)")


def child(path: str, way: str, n: int) -> None:
    """Open ``n`` streams one way, feed each 1 s hop by hop, print VmRSS in kB."""
    bundle = edge.load_bundle(path)
    hops = example_hops(1.0)
    if way == "alone":
        dens = [edge.StreamingDenoiser(bundle) for _ in range(n)]
        for h in hops:
            for d in dens:
                d.process(h)
    else:
        eng = BatchEngine(bundle)
        slots = [eng.open() for _ in range(n)]
        for h in hops:
            eng.process({k: h for k in slots})
    print(json.dumps({"rss_kb": vm_rss_kb()}))


def rss(path: str, way: str, n: int, runs: int = 3) -> float:
    out = []
    for _ in range(runs):
        r = subprocess.run([sys.executable, __file__, "--child", path, way, str(n)], capture_output=True, text=True,
                           check=True, cwd=REPO)
        out.append(json.loads(r.stdout.strip().splitlines()[-1])["rss_kb"] / 1024)
    return float(np.median(out))


def compute(bundle: edge.Bundle, batch: int, rounds: int, seconds: float) -> tuple[dict, dict, float]:
    """CPU ms per stream-hop of each way over rounds; and the largest output difference."""
    hops = example_hops(seconds)
    times: dict[str, list[float]] = {"alone": [], "engine": []}
    outs: dict[str, list] = {}
    for r in range(rounds):
        for way in (("alone", "engine") if r % 2 == 0 else ("engine", "alone")):
            if way == "alone":
                dens = [edge.StreamingDenoiser(bundle) for _ in range(batch)]
                ys = [[] for _ in range(batch)]
                c0 = time.process_time()
                for k, h in enumerate(hops):
                    for j, d in enumerate(dens):
                        ys[j].append(d.process(np.roll(h, j) if k == 0 else h))
            else:
                eng = BatchEngine(bundle)
                slots = [eng.open() for _ in range(batch)]
                ys = [[] for _ in range(batch)]
                c0 = time.process_time()
                for k, h in enumerate(hops):
                    got = eng.process({s: (np.roll(h, j) if k == 0 else h) for j, s in enumerate(slots)})
                    for j, s in enumerate(slots):
                        ys[j].append(got[s])
            times[way].append((time.process_time() - c0) * 1e3 / (len(hops) * batch))
            outs[way] = [np.concatenate(y) for y in ys]
        print(f"round {r + 1}: alone {times['alone'][-1] if times['alone'] else 0:.4f}  "
              f"engine {times['engine'][-1] if times['engine'] else 0:.4f} ms CPU per stream-hop", file=sys.stderr)
    # the engine's output is aligned (the model's delay dropped), the streams' alone is not
    lat = bundle.latency_samples
    err = max(float(np.max(np.abs(a[lat:] - b[:len(a) - lat])))
              for a, b in zip(outs["alone"], outs["engine"], strict=True))
    return summary(times["alone"], 5), summary(times["engine"], 5), err


def main() -> int:
    if len(sys.argv) == 5 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3], int(sys.argv[4]))
        return 0
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bundle", default=str(REPO / "pretrained_model" / "dtln-16k" / "dynamic"))
    p.add_argument("--weights", default=None)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--seconds", type=float, default=2.0)
    args = p.parse_args()
    folder = Path(args.bundle)
    if not (folder / "manifest.json").is_file():
        skip(f"no bundle at {folder}")
    path = str(upgraded(folder, Path(args.weights) if args.weights else None, args.batch))
    bundle = edge.load_bundle(path)
    b = args.batch
    mem = {way: {n: rss(path, way, n) for n in (1, b)} for way in ("alone", "engine")}
    per = {way: (mem[way][b] - mem[way][1]) / (b - 1) for way in mem}
    alone, engine, err = compute(bundle, b, args.rounds, args.seconds)
    hop_ms = 1000 * bundle.block_shift / bundle.sample_rate
    rows = [{"what": f"RSS with {n} stream(s), {way} (MB, median of 3 processes)", "unit": "MB", "median": v, "n": 3}
            for way in mem for n, v in mem[way].items()]
    rows += [{"what": f"RSS per added stream, {way}", "unit": "MB", "median": round(v, 3)} for way, v in per.items()]
    rows += [{"what": f"CPU per stream-hop, {b} streams, alone", "unit": "ms/block", **alone},
             {"what": f"CPU per stream-hop, {b} streams, one engine (batch {b})", "unit": "ms/block", **engine},
             {"what": "real-time streams per core, alone (8 ms / median)", "unit": "streams",
              "median": round(hop_ms / alone["median"], 1)},
             {"what": f"real-time streams per core, engine (batch {b})", "unit": "streams",
              "median": round(hop_ms / engine["median"], 1)}]
    result = {
        "title": f"Batched streams: one engine (batch {b}) vs {b} streams alone, one thread",
        "bundle": f"{bundle.name} ({bundle.quantization}, {bundle.sha256[:8]})", "bundle_path": path,
        "rows": rows,
        "output": {"max_abs_difference_engine_vs_alone": err},
        "goals": [{"what": "RSS per added stream, engine", "value": per["engine"], "goal": "<= 0.5 MB",
                   "met": per["engine"] <= 0.5}],
        "notes": ["Compute is model work only (framing, FFTs, invokes), every stream fed one 8 ms hop per tick in "
                  "one process; a daemon adds its sockets and scheduling on top. Streams per core is "
                  "8 ms / CPU per stream-hop, with nothing left for anything else.",
                  "RSS children feed 1 s per stream so every arena is allocated."],
    }
    write_result("batch_streams", result)
    print(f"RSS per added stream: alone {per['alone']:.3f} MB, engine {per['engine']:.3f} MB; streams per core: "
          f"alone {hop_ms / alone['median']:.1f}, engine {hop_ms / engine['median']:.1f}; max abs {err:.3g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
