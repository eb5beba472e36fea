"""File mode throughput: T-block calls against today's per-block path, same audio, one process, one thread.

    python bench/throughput.py [--bundle pretrained_model/dtln-16k/dynamic] [--weights H5] [--frames 64]
                               [--rounds 7] [--seconds 30]

Both paths run ``edge.denoise`` on the same signal (the example recording repeated to ``--seconds``):
the bundle as loaded (T-block graphs where its manifest offers them) and the same bundle with
``batched=None`` (one interpreter call per submodel, one rfft and one irfft per hop). Rounds alternate
the order; the speed-up is taken within each round. The outputs of the two paths are compared sample by
sample (max abs difference, SNR) against the mode's tolerance.

A bundle without T-block graphs is copied to ``$EDGE_BENCH_WORK`` and upgraded there with
``python -m convert.batched`` (needs the convert extra and the weights it was converted from; default:
the ``*_weights.h5`` beside the bundle folder). Shipped bundles are never modified.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from common import REPO, WORK, example_hops, skip, summary, write_result  # noqa: I001

import numpy as np  # noqa: E402

import edge  # noqa: E402

MAX_ABS = {"none": 1e-5}
SNR_DB = {"float16": 60.0, "dynamic": 30.0}


def upgraded(folder: Path, weights: Path | None, frames: int) -> Path:
    """``folder`` itself when it has T-block graphs over ``frames`` hops, else an upgraded copy in WORK."""
    m = json.loads((folder / "manifest.json").read_text())
    if m.get("batched", {}).get("frames") == frames:
        return folder
    copy = WORK / f"throughput-{folder.parent.name}-{folder.name}-t{frames}"
    if (copy / "manifest.json").is_file():
        cm = json.loads((copy / "manifest.json").read_text())
        if cm.get("batched", {}).get("frames") == frames and \
                [s["sha256"] for s in cm["submodels"]] == [s["sha256"] for s in m["submodels"]]:
            return copy
    if weights is None:
        found = sorted(folder.parent.glob("*_weights.h5"))
        if not found:
            skip(f"{folder} has no T-block graphs and no --weights were given to add them")
        weights = found[0]
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(folder, copy)
    cmd = [sys.executable, "-m", "convert.batched", str(copy), "--weights", str(weights), "--frames", str(frames),
           "--quiet"]
    print("building", " ".join(cmd), file=sys.stderr, flush=True)
    subprocess.run(cmd, cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    return copy


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bundle", default=str(REPO / "pretrained_model" / "dtln-16k" / "dynamic"))
    p.add_argument("--weights", default=None, help="weights to add T-block graphs from (default: beside the bundle)")
    p.add_argument("--frames", type=int, default=64)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--seconds", type=float, default=30.0)
    args = p.parse_args()
    folder = Path(args.bundle)
    if not (folder / "manifest.json").is_file():
        skip(f"no bundle at {folder}")
    bundle = edge.load_bundle(upgraded(folder, Path(args.weights) if args.weights else None, args.frames))
    per_block = dataclasses.replace(bundle, batched=None)
    x = np.concatenate(example_hops(args.seconds))
    opts = edge.Options(num_threads=1)
    paths = {"per-block": per_block, f"T-block (T={bundle.batched.frames})": bundle}
    outs = {name: edge.denoise(x[:16000], b, opts) for name, b in paths.items()}  # warm-up
    times: dict[str, list[float]] = {name: [] for name in paths}
    wall: dict[str, list[float]] = {name: [] for name in paths}
    ratios: list[float] = []
    for r in range(args.rounds):
        this = {}
        for name in (list(paths) if r % 2 == 0 else list(paths)[::-1]):
            w0, c0 = time.perf_counter(), time.process_time()
            outs[name] = edge.denoise(x, paths[name], opts)
            this[name] = time.process_time() - c0
            times[name].append(this[name] / args.seconds)
            wall[name].append((time.perf_counter() - w0) / args.seconds)
        ratios.append(this["per-block"] / this[list(paths)[1]])
        print(f"round {r + 1}: " + "  ".join(f"{n} {v:.3f} s CPU" for n, v in this.items())
              + f"  speed-up {ratios[-1]:.2f}x", file=sys.stderr)
    ref, test = outs.values()
    err = float(np.max(np.abs(ref.astype(np.float64) - test)))
    noise = float(np.sum((ref.astype(np.float64) - test) ** 2))
    snr = 999.0 if noise == 0 else round(10 * np.log10(float(np.sum(ref.astype(np.float64) ** 2)) / noise), 2)
    mode = bundle.quantization
    same_ok = err <= MAX_ABS[mode] if mode in MAX_ABS else snr >= SNR_DB[mode]
    speed = summary(ratios, 3)
    rows = [{"what": f"{n}: CPU seconds per second of audio", "unit": "ratio", **summary(times[n], 5)}
            for n in paths]
    rows += [{"what": f"{n}: wall-clock real-time factor", "unit": "ratio", **summary(wall[n], 5)} for n in paths]
    rows.append({"what": "speed-up of T-block over per-block (per-round ratio)", "unit": "ratio", **speed})
    result = {
        "title": "File mode throughput: T-block calls vs per-block, edge.denoise, one thread",
        "bundle": f"{bundle.name} ({mode}, {bundle.sha256[:8]})", "bundle_path": str(bundle.path),
        "frames": bundle.batched.frames, "seconds_of_audio": args.seconds, "rounds": args.rounds,
        "rows": rows,
        "output": {"max_abs_difference": err, "snr_db": snr,
                   "tolerance": f"max abs <= {MAX_ABS[mode]:g}" if mode in MAX_ABS else f"SNR >= {SNR_DB[mode]:g} dB"},
        "goals": [{"what": "T-block >= 4x faster than per-block (median of per-round ratios)",
                   "value": speed["median"], "goal": ">= 4", "met": speed["median"] >= 4},
                  {"what": "T-block output within the mode's tolerance of the per-block output",
                   "value": err, "goal": "max abs <= 1e-5" if mode in MAX_ABS else f"SNR >= {SNR_DB[mode]:g} dB",
                   "met": bool(same_ok)}],
        "notes": [f"{args.seconds:g} s of the example recording, whole signal per edge.denoise call, {args.rounds} "
                  "rounds, order alternating; the speed-up is per round (per-block time / T-block time).",
                  "Times are the process's CPU time (time.process_time; one interpreter thread), so a shared "
                  "machine's waits for a core are left out; the wall-clock real-time factors are given beside.",
                  "Per-block = the same bundle with batched=None: one invoke per submodel, one rfft and one "
                  "irfft per 8 ms hop (today's file path)."],
    }
    write_result("throughput", result)
    print(f"speed-up median {speed['median']:.2f}x (min {speed['min']:.2f}, max {speed['max']:.2f}); "
          f"output max abs difference {err:.3g}, SNR {snr} dB")
    return 0 if same_ok else 1


if __name__ == "__main__":
    sys.exit(main())
