"""``python -m convert``: a model checkpoint (DTLN, PoCoNet) -> a verified tflite bundle in one quantisation mode."""

from __future__ import annotations

import argparse
import os
import sys

from .errors import ConvertError, VerificationError
from .families import NAMES as FAMILIES
from .modes import NAMES as MODES


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m convert",
        description="Convert a DTLN or PoCoNet checkpoint (h5) into a verified, FFT-free tflite bundle for "
                    "edge-denoise.")
    p.add_argument("--family", choices=FAMILIES, default=FAMILIES[0],
                   help=f"model family of the weights: dtln, or poconet (our causal U-Net; default: {FAMILIES[0]})")
    p.add_argument("--weights", metavar="FILE", default=None,
                   help="weights (.h5; dtln: published or ours; poconet: written by python -m convert.train "
                        "--family poconet; default: the shipped weights, pretrained_model/dtln-finetuned/ (the "
                        "default model) or poconet-16k/; for dtln --quantize int8 the shipped dtln-finetuned-int8/, "
                        "fine-tuned for full integer; the command says which file it converts)")
    p.add_argument("--quantize", choices=MODES, default="none",
                   help="none = float32 (the reference); float16; dynamic = int8 weights; int8 = full integer; "
                        "int16x8 = int16 activations, int8 weights (default: none)")
    p.add_argument("--output", "-o", metavar="DIR", default=None,
                   help="bundle folder to write (default: bundles/FAMILY-16k-MODE)")
    p.add_argument("--force", action="store_true", help="replace an existing output folder")
    p.add_argument("--name", default=None, help="bundle name in the manifest (default: the folder name)")
    p.add_argument("--verify-audio", metavar="FILE", nargs="+", default=None,
                   help="speech to verify on (default: the example recordings in examples/; int8: the VBD-23 "
                        "noisy files of ../shared/data pooled where present, see convert/modes.py)")
    p.add_argument("--calib-audio", metavar="FILE", nargs="+", default=None,
                   help="speech to calibrate integer modes on (default: dev mixes from ../shared/data if "
                        "present, else the verification audio)")
    p.add_argument("--block-shift", type=int, default=None,
                   help="hop in samples (dtln only; default: 128 = 8 ms; poconet takes it from its weights file)")
    p.add_argument("--frames", type=int, default=0, metavar="T",
                   help="also add T-block submodels over T hops per call, for fast file denoising (float32, "
                        "float16, dynamic; see python -m convert.batched; default: 0 = none)")
    p.add_argument("--quiet", "-q", action="store_true", help="print only the bundle path")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ start-up banner is not ours to print
    try:
        return _run(args)
    except VerificationError as exc:
        print(f"python -m convert: verification failed: {exc}", file=sys.stderr)
        return 1
    except ConvertError as exc:
        print(f"python -m convert: error: {exc}", file=sys.stderr)
        return 2


def _run(args) -> int:
    from .quiet import import_tensorflow

    import_tensorflow()
    from edge.errors import AudioError

    from . import batched, build, data
    from .families import family
    from .modes import BATCHED, mode

    fam = family(args.family)
    if args.frames and mode(args.quantize).batched is None:
        raise ConvertError(f"--frames: T-block graphs exist for {', '.join(BATCHED)} only, not {args.quantize}")
    weights_path = args.weights
    if weights_path is None:
        default = fam.default_weights(args.quantize)
        weights_path = str(default.path)
        if not os.path.exists(weights_path):
            raise ConvertError(f"no --weights given and the shipped weights {weights_path} are missing")
        if not args.quiet:
            print(f"no --weights: converting the shipped {os.path.relpath(weights_path)}"
                  + (f" ({default.why})" if default.why else ""), file=sys.stderr)
    weights = fam.load_weights(weights_path, block_shift=args.block_shift)
    rate = weights.config.sample_rate
    output = args.output or os.path.join("bundles", f"{fam.name}-{rate // 1000}k-{args.quantize}")
    verify_files = args.verify_audio or [str(p) for p in build.verification_files(args.quantize)]
    if not verify_files:
        raise ConvertError("no verification audio: pass --verify-audio FILE (speech at any rate)")
    try:
        verify_audio = data.load_files(verify_files, rate)
        calib_audio = data.load_files(args.calib_audio, rate) if args.calib_audio else data.dev_mixes()
    except AudioError as exc:
        raise ConvertError(str(exc)) from None
    progress = build.Progress() if args.quiet else build.TERMINAL
    bundle = build.convert(
        weights, args.quantize, output, force=args.force, name=args.name, verify_audio=verify_audio,
        verify_names=[os.path.basename(f) for f in verify_files], calib_audio=calib_audio or None,
        source=os.path.basename(weights_path), progress=progress)
    if args.frames:  # T-block graphs beside the verified per-block ones (convert/batched.py)
        bundle = batched.add_to_bundle(bundle.path, weights_path, args.frames, verify_audio,
                                        [os.path.basename(f) for f in verify_files], progress.say)
    v = bundle.manifest["verification"]
    if args.quiet:
        print(bundle.path)
    else:
        size = build.bundle_bytes(bundle.path)
        print(f"wrote {bundle.path} ({args.quantize}, {size / 1e6:.2f} MB): SNR {v['snr_db']:.1f} dB vs float "
              f"reference over {build.verified_on(v)}, tolerance {v['tolerance_snr_db']:.0f} dB, max abs error "
              f"{v['max_abs_error']:.2g}, {v['seconds_to_convert']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
