"""One bundle against the same bundle at an earlier commit: same output, and how much faster each path runs.

    python bench/bundle_ab.py --bundle pretrained_model/dtln-finetuned/dynamic --ref 27cc94d \
        [--rounds 15] [--seconds 10] [--rows 1 8 32] [--result NAME]

For a re-conversion that should change only how the graphs run (session 16: the packed LSTM states unpacked
with SPLIT and RESHAPE and packed with CONCATENATION, which XNNPACK takes, instead of STRIDED_SLICE and
PACK, which it does not). The ``--ref`` version is exported with ``git archive`` to ``$EDGE_BENCH_WORK``.
Both run in this process with this checkout's ``edge``, one thread, XNNPACK on, rounds alternating the
order; each ratio (ref time / this time) is taken within its round:

- per-block: ``edge.denoise`` with the T-block graphs off (the live path, one stream);
- T-block: ``edge.denoise`` as loaded, where the bundle has T-block graphs;
- batch-axis graphs: the invokes of the ``streams`` graphs resized to each of ``--rows`` streams (random
  inputs), where the bundle has them.

Outputs of the two versions on the same audio must be equal bit for bit (per-block and T-block); the
script exits 1 otherwise.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
from common import REPO, WORK, example_hops, summary, write_result
from throughput import Floor

import edge


def export(ref: str, bundle: Path) -> Path:
    """The bundle folder as it was at ``ref``, under WORK."""
    rel = bundle.resolve().relative_to(REPO)
    out = WORK / f"ab-{ref}"
    tar = subprocess.run(["git", "archive", ref, str(rel)], cwd=REPO, check=True, capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(tar)) as t:
        t.extractall(out, filter="data")
    return out / rel


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", required=True, help="bundle folder in this checkout")
    p.add_argument("--ref", required=True, help="the commit whose version of the same folder to compare with")
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--seconds", type=float, default=10.0, help="audio per edge.denoise call (default 10)")
    p.add_argument("--rows", type=int, nargs="*", default=[1, 8, 32], help="streams per batch-axis call")
    p.add_argument("--result", default="bundle_ab")
    args = p.parse_args(argv)

    now = edge.load_bundle(args.bundle)
    was = edge.load_bundle(export(args.ref, Path(args.bundle)))
    x = np.concatenate(example_hops(args.seconds))
    opts = edge.Options(num_threads=1)
    paths = {"per-block": lambda b: dataclasses.replace(b, batched=None)}
    if now.batched is not None and was.batched is not None:
        paths["T-block"] = lambda b: b
    same = {}
    for name, pick in paths.items():
        a, b = edge.denoise(x, pick(was), opts), edge.denoise(x, pick(now), opts)
        same[name] = float(np.max(np.abs(a.astype(np.float64) - b)))
    versions = {"ref": was, "this": now}
    floors = {}
    if "streams" in now.manifest and "streams" in was.manifest:
        floors = {r: {which: Floor(b, r) for which, b in versions.items()} for r in args.rows}
    hops = len(x) / now.block_shift
    times: dict[str, dict[str, list[float]]] = {}
    ratios: dict[str, list[float]] = {}

    def measure(r: int, name: str, key: str, cost) -> None:
        """One round of ``cost(which)`` (us) for both versions, the order alternating by round."""
        t = {which: cost(which) for which in ("ref", "this")[:: 1 if r % 2 == 0 else -1]}
        tv = times.setdefault(key, {"ref": [], "this": []})
        for which in t:
            tv[which].append(t[which])
        ratios.setdefault(name, []).append(t["ref"] / t["this"])

    def denoise_us(pick):
        def cost(which: str) -> float:
            b = pick(versions[which])
            c0 = time.process_time()
            edge.denoise(x, b, opts)
            return (time.process_time() - c0) / hops * 1e6
        return cost

    for r in range(args.rounds):
        for name, pick in paths.items():
            measure(r, name, f"{name}: CPU us per hop", denoise_us(pick))
        for rows, fl in floors.items():
            name = f"batch-axis graphs, {rows} stream(s)"
            measure(r, name, f"{name}: invoke CPU us per call",
                    lambda which, fl=fl: fl[which].per_hop(50) * fl[which].rows * 1e6)
        print(f"round {r + 1}: " + "  ".join(f"{k} {v[-1]:.2f}x" for k, v in ratios.items()), file=sys.stderr)
    tag = f"{now.name} ({now.quantization})"
    rows = []
    for key, tv in times.items():
        for which in ("ref", "this"):
            rows.append({"what": f"{tag}, {key}, {'--ref ' + args.ref if which == 'ref' else 'this checkout'}",
                         "unit": "us", **summary(tv[which], 2)})
    for name, v in ratios.items():
        rows.append({"what": f"{tag}, {name}: speed-up over --ref (per-round CPU-time ratio)", "unit": "ratio",
                     **summary(v, 3)})
    for name, err in same.items():
        rows.append({"what": f"{tag}, {name}: max abs output difference from --ref", "unit": "abs", "median": err,
                     "min": err, "max": err, "n": 1})
    write_result(args.result, {"title": f"{tag} against its version at {args.ref}", "rows": rows,
                               "settings": {"bundle": args.bundle, "ref": args.ref, "rounds": args.rounds,
                                            "seconds": args.seconds, "rows": args.rows}})
    for name, v in ratios.items():
        print(f"{tag} {name}: {np.median(v):.2f}x (min {min(v):.2f}, max {max(v):.2f})")
    bad = {k: v for k, v in same.items() if v != 0.0}
    if bad:
        print(f"outputs differ from --ref: {bad}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
