"""``edge-denoise denoise``: files, folders (structure mirrored) or raw s16le PCM on stdin/stdout."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from .audio import EXTENSIONS, fit_length, float_to_pcm16, pcm16_to_float, read_audio, resample, write_audio_atomic
from .bundle import Bundle, load_bundle
from .check import add_check_option, check_at_start
from .errors import AudioError, EdgeError
from .models import default_model
from .options import Options
from .stream import StreamingDenoiser


def add_model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", "-m", metavar="DIR", default=None,
                   help="bundle folder (default: $EDGE_DENOISE_MODEL, else the default bundle: see "
                        "`edge-denoise models`)")
    p.add_argument("--threads", type=int, default=1, help="interpreter threads per stream (default: 1)")
    p.add_argument("--xnnpack", action=argparse.BooleanOptionalAction, default=True,
                   help="use the XNNPACK delegate (default: on)")


def model_and_options(args) -> tuple[Bundle, Options]:
    if args.threads < 1:
        raise EdgeError(f"--threads must be >= 1, got {args.threads}")
    return load_bundle(args.model or default_model()), Options(num_threads=args.threads, xnnpack=args.xnnpack)


def register(sub) -> None:
    p = sub.add_parser("denoise", help="denoise audio files, folders, or raw PCM on stdin",
                       description="Denoise WAV/FLAC/OGG files or folders (structure mirrored). Any sample rate "
                                   "and channel count: each channel is its own stream, resampled to the model "
                                   "rate and back; output keeps rate, channels, length and sample format. "
                                   "'-' reads raw s16le PCM from stdin and writes it to stdout.")
    p.add_argument("inputs", nargs="+", metavar="IN", help="audio files, folders, or - for raw PCM on stdin")
    p.add_argument("-o", "--output", metavar="OUT", default=None,
                   help="output file (one input file) or folder; required unless IN is -")
    add_model_options(p)
    p.add_argument("--overwrite", action="store_true", help="redo outputs that already exist (default: skip)")
    p.add_argument("--rate", type=int, default=None, help="raw PCM: sample rate in Hz (default: the model's)")
    p.add_argument("--channels", type=int, default=1, help="raw PCM: interleaved channels (default: 1)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress lines")
    add_check_option(p, default=False)
    p.set_defaults(func=run)


class _Channels:
    """One StreamingDenoiser per channel, fed at the model rate."""

    def __init__(self, bundle: Bundle, options: Options, channels: int):
        self.dens = [StreamingDenoiser(bundle, options) for _ in range(channels)]

    def offline(self, x: np.ndarray) -> np.ndarray:
        """(frames, channels) at the model rate -> same shape, delay compensated."""
        out = np.empty_like(x, dtype=np.float32)
        lat = self.dens[0].latency_samples
        for c, den in enumerate(self.dens):
            y = np.concatenate([den.process(np.ascontiguousarray(x[:, c])), den.flush()])
            out[:, c] = y[lat:lat + len(x)]
        return out


def denoise_array(x: np.ndarray, sr: int, bundle: Bundle, options: Options) -> np.ndarray:
    """(frames, channels) float32 at any rate -> denoised, same shape and rate."""
    rate = bundle.sample_rate
    y = _Channels(bundle, options, x.shape[1]).offline(resample(x, sr, rate).reshape(-1, x.shape[1]))
    return fit_length(resample(y, rate, sr).reshape(-1, x.shape[1]), len(x))


def _plan(inputs: list[str], output: str | None) -> list[tuple[Path, Path]]:
    """(input file, output file) pairs; folders are walked and mirrored under the output folder."""
    if output is None:
        raise AudioError("-o/--output is required for file inputs")
    out = Path(output)
    single = len(inputs) == 1 and Path(inputs[0]).is_file() and out.suffix.lower() in EXTENSIONS
    pairs: list[tuple[Path, Path]] = []
    for item in inputs:
        src = Path(item)
        if src.is_dir():
            files = sorted(p for p in src.rglob("*") if p.suffix.lower() in EXTENSIONS and p.is_file())
            if not files:
                raise AudioError(f"{src}: folder holds no {'/'.join(EXTENSIONS)} files")
            pairs += [(f, out / src.name / f.relative_to(src)) for f in files]
        elif src.is_file():
            pairs.append((src, out if single else out / src.name))
        else:
            raise AudioError(f"{src}: no such file or folder")
    for src, dst in pairs:
        if dst.suffix.lower() not in EXTENSIONS:
            raise AudioError(f"{dst}: output must end in {', '.join(EXTENSIONS)}")
        if dst.resolve() == src.resolve():
            raise AudioError(f"{dst}: output would overwrite its input; choose another -o")
    return pairs


def run(args) -> int:
    if args.inputs == ["-"]:
        return _run_raw(args)
    if "-" in args.inputs:
        raise AudioError("'-' (raw PCM on stdin) cannot be mixed with file inputs")
    pairs = _plan(args.inputs, args.output)
    bundle, options = model_and_options(args)
    if not check_at_start(args, bundle, options):
        return 1
    say = (lambda msg: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    failed = skipped = 0
    audio_s = wall_s = 0.0
    for k, (src, dst) in enumerate(pairs, 1):
        if dst.exists() and not args.overwrite:
            skipped += 1
            say(f"[{k}/{len(pairs)}] {src} -> {dst}: exists, skipped (--overwrite to redo)")
            continue
        try:
            x, sr, subtype = read_audio(str(src))
            t0 = time.perf_counter()
            y = denoise_array(x, sr, bundle, options)
            dt = time.perf_counter() - t0
            write_audio_atomic(str(dst), y, sr, subtype)
        except (AudioError, OSError) as exc:
            failed += 1
            print(f"edge-denoise denoise: error: {exc}", file=sys.stderr)
            continue
        audio_s += len(x) / sr
        wall_s += dt
        say(f"[{k}/{len(pairs)}] {src} -> {dst} ({len(x) / sr:.1f} s, {x.shape[1]} ch, {sr} Hz, "
            f"real-time factor {dt / (len(x) / sr):.3f})")
    if not args.quiet and audio_s:
        say(f"done: {len(pairs) - failed - skipped} written, {skipped} skipped, {failed} failed; "
            f"{audio_s:.1f} s of audio in {wall_s:.2f} s (real-time factor {wall_s / audio_s:.3f}), "
            f"model {bundle.name}, latency {1000 * bundle.latency_samples / bundle.sample_rate:.0f} ms")
    return 2 if failed else 0


def _run_raw(args) -> int:
    """s16le interleaved PCM stdin -> stdout, streamed; output length equals input length."""
    bundle, options = model_and_options(args)
    if not check_at_start(args, bundle, options):
        return 1
    rate = args.rate or bundle.sample_rate
    if rate != bundle.sample_rate:
        raise AudioError(f"raw PCM at {rate} Hz: this bundle runs at {bundle.sample_rate} Hz; convert first "
                         f"(e.g. sox -r {bundle.sample_rate}) or use files, which are resampled")
    if args.channels < 1:
        raise AudioError(f"--channels must be >= 1, got {args.channels}")
    ch = args.channels
    stream = _Channels(bundle, options, ch)
    lat = stream.dens[0].latency_samples
    inp, out = sys.stdin.buffer, sys.stdout.buffer
    frame_bytes = 2 * ch
    pending = b""
    to_drop = lat
    total_in = total_out = 0

    def emit(y: np.ndarray) -> None:
        nonlocal to_drop, total_out
        if to_drop:
            cut = min(to_drop, len(y))
            y, to_drop = y[cut:], to_drop - cut
        y = y[: max(0, total_in - total_out)]
        if len(y):
            out.write(float_to_pcm16(y))
            out.flush()  # a pipe to a live consumer must not wait for 8 KB
            total_out += len(y)

    while True:
        chunk = inp.read1(8192) if hasattr(inp, "read1") else inp.read(8192)
        if not chunk:
            break
        pending += chunk
        n = len(pending) // frame_bytes
        if not n:
            continue
        x = pcm16_to_float(pending[: n * frame_bytes]).reshape(n, ch)
        pending = pending[n * frame_bytes:]
        total_in += n
        ys = [den.process(np.ascontiguousarray(x[:, c])) for c, den in enumerate(stream.dens)]
        emit(np.stack(ys, axis=1))
    if pending:
        print(f"edge-denoise denoise: warning: {len(pending)} trailing bytes do not make a whole frame; ignored",
              file=sys.stderr)
    emit(np.stack([den.flush() for den in stream.dens], axis=1))
    out.flush()
    return 0
