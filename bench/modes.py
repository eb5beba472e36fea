"""Whole-loop ms per block of each quantisation mode of one model, interleaved in one process, one thread.

    python bench/modes.py [--model-dir pretrained_model/dtln-16k pretrained_model/dtln-16k-int8]
                          [--rounds 9] [--seconds 10]

Writes bench/results/modes.json: per bundle the median/min/max over rounds of the whole streaming loop
(edge.StreamingDenoiser.process, one hop per call as on a live device) and each bundle's ratio to
the first model folder's float32 in the same round. Several folders of the same architecture (our
quality model and the one fine-tuned for int8) are timed together.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from common import REPO, example_hops, interleaved, skip, summary, write_result

import edge

ORDER = ("float32", "float16", "dynamic", "int16x8", "int8")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model-dir", nargs="+", default=[str(REPO / "pretrained_model" / "dtln-16k"),
                                                      str(REPO / "pretrained_model" / "dtln-16k-int8")])
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--seconds", type=float, default=10.0)
    args = p.parse_args()
    bases = [Path(d) for d in args.model_dir]
    bundles = {}
    for base in bases:
        for m in ORDER:
            if (base / m / "manifest.json").is_file() and (m not in bundles or m != "float32"):
                bundles[m if m not in bundles else f"{m} ({base.name})"] = edge.load_bundle(base / m)
    if "float32" not in bundles:
        skip(f"no float32 bundle under {bases[0]}")
    hops = example_hops(args.seconds)
    dens = {m: edge.StreamingDenoiser(b, edge.Options(num_threads=1)) for m, b in bundles.items()}
    times, ratios = interleaved(dens, hops, args.rounds, "float32")
    rows, goals = [], []
    for m in dens:
        t, r = summary(times[m]), summary(ratios[m], 3)
        rows.append({"what": f"{m} ({bundles[m].name}, {bundles[m].sha256[:8]})", "unit": "ms/block", **t})
        if m != "float32":
            rows.append({"what": f"{m} / float32", "unit": "ratio", **r})
            goals.append({"what": f"{m} faster per block than float32 (median of per-round ratios)",
                          "value": r["median"], "goal": "< 1.0", "met": r["median"] < 1.0})
    result = {
        "title": "Quantisation modes of one model: whole loop, ms per 8 ms block (one thread)",
        "model_dirs": [str(b.relative_to(REPO)) if b.is_relative_to(REPO) else str(b) for b in bases],
        "rows": rows, "goals": goals,
        "runtimes": {m: list(bundles[m].manifest.get("runtimes", [])) for m in dens},
        "notes": ["Each bundle driven through edge.StreamingDenoiser.process one hop (128 samples) per call, "
                  f"{args.seconds:g} s of the example recording per round, {args.rounds} rounds, order "
                  "alternating; ratios taken within each round.",
                  "Runtimes that load each bundle (from its manifest): "
                  + "; ".join(f"{m}: {', '.join(bundles[m].manifest.get('runtimes', []))}" for m in dens) + "."],
    }
    path = write_result("modes", result)
    for m in dens:
        print(f"{m:8s} {summary(times[m])['median']:.4f} ms/block  x{summary(ratios[m], 3)['median']:.2f} float32")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
