"""File mode throughput: T-block calls against today's per-block path, same audio, one process, one thread.

    python bench/throughput.py [--bundle DIR [DIR ...]] [--weights H5] [--frames 32]
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

import numpy as np
from common import REPO, WORK, example_hops, skip, summary, write_result

import edge


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


def measure(bundle: edge.Bundle, x: np.ndarray, rounds: int, seconds: float) -> dict:
    """Rounds of edge.denoise on both paths of one bundle; rows, output comparison and the speed-up."""
    per_block = dataclasses.replace(bundle, batched=None)
    opts = edge.Options(num_threads=1)
    tname = f"T-block (T={bundle.batched.frames})"
    paths = {"per-block": per_block, tname: bundle}
    outs = {name: edge.denoise(x[:16000], b, opts) for name, b in paths.items()}  # warm-up
    times: dict[str, list[float]] = {name: [] for name in paths}
    wall: dict[str, list[float]] = {name: [] for name in paths}
    ratios: list[float] = []
    for r in range(rounds):
        this = {}
        for name in (list(paths) if r % 2 == 0 else list(paths)[::-1]):
            w0, c0 = time.perf_counter(), time.process_time()
            outs[name] = edge.denoise(x, paths[name], opts)
            this[name] = time.process_time() - c0
            times[name].append(this[name] / seconds)
            wall[name].append((time.perf_counter() - w0) / seconds)
        ratios.append(this["per-block"] / this[tname])
        print(f"{bundle.name} {bundle.quantization} round {r + 1}: "
              + "  ".join(f"{n} {v:.3f} s CPU" for n, v in this.items()) + f"  speed-up {ratios[-1]:.2f}x",
              file=sys.stderr)
    ref, test = outs["per-block"].astype(np.float64), outs[tname]
    err = float(np.max(np.abs(ref - test)))
    noise = float(np.sum((ref - test) ** 2))
    snr = 999.0 if noise == 0 else round(10 * np.log10(float(np.sum(ref ** 2)) / noise), 2)
    mode = bundle.quantization
    tag = f"{bundle.name} {mode}"
    rows = [{"what": f"{tag}, {n}: CPU seconds per second of audio", "unit": "ratio", **summary(times[n], 5)}
            for n in paths]
    rows += [{"what": f"{tag}, {n}: wall-clock real-time factor", "unit": "ratio", **summary(wall[n], 5)}
             for n in paths]
    speed = summary(ratios, 3)
    rows.append({"what": f"{tag}: speed-up of T-block over per-block (per-round CPU-time ratio)", "unit": "ratio",
                 **speed})
    v = bundle.batched.verification  # the tolerance the converter held it to (its mode's, convert/modes.py)
    if "tolerance_max_abs_error" in v:
        tol, same_ok = f"max abs <= {v['tolerance_max_abs_error']:g}", err <= v["tolerance_max_abs_error"]
    else:
        tol, same_ok = f"SNR >= {v['tolerance_snr_db']:g} dB", snr >= v["tolerance_snr_db"]
    return {"bundle": f"{bundle.name} ({mode}, {bundle.sha256[:8]})", "bundle_path": str(bundle.path),
            "frames": bundle.batched.frames, "rows": rows, "speed_up": speed,
            "output": {"max_abs_difference": err, "snr_db": snr, "tolerance": tol, "passed": bool(same_ok)}}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bundle", nargs="+", default=[str(REPO / "pretrained_model" / "dtln-16k" / m)
                                                   for m in ("dynamic", "float32")],
                   help="bundle folders; the goal is checked on the first (default: dtln-16k dynamic, float32)")
    p.add_argument("--weights", default=None, help="weights to add T-block graphs from (default: beside each bundle)")
    p.add_argument("--frames", type=int, default=32)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--seconds", type=float, default=30.0)
    args = p.parse_args()
    bundles = []
    for folder in map(Path, args.bundle):
        if not (folder / "manifest.json").is_file():
            skip(f"no bundle at {folder}")
        bundles.append(edge.load_bundle(upgraded(folder, Path(args.weights) if args.weights else None, args.frames)))
    x = np.concatenate(example_hops(args.seconds))
    runs = [measure(b, x, args.rounds, args.seconds) for b in bundles]
    first = runs[0]
    result = {
        "title": "File mode throughput: T-block calls vs per-block, edge.denoise, one thread",
        "seconds_of_audio": args.seconds, "rounds": args.rounds,
        "rows": [r for run in runs for r in run["rows"]],
        "bundles": [{k: v for k, v in run.items() if k != "rows"} for run in runs],
        "goals": [{"what": f"{first['bundle']}: T-block >= 4x faster than per-block (median of per-round ratios)",
                   "value": first["speed_up"]["median"], "goal": ">= 4", "met": first["speed_up"]["median"] >= 4}]
        + [{"what": f"{run['bundle']}: T-block output within the mode's tolerance of the per-block output",
            "value": run["output"]["max_abs_difference"], "goal": run["output"]["tolerance"],
            "met": run["output"]["passed"]} for run in runs],
        "notes": [f"{args.seconds:g} s of the example recording, whole signal per edge.denoise call, {args.rounds} "
                  "rounds, order alternating; the speed-up is per round (per-block time / T-block time).",
                  "Times are the process's CPU time (time.process_time; one interpreter thread), so a shared "
                  "machine's waits for a core are left out; the wall-clock real-time factors are given beside.",
                  "Per-block = the same bundle with batched=None: one invoke per submodel, one rfft and one "
                  "irfft per 8 ms hop (today's file path)."],
    }
    write_result("throughput", result)
    for run in runs:
        s, o = run["speed_up"], run["output"]
        print(f"{run['bundle']}: speed-up median {s['median']:.2f}x (min {s['min']:.2f}, max {s['max']:.2f}); "
              f"output max abs difference {o['max_abs_difference']:.3g}, SNR {o['snr_db']} dB")
    return 0 if all(run["output"]["passed"] for run in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
