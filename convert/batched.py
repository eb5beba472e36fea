"""T-block submodels: each family's streaming graph over T hops per call, added to a bundle and verified.

The recurrence runs inside the graph over T steps (unrolled: plain ops, no WHILE); states go in and out
once per call, as the same tensors the per-block submodels use, so a stream can switch between the two
at any hop. The runtime's T-block path (``edge.tblock``) is checked against the bundle's own per-block
path through the same ``edge`` loop and the figures go into the manifest's ``batched`` section.

    python -m convert.batched BUNDLE --weights WEIGHTS.h5 [--frames 64]

adds ``NAME_tT.tflite`` files and the ``batched`` section to an existing bundle (re-runnable: it
replaces an earlier ``batched`` section; the per-block files and their output stay untouched).
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import replace

import numpy as np

import edge
from edge.tblock import SECTION

from .errors import ConvertError
from .upgrade import (
    batched_mode,
    convert_graphs,
    example_audio,
    float_layers_of,
    read_manifest,
    run_upgrade,
    upgrade,
    weights_for,
)

DEFAULT_FRAMES = 32


def verify(bundle: edge.Bundle, audio: list[np.ndarray]) -> dict:
    """The bundle's T-block path against its per-block path, same ``edge`` loop, each signal whole; held to
    its mode's ``batched`` tolerance (``convert.modes``)."""
    from .modes import mode
    from .verify import compare

    per_block = replace(bundle, batched=None)
    refs = [edge.denoise(x, per_block) for x in audio]
    tests = [edge.denoise(x, bundle) for x in audio]
    fig = compare(refs, tests, bundle.sample_rate)
    return {"reference": "this bundle's per-block submodels, same edge loop", **fig,
            **mode(bundle.quantization).batched.check(fig)}


def add_to_bundle(folder: str, weights_path: str, frames: int = DEFAULT_FRAMES, verify_audio=None,
                  verify_names=None, say=lambda msg: None) -> edge.Bundle:
    """Convert and verify T-block submodels in a scratch copy of a bundle, then install them beside its
    per-block files; on any failure the folder stays as it was."""
    if frames < 2:
        raise ConvertError(f"--frames must be >= 2 (hops per call), got {frames}")
    m = read_manifest(folder)
    md = batched_mode(m, folder, "T-block graphs")
    fam, weights = weights_for(m, weights_path)
    if fam.tblock_models is None:
        raise ConvertError(f"{folder}: family {fam.name} has no T-block graphs")

    def make(work: str) -> dict:
        pairs = fam.tblock_models(weights, m, frames)
        return {"frames": frames, "submodels": convert_graphs(pairs, md, work, f"_t{frames}",
                                                              f"over {frames} hops", say, float_layers_of(m))}

    def check(bundle: edge.Bundle) -> dict:
        say("verifying the T-block path against the per-block path")
        v = verify(bundle, verify_audio if verify_audio is not None else example_audio(bundle.sample_rate))
        return {**v, "audio": list(verify_names or ["examples"])}

    def failed(v: dict) -> str:
        return (f"T-block output differs from the per-block output: max abs {v['max_abs_error']:.3g}, SNR "
                f"{v['snr_db']:.1f} dB (tolerance {v.get('tolerance_max_abs_error', v.get('tolerance_snr_db'))})")

    return upgrade(folder, m, SECTION, make, check, failed)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m convert.batched",
                                description="Add T-block submodels (T hops per call) to an existing bundle, "
                                            "verified against its per-block submodels.")
    p.add_argument("bundle", metavar="BUNDLE", help="bundle folder to upgrade in place (float32, float16, dynamic)")
    p.add_argument("--weights", metavar="FILE", required=True,
                   help="the weights (.h5) the bundle was converted from (checked against its model.config)")
    p.add_argument("--frames", type=int, default=DEFAULT_FRAMES,
                   help=f"hops per T-block call (default: {DEFAULT_FRAMES} = 0.256 s at 128-sample hops, the fastest "
                        "of 16, 32 and 64 measured on x86)")
    p.add_argument("--verify-audio", metavar="FILE", nargs="+", default=None,
                   help="speech to verify on (default: the example recordings in examples/)")
    p.add_argument("--quiet", "-q", action="store_true", help="print only the bundle path")
    args = p.parse_args(argv)

    def add(say) -> edge.Bundle:
        from . import data

        rate = edge.load_bundle(args.bundle).sample_rate
        audio = data.load_files(args.verify_audio, rate) if args.verify_audio else None
        names = [os.path.basename(f) for f in args.verify_audio] if args.verify_audio else None
        return add_to_bundle(args.bundle, args.weights, args.frames, audio, names, say)

    b = run_upgrade("python -m convert.batched", args.quiet, add)
    if isinstance(b, int):
        return b
    v = b.manifest["batched"]["verification"]
    print(b.path if args.quiet else f"{b.path}: T-block submodels over {args.frames} hops added; vs per-block: "
          f"max abs {v['max_abs_error']:.3g}, SNR {v['snr_db']:.1f} dB ({v['seconds_to_convert']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
