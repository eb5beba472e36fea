"""Batch-axis submodels: the per-block graphs with B independent streams per call (states [B, ...]).

    python -m convert.streams BUNDLE --weights WEIGHTS.h5 [--batch 256] [--fixed]

adds ``NAME_bn.tflite`` files (a dynamic batch axis, resized by the runtime to the streams a call has; at
most ``--batch`` streams per engine) or, with ``--fixed``, ``NAME_b{B}.tflite`` files for exactly B streams,
and a ``streams`` section, to an existing bundle whose family has batch-axis graphs
(``Family.batch_models``: DTLN, PoCoNet) in a mode that has them (``convert.modes``: float32, float16, dynamic),
verified: streams of different audio and lengths through one ``edge.batch.BatchEngine`` against each one
run alone through ``edge.denoise`` (float32: max abs <= 1e-5; other modes: SNR >= their tolerance).
Re-runnable; on failure the bundle stays as it was.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

import edge
from edge.batch import SECTION

from .errors import ConvertError
from .families import NAMES, family
from .modes import BATCHED, mode
from .upgrade import convert_graphs, example_audio, float_layers_of, read_manifest, run_upgrade, upgrade, weights_for

DEFAULT_BATCH = 256
"""Most streams one engine takes from resizable graphs."""
DEFAULT_FIXED = 16
"""Streams per call of ``--fixed`` graphs."""
VERIFY_STREAMS = 12
"""Streams a resizable bundle is verified with (of different lengths: the batch shrinks as they end)."""


def verify(bundle: edge.Bundle, audio: list[np.ndarray], chunk: int = 1000) -> dict:
    """Streams through one engine (different audio and lengths, fed in chunks, all at once) against each
    stream alone; held to the mode's ``batched`` tolerance (``convert.modes``)."""
    from edge.batch import BatchEngine

    from .verify import compare

    eng = BatchEngine(bundle)
    count = min(eng.capacity, VERIFY_STREAMS) if eng.spec.resizable else eng.capacity
    signals = []
    for k in range(count):  # different audio, start and length: the batch shrinks as streams end
        a = audio[k % len(audio)]
        signals.append(np.roll(a, 977 * k)[: max(1000, len(a) * (count - k) // count - 131 * k)])
    slots = [eng.open() for _ in signals]
    got = {k: [] for k in slots}
    for pos in range(0, max(map(len, signals)), chunk):
        feed = {k: x[pos:pos + chunk] for k, x in zip(slots, signals, strict=True) if pos < len(x)}
        for k, y in eng.process(feed).items():
            got[k].append(y)
    tests, refs = [], []
    for k, x in zip(slots, signals, strict=True):
        tests.append(np.concatenate(got[k] + [eng.flush(k)]))
        refs.append(edge.denoise(x, bundle))
    fig = compare(refs, tests, bundle.sample_rate)
    return {"reference": "each stream alone through edge.denoise (per-block submodels)",
            "streams": len(signals), "rows_per_call": sorted(set(eng.ticks)), "graph_batches": eng.sizes, **fig,
            **mode(bundle.quantization).batched.check(fig)}


def add_to_bundle(folder: str, weights_path: str, batch: int | None = None, verify_audio=None,
                  say=lambda msg: None, fixed: bool = False) -> edge.Bundle:
    """Convert and verify batch-axis submodels in a scratch copy, then install them beside the bundle's files.

    ``fixed``: graphs for exactly ``batch`` streams; else one resizable graph per submodel, for at most
    ``batch`` streams per engine."""
    if batch is None:
        batch = DEFAULT_FIXED if fixed else DEFAULT_BATCH
    if batch < 1:
        raise ConvertError(f"--batch must be >= 1, got {batch}")
    m = read_manifest(folder)
    fam, md = family(m.get("family")), mode(m.get("quantization"))
    if fam.batch_models is None or md.batched is None:
        with_graphs = [n for n in NAMES if family(n).batch_models is not None]
        raise ConvertError(f"{folder}: batch graphs are made for {', '.join(with_graphs)} bundles in "
                           f"{', '.join(BATCHED)}, not {fam.name} {md.name}")
    fam, weights = weights_for(m, weights_path)

    def make(work: str) -> dict:
        pairs = fam.batch_models(weights, m, batch if fixed else None)
        what = f"for {batch} streams" if fixed else "with a resizable batch"
        return {"batch": batch, "resizable": not fixed,
                "submodels": convert_graphs(pairs, md, work, f"_b{batch}" if fixed else "_bn", what, say,
                                            float_layers_of(m))}

    def check(bundle: edge.Bundle) -> dict:
        say("verifying streams in one engine against each alone")
        return verify(bundle, verify_audio if verify_audio is not None else example_audio(bundle.sample_rate))

    def failed(v: dict) -> str:
        return (f"batched streams differ from the streams alone: max abs {v['max_abs_error']:.3g}, SNR "
                f"{v['snr_db']:.1f} dB")

    return upgrade(folder, m, SECTION, make, check, failed)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m convert.streams",
                                description="Add batch-axis submodels (many streams per call) to a bundle, "
                                            "verified against each stream run alone.")
    p.add_argument("bundle", metavar="BUNDLE")
    p.add_argument("--weights", metavar="FILE", required=True, help="the weights the bundle was converted from")
    p.add_argument("--batch", type=int, default=None,
                   help=f"most streams per engine (default: {DEFAULT_BATCH}); with --fixed, streams per call "
                        f"(default: {DEFAULT_FIXED})")
    p.add_argument("--fixed", action="store_true",
                   help="graphs for exactly --batch streams (idle rows are padding) instead of a batch the "
                        "runtime resizes to the streams a call has")
    p.add_argument("--quiet", "-q", action="store_true", help="print only the bundle path")
    args = p.parse_args(argv)
    b = run_upgrade("python -m convert.streams", args.quiet,
                    lambda say: add_to_bundle(args.bundle, args.weights, args.batch, None, say, args.fixed))
    if isinstance(b, int):
        return b
    sec = b.manifest["streams"]
    v = sec["verification"]
    kind = f"resizable (up to {sec['batch']} streams)" if sec["resizable"] else f"{sec['batch']}-stream"
    print(b.path if args.quiet else f"{b.path}: {kind} submodels added; vs each stream alone: max abs "
          f"{v['max_abs_error']:.3g}, SNR {v['snr_db']:.1f} dB ({v['seconds_to_convert']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
