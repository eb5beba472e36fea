"""``edge-denoise denoise``: files, folders (structure mirrored) or raw s16le PCM on stdin/stdout."""

from __future__ import annotations

import os
import sys
import time
from concurrent.futures import Executor, ThreadPoolExecutor
from pathlib import Path

import numpy as np

from .audio import EXTENSIONS, fit_length, float_to_pcm16, pcm16_to_float, resample
from .bundle import Bundle
from .check import add_check_option, check_at_start
from .cli import add_model_options, model_and_options, positive_int
from .errors import AudioError
from .files import denoise_file, remove_stale_temps
from .options import Options
from .stream import AlignedStream


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
    p.add_argument("--jobs", "-j", type=positive_int, default=None, metavar="N",
                   help="files (or the channels of one file) denoised at once, one stream per thread "
                        f"(default: the cores this process may use, here {cores_available()})")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress lines")
    add_check_option(p, default=False)
    p.set_defaults(func=run)


def cores_available() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def denoise_array(x: np.ndarray, sr: int, bundle: Bundle, options: Options) -> np.ndarray:
    """(frames, channels) float32 at any rate -> denoised, same shape and rate, the whole signal in memory.

    The reference for the streamed file path (``edge.files.denoise_file``), which it equals.
    """
    rate, ch = bundle.sample_rate, x.shape[1]
    xr = resample(x, sr, rate).reshape(-1, ch)
    y = np.empty_like(xr, dtype=np.float32)
    for c in range(ch):
        stream = AlignedStream(bundle, options)
        y[:, c] = np.concatenate([stream.process(np.ascontiguousarray(xr[:, c])), stream.flush()])
    return fit_length(resample(y, rate, sr).reshape(-1, ch), len(x))


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
    taken: dict[Path, Path] = {}
    for src, dst in pairs:
        if dst.suffix.lower() not in EXTENSIONS:
            raise AudioError(f"{dst}: output must end in {', '.join(EXTENSIONS)}")
        if dst.resolve() == src.resolve():
            raise AudioError(f"{dst}: output would overwrite its input; choose another -o")
        first = taken.setdefault(dst.resolve(), src)
        if first != src:
            raise AudioError(f"{first} and {src} would both be written to {dst}; rename one or denoise them "
                             "in separate runs (nothing was written)")
    return pairs


def _one_file(src: Path, dst: Path, bundle: Bundle, options: Options, pool: Executor | None):
    """Denoise one file, streamed (``edge.files.denoise_file``); returns (seconds of audio, seconds taken,
    channels, rate) or the error. ``pool``: threads for its channels."""
    try:
        t0 = time.perf_counter()
        frames, ch, sr = denoise_file(src, dst, bundle, options, pool=pool)
        dt = time.perf_counter() - t0
    except (AudioError, OSError) as exc:
        return exc
    return frames / sr, dt, ch, sr


def run(args) -> int:
    if args.inputs == ["-"]:
        return _run_raw(args)
    if "-" in args.inputs:
        raise AudioError("'-' (raw PCM on stdin) cannot be mixed with file inputs")
    jobs = cores_available() if args.jobs is None else args.jobs
    pairs = _plan(args.inputs, args.output)
    bundle, options = model_and_options(args)
    if not check_at_start(args, bundle, options):
        return 1
    say = (lambda msg: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    for folder in sorted({dst.parent for _, dst in pairs}):
        for stale in remove_stale_temps(folder):
            say(f"removed {stale}: a partial output left by an interrupted run")
    failed = skipped = 0
    audio_s = 0.0
    todo = []
    for k, (src, dst) in enumerate(pairs, 1):
        if dst.exists() and not args.overwrite:
            skipped += 1
            say(f"[{k}/{len(pairs)}] {src} -> {dst}: exists, skipped (--overwrite to redo)")
        else:
            todo.append((k, src, dst))
    t_start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        # several files: one file per thread; one file: its channels share the threads
        results = (pool.map(lambda t: _one_file(t[1], t[2], bundle, options, None), todo) if len(todo) > 1
                   else [_one_file(t[1], t[2], bundle, options, pool) for t in todo])
        for (k, src, dst), r in zip(todo, results, strict=True):
            if isinstance(r, Exception):
                failed += 1
                print(f"edge-denoise denoise: error: {r}", file=sys.stderr)
                continue
            secs, dt, ch, sr = r
            audio_s += secs
            say(f"[{k}/{len(pairs)}] {src} -> {dst} ({secs:.1f} s, {ch} ch, {sr} Hz, "
                f"real-time factor {dt / secs if secs else 0.0:.3f})")
    wall_s = time.perf_counter() - t_start
    if not args.quiet and audio_s:
        say(f"done: {len(pairs) - failed - skipped} written, {skipped} skipped, {failed} failed; "
            f"{audio_s:.1f} s of audio in {wall_s:.2f} s (real-time factor {wall_s / audio_s:.3f}, "
            f"{jobs} job{'s' if jobs > 1 else ''}), model {bundle.name}, "
            f"latency {1000 * bundle.latency_samples / bundle.sample_rate:.0f} ms")
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
    streams = [AlignedStream(bundle, options) for _ in range(ch)]
    inp, out = sys.stdin.buffer, sys.stdout.buffer
    frame_bytes = 2 * ch
    pending = b""

    def emit(ys: list[np.ndarray]) -> None:
        if len(ys[0]):
            out.write(float_to_pcm16(np.stack(ys, axis=1)))
            out.flush()  # a pipe to a live consumer must not wait for 8 KB

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
        emit([s.process(np.ascontiguousarray(x[:, c])) for c, s in enumerate(streams)])
    if pending:
        print(f"edge-denoise denoise: warning: {len(pending)} trailing bytes do not make a whole frame; ignored",
              file=sys.stderr)
    emit([s.flush() for s in streams])
    out.flush()
    return 0
