"""Start-up time: from launching a process to its first denoised output, median of several runs.

Rows: the Python API (a child that imports edge, loads a bundle, builds a stream and processes one
block, then prints; it also reports its own import/load/first-block split), the CLI on raw PCM (one
block in, stdin closed, time to the first output byte), and a bare ``python -c pass`` for the floor.

    python bench/startup.py [--runs 7]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time

from common import published_bundles, summary, write_result

CHILD = """
import sys, time
t0 = time.perf_counter()
import numpy as np
import edge
t1 = time.perf_counter()
bundle = edge.load_bundle(sys.argv[1])
t2 = time.perf_counter()
den = edge.StreamingDenoiser(bundle)
t3 = time.perf_counter()
y = den.process(np.zeros(den.block_shift, np.float32))
t4 = time.perf_counter()
print(len(y), *(round(1e3 * d, 3) for d in (t1 - t0, t2 - t1, t3 - t2, t4 - t3)), flush=True)
"""
SPLIT = ("import_ms", "load_bundle_ms", "stream_ms", "first_block_ms")


def api_run(bundle: str) -> tuple[float, dict[str, float]]:
    t0 = time.perf_counter()
    p = subprocess.Popen([sys.executable, "-c", CHILD, bundle], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    line = p.stdout.readline()
    elapsed = time.perf_counter() - t0
    p.wait()
    fields = line.split()
    if p.returncode != 0 or len(fields) != 5:
        raise SystemExit(f"API child failed ({p.returncode}): {line!r}")
    return 1e3 * elapsed, dict(zip(SPLIT, map(float, fields[1:]), strict=True))


def cli_run(cli: list[str], bundle: str) -> float:
    block = bytes(2 * 128)
    t0 = time.perf_counter()
    p = subprocess.Popen(cli + ["denoise", "-", "-q", "--model", bundle], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    p.stdin.write(block)
    p.stdin.close()
    first = p.stdout.read(1)
    elapsed = time.perf_counter() - t0
    p.stdout.read()
    p.wait()
    if p.returncode != 0 or not first:
        raise SystemExit(f"CLI child failed ({p.returncode})")
    return 1e3 * elapsed


def bare_run() -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    return 1e3 * (time.perf_counter() - t0)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=7, help="timed runs per row, after one untimed (default: 7)")
    args = p.parse_args()
    bundles = published_bundles(("float32", "dynamic"))
    exe = shutil.which("edge-denoise")
    cli = [exe] if exe else [sys.executable, "-m", "edge.cli"]
    cases = {
        "python -c pass (interpreter floor)": bare_run,
        "API: import, load float32 bundle, first block": lambda: api_run(bundles["float32"]),
        "API: import, load dynamic bundle, first block": lambda: api_run(bundles["dynamic"]),
        "CLI raw PCM, float32 bundle: one block in, first byte out": lambda: cli_run(cli, bundles["float32"]),
    }
    results: dict[str, list] = {}
    for _ in range(args.runs + 1):  # interleave the rows; the first pass warms the file cache
        for what, fn in cases.items():
            results.setdefault(what, []).append(fn())
    rows = []
    for what, runs in results.items():
        runs = runs[1:]
        totals = [r[0] if isinstance(r, tuple) else r for r in runs]
        row = {"what": what, "unit": "ms", **summary(totals, 1)}
        if isinstance(runs[0], tuple):
            row["split_ms"] = {k: round(statistics.median(r[1][k] for r in runs), 1) for k in SPLIT}
        rows.append(row)
        print(f"{what:<58} median {row['median']:.0f} ms (min {row['min']:.0f}, max {row['max']:.0f})"
              + (f"  split {row['split_ms']}" if "split_ms" in row else ""))
    write_result("startup", {
        "title": "Start-up: process launch to first denoised output",
        "settings": {"runs": args.runs, "untimed_runs": 1, "threads": 1, "python": sys.executable,
                     "interleave": "the rows take turns run by run"},
        "rows": rows, "goals": [],
        "notes": ["split_ms is measured inside the child from its first line, so the rest of the total is the "
                  "Python interpreter's own start-up.",
                  "load_bundle_ms includes importing the interpreter package (edge imports it on first use) and "
                  "building one interpreter per submodel to check its tensors; the stream builds its own.",
                  "The CLI writes raw PCM through a buffered stdout, so its first byte leaves at exit here."]})
    return 0


if __name__ == "__main__":
    sys.exit(main())
