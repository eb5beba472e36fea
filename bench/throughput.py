"""File mode throughput: T-block calls against today's per-block path, same audio, one process, one thread.

    python bench/throughput.py [--bundle DIR [DIR ...]] [--weights H5] [--frames 32]
                               [--rounds 7] [--seconds 30]

Both paths run ``edge.denoise`` on the same signal (the example recording repeated to ``--seconds``):
the bundle as loaded (T-block graphs where its manifest offers them; with ai-edge-litert one packed copy
of each weight, ``edge.interpreter.SharedWeightsModel``), the same through the plain interpreter
(``Options(shared_weights=False)``: the recurrent weights packed once per unrolled hop), and the same
bundle with ``batched=None`` (one interpreter call per submodel, one rfft and one irfft per hop). Rounds alternate
the order; the speed-up is taken within each round. The outputs of the two paths are compared sample by
sample (max abs difference, SNR) against the mode's tolerance.

Where a bundle also has batch-axis graphs (manifest ``streams``), the same rounds time their invokes at
``--floor-rows`` independent rows per call (no recurrence at batch 1, no Python per hop, no FFT): the
graphs' cost per hop of one stream when every matmul has many rows. For DTLN, whose cost is its matmuls,
that is the floor: per-block time over it bounds what any exact file-mode path (T-block calls or anything
else that keeps one stream's hops in order) can gain on this machine. PoCoNet's T-block graph already
runs below it (its convolutions over T frames beat 64 rows of one frame), so there it bounds nothing.

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
from edge.batch import SECTION as STREAMS
from edge.batch import parse_streams
from edge.bundle import check_interpreter
from edge.interpreter import make_interpreter


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


class Floor:
    """The bundle's batch-axis graphs resized to ``rows`` streams, random inputs: ``per_hop()`` is the invoke
    time of all of them divided by ``rows`` (seconds per hop of one stream)."""

    def __init__(self, bundle: edge.Bundle, rows: int):
        streams = parse_streams(bundle)
        self.rows = rows = rows if streams.resizable else streams.batch
        self.its = []
        rng = np.random.default_rng(0)
        for spec in streams.submodels:
            it = make_interpreter(spec.content, 1, True)
            index = check_interpreter(bundle, spec, it)
            if streams.resizable:
                for t in spec.inputs:
                    it.resize_tensor_input(index[t.name], [rows, *t.shape[1:]])
                it.allocate_tensors()
            for t in spec.inputs:
                it.set_tensor(index[t.name], (rng.random((rows, *t.shape[1:])) * 0.1).astype(np.float32))
            it.invoke()
            self.its.append(it)

    def per_hop(self, calls: int = 200) -> float:
        c0 = time.process_time()
        for _ in range(calls):
            for it in self.its:
                it.invoke()
        return (time.process_time() - c0) / calls / self.rows


def measure(bundle: edge.Bundle, x: np.ndarray, rounds: int, seconds: float, floor_rows: int = 64) -> dict:
    """Rounds of edge.denoise on both paths of one bundle; rows, output comparison and the speed-up."""
    per_block = dataclasses.replace(bundle, batched=None)
    opts = edge.Options(num_threads=1)
    tname = f"T-block (T={bundle.batched.frames})"
    plain = f"T-block (T={bundle.batched.frames}), one packed weight copy per hop"
    paths = {"per-block": (per_block, opts), tname: (bundle, opts),
             plain: (bundle, dataclasses.replace(opts, shared_weights=False))}
    outs = {name: edge.denoise(x[:16000], *b) for name, b in paths.items()}  # warm-up
    times: dict[str, list[float]] = {name: [] for name in paths}
    wall: dict[str, list[float]] = {name: [] for name in paths}
    ratios: list[float] = []
    plain_ratios: list[float] = []
    floor = Floor(bundle, floor_rows) if STREAMS in bundle.manifest and floor_rows > 0 else None
    floors: list[float] = []
    ceilings: list[float] = []
    hops = len(x) / bundle.block_shift
    for r in range(rounds):
        this = {}
        for name in (list(paths) if r % 2 == 0 else list(paths)[::-1]):
            w0, c0 = time.perf_counter(), time.process_time()
            outs[name] = edge.denoise(x, *paths[name])
            this[name] = time.process_time() - c0
            times[name].append(this[name] / seconds)
            wall[name].append((time.perf_counter() - w0) / seconds)
        ratios.append(this["per-block"] / this[tname])
        plain_ratios.append(this["per-block"] / this[plain])
        if floor is not None:
            floors.append(floor.per_hop())
            ceilings.append(this["per-block"] / hops / floors[-1])
        print(f"{bundle.name} {bundle.quantization} round {r + 1}: "
              + "  ".join(f"{n} {v:.3f} s CPU" for n, v in this.items()) + f"  speed-up {ratios[-1]:.2f}x",
              file=sys.stderr)
    ref = outs["per-block"].astype(np.float64)

    def compare(test: np.ndarray) -> tuple[float, float]:
        noise = float(np.sum((ref - test) ** 2))
        snr = 999.0 if noise == 0 else round(10 * np.log10(float(np.sum(ref ** 2)) / noise), 2)
        return float(np.max(np.abs(ref - test))), snr

    err, snr = compare(outs[tname])
    err_plain, snr_plain = compare(outs[plain])
    mode = bundle.quantization
    tag = f"{bundle.name} {mode}"
    rows = [{"what": f"{tag}, {n}: CPU seconds per second of audio", "unit": "ratio", **summary(times[n], 5)}
            for n in paths]
    rows += [{"what": f"{tag}, {n}: wall-clock real-time factor", "unit": "ratio", **summary(wall[n], 5)}
             for n in paths]
    speed = summary(ratios, 3)
    rows.append({"what": f"{tag}: speed-up of T-block over per-block (per-round CPU-time ratio)", "unit": "ratio",
                 **speed})
    rows.append({"what": f"{tag}: speed-up of T-block with one packed weight copy per hop (the plain interpreter) "
                         "over per-block", "unit": "ratio", **summary(plain_ratios, 3)})
    if floor is not None:
        per_block_us = [t * seconds / hops * 1e6 for t in times["per-block"]]
        rows += [{"what": f"{tag}, per-block: CPU per hop", "unit": "us", **summary(per_block_us, 2)},
                 {"what": f"{tag}, T-block: CPU per hop", "unit": "us",
                  **summary([t * seconds / hops * 1e6 for t in times[tname]], 2)},
                 {"what": f"{tag}, batch-axis graphs at {floor.rows} rows per call: invoke CPU per hop of one "
                          "stream (every matmul with that many rows: DTLN's floor)", "unit": "us",
                  **summary([f * 1e6 for f in floors], 2)},
                 {"what": f"{tag}: per-block / batch-axis graphs (for DTLN the most any exact file-mode path "
                          "can gain here)", "unit": "ratio", **summary(ceilings, 3)}]
    v = bundle.batched.verification  # the tolerance the converter held it to (its mode's, convert/modes.py)
    if "tolerance_max_abs_error" in v:
        tol = f"max abs <= {v['tolerance_max_abs_error']:g}"
        same_ok = max(err, err_plain) <= v["tolerance_max_abs_error"]
    else:
        tol, same_ok = f"SNR >= {v['tolerance_snr_db']:g} dB", min(snr, snr_plain) >= v["tolerance_snr_db"]
    return {"bundle": f"{bundle.name} ({mode}, {bundle.sha256[:8]})", "bundle_path": str(bundle.path),
            "frames": bundle.batched.frames, "rows": rows, "speed_up": speed,
            "ceiling": summary(ceilings, 3) if ceilings else None,
            "output": {"max_abs_difference": err, "snr_db": snr, "tolerance": tol, "passed": bool(same_ok),
                       "one_copy_per_hop": {"max_abs_difference": err_plain, "snr_db": snr_plain}}}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bundle", nargs="+", default=[str(REPO / "pretrained_model" / "dtln-16k" / m)
                                                   for m in ("dynamic", "float32")],
                   help="bundle folders; the goal is checked on the first (default: dtln-16k dynamic, float32)")
    p.add_argument("--weights", default=None, help="weights to add T-block graphs from (default: beside each bundle)")
    p.add_argument("--frames", type=int, default=32)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--floor-rows", type=int, default=64,
                   help="rows per call when timing the batch-axis graphs (0: skip them)")
    p.add_argument("--result", default="throughput", help="results file name (bench/results/NAME.json)")
    args = p.parse_args()
    bundles = []
    for folder in map(Path, args.bundle):
        if not (folder / "manifest.json").is_file():
            skip(f"no bundle at {folder}")
        bundles.append(edge.load_bundle(upgraded(folder, Path(args.weights) if args.weights else None, args.frames)))
    x = np.concatenate(example_hops(args.seconds))
    runs = [measure(b, x, args.rounds, args.seconds, args.floor_rows) for b in bundles]
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
                  "irfft per 8 ms hop (today's file path).",
                  "T-block runs its graphs with one packed copy of each weight where the runtime can (ai-edge-litert: "
                  "edge.interpreter.SharedWeightsModel); the row 'one packed weight copy per hop' is the same graphs "
                  "through the plain interpreter (Options(shared_weights=False)), which packs the recurrent weights "
                  "once per unrolled hop.",
                  "Batch-axis graphs: the bundle's (manifest streams) resized to --floor-rows rows, random inputs, "
                  "invokes only, CPU time per call / rows, one measurement per round. For DTLN, a matmul-bound "
                  "model, that is the floor, and per-block time over it the most a path that keeps one stream's "
                  "hops in order could gain here (its recurrent products stay at batch 1 and it still pays the "
                  "FFTs). PoCoNet's T-block graphs run below it."],
    }
    write_result(args.result, result)
    for run in runs:
        s, o = run["speed_up"], run["output"]
        print(f"{run['bundle']}: speed-up median {s['median']:.2f}x (min {s['min']:.2f}, max {s['max']:.2f}); "
              f"output max abs difference {o['max_abs_difference']:.3g}, SNR {o['snr_db']} dB"
              + (f"; per-block / batch-axis graphs {run['ceiling']['median']:.2f}x" if run["ceiling"] else ""))
    return 0 if all(run["output"]["passed"] for run in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
