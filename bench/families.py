"""DTLN beside the PoCoNet-style U-Net: size, compute, latency and whole-loop time per block, one process.

    python bench/families.py [--models pretrained_model/dtln-16k pretrained_model/dtln-16k-int8
                              pretrained_model/poconet-16k]
                             [--modes float32 dynamic int8] [--rounds 9] [--seconds 10]

Writes bench/results/families.json: for each model and mode the median/min/max ms per 8 ms block of
the whole streaming loop (edge.StreamingDenoiser.process, one hop per call, one thread), its ratio to
the first model's float32 bundle in the same round, and the real-time factor (ms per block / 8 ms);
parameters, MACs per second and latency come from the manifests.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from common import REPO, example_hops, interleaved, skip, summary, write_result

import edge


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=[str(REPO / "pretrained_model" / m)
                                                   for m in ("dtln-16k", "dtln-16k-int8", "poconet-16k")])
    p.add_argument("--modes", nargs="+", default=["float32", "dynamic", "int8"])
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--seconds", type=float, default=10.0)
    args = p.parse_args()
    bundles = {}
    for model in map(Path, args.models):
        for mode in args.modes:
            if (model / mode / "manifest.json").is_file():
                bundles[f"{model.name} {mode}"] = edge.load_bundle(model / mode)
    reference = f"{Path(args.models[0]).name} float32"
    if reference not in bundles or len({b.family for b in bundles.values()}) < 2:
        skip(f"need {reference} and a bundle of another family under {', '.join(args.models)}")
    hop = bundles[reference].block_shift
    hop_ms = 1e3 * hop / bundles[reference].sample_rate
    if any(b.block_shift != hop for b in bundles.values()):
        skip("the bundles differ in hop size; compare them per second of audio instead")
    dens = {k: edge.StreamingDenoiser(b, edge.Options(num_threads=1)) for k, b in bundles.items()}
    times, ratios = interleaved(dens, example_hops(args.seconds, hop), args.rounds, reference)
    rows, models = [], {}
    for k, b in bundles.items():
        t = summary(times[k])
        rows.append({"what": f"{k} ({b.sha256[:8]})", "unit": "ms/block", **t})
        if k != reference:
            rows.append({"what": f"{k} / {reference}", "unit": "ratio", **summary(ratios[k], 3)})
        m = b.manifest["model"]
        models[k] = {"family": b.family, "parameters": m.get("parameters"), "macs_per_second": m.get("macs_per_second"),
                     "latency_ms": round(1e3 * b.latency_samples / b.sample_rate, 1),
                     "real_time_factor": round(t["median"] / hop_ms, 4), "bytes": sum(s["bytes"] for s in
                                                                                    b.manifest["submodels"])}
    result = {
        "title": "Model families: whole loop, ms per 8 ms block (one thread)",
        "rows": rows, "models": models,
        "notes": [f"Each bundle driven through edge.StreamingDenoiser.process one hop ({hop} samples) per call, "
                  f"{args.seconds:g} s of the example recording per round, {args.rounds} rounds, order alternating; "
                  f"ratios to {reference} taken within each round.",
                  "Real-time factor = median ms per block / block duration: the share of one core the stream "
                  "keeps busy."],
    }
    path = write_result("families", result)
    for k in dens:
        s = models[k]
        print(f"{k:28s} {summary(times[k])['median']:.4f} ms/block  RTF {s['real_time_factor']:.3f}  "
              f"{s['parameters'] or 0:,} params  {(s['macs_per_second'] or 0) / 1e6:.0f} M MAC/s")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
