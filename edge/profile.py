"""``edge-denoise profile``: per-stage block timings of bundles on this device, and reports across devices."""

from __future__ import annotations

import glob
import json
import math
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .bundle import Bundle, load_bundle
from .cli import ModelOptions, add_model_options
from .errors import AudioError, EdgeError
from .options import Options
from .profile_report import SCHEMA, SCHEMA_VERSION, load_profiles, render_markdown, render_png
from .stream import StreamingDenoiser

DEFAULT_AUDIO = Path(__file__).resolve().parents[1] / "examples" / "p232_013_noisy.wav"
# Stage names besides the submodels (which go by their manifest names, in call order).
FRAMING = "framing_rfft"
"""Analysis window, rfft and the input-buffer shift."""
SYNTHESIS = "irfft_ola"
"""irfft, synthesis window and overlap-add."""
GLUE = "family_glue"
"""The rest of the family step: |X|, casts, mask multiply, reshapes, stage 2's bases when the runtime
applies them (full int8 DTLN) (and the timers' own calls)."""
CALL = "call_overhead"
"""The rest of ``process()``: input checks, the copy into the analysis buffer, the output array."""
TOTAL = "total"
STAT_KEYS = ("mean", "p50", "p95", "p99", "max")
perf_ns = time.perf_counter_ns


# ---------------------------------------------------------------------------------------------------
# device facts
def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read().strip()
    except OSError:
        return None


def _cpuinfo() -> dict[str, str]:
    """First value of each key in /proc/cpuinfo (empty where the OS has none)."""
    fields: dict[str, str] = {}
    for line in (_read("/proc/cpuinfo") or "").splitlines():
        key, sep, value = line.partition(":")
        if sep and value.strip():
            fields.setdefault(key.strip(), value.strip())
    return fields


def _os_name() -> str:
    for line in (_read("/etc/os-release") or "").splitlines():
        if line.startswith("PRETTY_NAME="):
            return line.split("=", 1)[1].strip().strip('"')
    return platform.platform(terse=True)


def temperatures() -> dict[str, float]:
    """Thermal zone type -> degrees Celsius, where /sys shows them (a Pi does: ``cpu-thermal``)."""
    temps = {}
    for zone in sorted(glob.glob("/sys/class/thermal/thermal_zone*")):
        raw = _read(os.path.join(zone, "temp"))
        if raw is None or not raw.lstrip("-").isdigit():
            continue
        name = _read(os.path.join(zone, "type")) or os.path.basename(zone)
        temps[name if name not in temps else os.path.basename(zone)] = int(raw) / 1000.0
    return temps


def device_facts(options: Options | None = None, label: str | None = None) -> dict[str, Any]:
    """Facts that decide block timings on this machine; None where the OS does not show one."""
    from .interpreter import interpreter_package  # no interpreter import at edge import

    info = _cpuinfo()
    board = info.get("Model") or _read("/proc/device-tree/model")
    board = board.rstrip("\x00") if board else None
    cpu = info.get("model name") or info.get("Hardware") or info.get("cpu model") or platform.processor() or None
    cores = os.cpu_count()
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else cores
    freq = "/sys/devices/system/cpu/cpu0/cpufreq"
    cur, top = _read(f"{freq}/scaling_cur_freq"), _read(f"{freq}/scaling_max_freq")
    pkg = interpreter_package()
    options = options or Options()
    return {
        "label": label or f"{board or cpu or platform.machine()} ({usable} cores)",
        "machine": platform.machine(),
        "board": board,
        "cpu_model": cpu,
        "cores": cores,
        "cores_usable": usable,
        "governor": _read(f"{freq}/scaling_governor"),
        "freq_mhz": int(cur) / 1000 if cur and cur.isdigit() else None,
        "max_freq_mhz": int(top) / 1000 if top and top.isdigit() else None,
        "temperature_c": temperatures() or None,
        "load_average": [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None,
        "os": _os_name(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "interpreter": pkg.name,
        "interpreter_version": pkg.version,
        "xnnpack": options.xnnpack,
        "threads": options.num_threads,
    }


def bundle_facts(bundle: Bundle) -> dict[str, Any]:
    """Name, checksum and shape of a bundle: enough to tell which exact bundle a figure belongs to."""
    return {
        "name": bundle.name,
        "path": bundle.path,
        "sha256": bundle.sha256,
        "quantization": bundle.quantization,
        "family": bundle.family,
        "sample_rate": bundle.sample_rate,
        "block_len": bundle.block_len,
        "block_shift": bundle.block_shift,
        "latency_ms": 1000.0 * bundle.latency_samples / bundle.sample_rate,
        "submodels": [{"name": sm.name, "file": sm.file, "sha256": sm.sha256, "bytes": len(sm.content)}
                      for sm in bundle.submodels],
    }


# ---------------------------------------------------------------------------------------------------
# timed stream
class Timed:
    """Wraps a submodel runner; ``last`` holds the nanoseconds of its latest call."""

    __slots__ = ("_runner", "last")

    def __init__(self, runner):
        self._runner = runner
        self.last = 0

    def __call__(self, x: np.ndarray) -> np.ndarray:
        t0 = perf_ns()
        y = self._runner(x)
        self.last = perf_ns() - t0
        return y

    def reset(self) -> None:
        self._runner.reset()


class TimedDenoiser(StreamingDenoiser):
    """A StreamingDenoiser that records the nanoseconds of each stage of its latest block.

    ``_block`` calls the parent's own stages (analysis, family step, synthesis) with timers between them;
    a test checks that the output equals StreamingDenoiser's bit for bit.
    """

    def __init__(self, bundle: Bundle, options: Options):
        from .submodel import TFLiteSubmodel

        self.timed = {sm.name: Timed(TFLiteSubmodel(bundle, sm, options)) for sm in bundle.submodels}
        super().__init__(bundle, options, self.timed)
        self.t_framing = self.t_step = self.t_irfft = self.t_ola = self.t_block = 0

    def _irfft(self, spec: np.ndarray) -> np.ndarray:
        t0 = perf_ns()
        y = super()._irfft(spec)
        self.t_irfft += perf_ns() - t0
        return y

    def _block(self) -> np.ndarray:
        self.t_irfft = 0
        t0 = perf_ns()
        spec = self._analyze()
        t1 = perf_ns()
        frame = self._family.step(spec)
        t2 = perf_ns()
        y = self._synthesize(frame)
        t3 = perf_ns()
        self.t_framing = t1 - t0
        self.t_step = t2 - t1
        self.t_ola = t3 - t2
        self.t_block = t3 - t0
        return y


def stage_names(bundle: Bundle) -> list[str]:
    """Stages in block order; they add up to ``total``."""
    subs = [sm.name for sm in bundle.submodels]
    fixed = (FRAMING, SYNTHESIS, GLUE, CALL, TOTAL)
    clash = sorted(set(subs) & set(fixed))
    if clash:
        raise EdgeError(f"{bundle.path}: submodel names {clash} clash with profiler stage names")
    return [FRAMING, *subs, SYNTHESIS, GLUE, CALL, TOTAL]


def stats_ms(ns: np.ndarray) -> dict[str, float]:
    """mean, p50, p95, p99, max of per-block nanoseconds, in milliseconds."""
    ms = np.asarray(ns, np.float64) / 1e6
    p50, p95, p99 = np.percentile(ms, (50, 95, 99))
    return {k: round(float(v), 6) for k, v in zip(STAT_KEYS, (ms.mean(), p50, p95, p99, ms.max()), strict=True)}


# ---------------------------------------------------------------------------------------------------
# measuring
def load_audio(path: str | None, noise: bool) -> tuple[np.ndarray, int, dict[str, Any]]:
    """(mono float32, sample rate, description) of the audio to feed."""
    if noise:
        return np.zeros(0, np.float32), 0, {"kind": "noise", "detail": "white noise, rms 0.1, seed 0"}
    from .audio import read_audio

    if path is None and not DEFAULT_AUDIO.is_file():
        print(f"edge-denoise profile: note: {DEFAULT_AUDIO} not found; feeding generated noise", file=sys.stderr)
        return np.zeros(0, np.float32), 0, {"kind": "noise", "detail": "white noise, rms 0.1, seed 0 "
                                            "(default example recording not installed)"}
    path = str(path or DEFAULT_AUDIO)
    x, sr, _ = read_audio(path)
    return x.mean(axis=1).astype(np.float32), sr, {"kind": "file", "file": os.path.basename(path),
                                                   "seconds": round(len(x) / sr, 3), "looped": True}


def _feed(audio: np.ndarray, sr: int, rate: int, n: int) -> np.ndarray:
    """``n`` samples at ``rate``: the audio resampled and looped, or white noise when there is none."""
    if sr == 0:
        return (0.1 * np.random.default_rng(0).standard_normal(n)).astype(np.float32)
    from .audio import resample

    x = resample(audio, sr, rate)
    if not np.any(x):
        raise AudioError("the profiling audio is all zeros; pass --audio with a recording or --noise")
    return np.resize(x, n).astype(np.float32)


def schedule(streams: Sequence[tuple[int, int, int]], turn_seconds: float = 1.0) -> list[tuple[int, int]]:
    """Turns ``(stream, block)`` for streams given as ``(block_shift, sample_rate, blocks)``.

    Streams take turns every ``turn_seconds`` of audio (0: every block), ordered by the audio time a
    block starts at, so bundles with other block shifts stay in step; the first stream of each turn
    rotates, so none always runs right after another. Whole-second turns keep a stream's weights as warm
    in the caches as when it runs alone, and still share slow machine noise fairly.
    """
    n = len(streams)
    order = []
    for j, (shift, rate, blocks) in enumerate(streams):
        for k in range(blocks):
            t = k * shift / rate
            if turn_seconds > 0:
                turn = int(t // turn_seconds)
                order.append((turn, (j - turn) % n, t, j, k))
            else:
                order.append((t, (j - k) % n, t, j, k))
    return [(j, k) for *_, j, k in sorted(order)]


def measure(bundles: Sequence[Bundle], options: Options, seconds: float, warmup: int,
            audio: np.ndarray, audio_rate: int, turn_seconds: float = 1.0) -> list[dict[str, Any]]:
    """Run every bundle over ``seconds`` of audio after ``warmup`` blocks; return one record per bundle.

    Each bundle runs twice side by side: a TimedDenoiser (the stages) and a plain StreamingDenoiser
    (the real cost, no timers inside: RTF, budget share and deadline misses come from it). All streams
    take turns (see ``schedule``), so machine noise hits every one alike.
    """
    streams = []  # (bundle index, timed?, denoiser, input, block count)
    for b, bundle in enumerate(bundles):
        blocks = max(1, math.ceil(seconds * bundle.sample_rate / bundle.block_shift))
        x = _feed(audio, audio_rate, bundle.sample_rate, (warmup + blocks) * bundle.block_shift)
        streams.append((b, True, TimedDenoiser(bundle, options), x, blocks))
        streams.append((b, False, StreamingDenoiser(bundle, options), x, blocks))
    order = schedule([(den.block_shift, den.sample_rate, warmup + n) for _, _, den, _, n in streams],
                     turn_seconds)
    n_stages = {j: len(stage_names(bundles[streams[j][0]])) for j in range(len(streams))}
    times = {j: np.zeros((streams[j][4], n_stages[j] if streams[j][1] else 1), np.int64)
             for j in range(len(streams))}
    t_start = time.perf_counter()
    for j, k in order:
        _, timed, den, x, _ = streams[j]
        s = den.block_shift
        chunk = x[k * s:(k + 1) * s]
        t0 = perf_ns()
        den.process(chunk)
        total = perf_ns() - t0
        if k < warmup:
            continue
        row = times[j][k - warmup]
        if not timed:
            row[0] = total
            continue
        subs = [r.last for r in den.timed.values()]
        glue = den.t_step - sum(subs) - den.t_irfft
        row[:] = [den.t_framing, *subs, den.t_irfft + den.t_ola, glue, total - den.t_block, total]
    wall = time.perf_counter() - t_start
    records = []
    for b, bundle in enumerate(bundles):
        jt, jp = 2 * b, 2 * b + 1
        names = stage_names(bundle)
        staged, plain = times[jt], times[jp][:, 0]
        blocks = len(plain)
        budget_ns = 1e9 * bundle.block_shift / bundle.sample_rate
        audio_s = blocks * bundle.block_shift / bundle.sample_rate
        plain_ms = stats_ms(plain)
        rec = bundle_facts(bundle)
        rec.update({
            "blocks": blocks,
            "warmup_blocks": warmup,
            "audio_seconds": round(audio_s, 3),
            "budget_ms": budget_ns / 1e6,
            "stages": names,
            "stages_ms": {name: stats_ms(staged[:, i]) for i, name in enumerate(names)},
            "uninstrumented_ms": plain_ms,
            "instrumentation_overhead_ms": round(staged[:, -1].mean() / 1e6 - plain_ms["mean"], 6),
            "rtf": float(plain.sum() / 1e9 / audio_s),
            "budget_share": {k: round(plain_ms[k] * 1e6 / budget_ns, 6) for k in ("mean", "p50", "p99", "max")},
            "deadline_misses": int(np.count_nonzero(plain > budget_ns)),
            "deadline_miss_share": float(np.count_nonzero(plain > budget_ns) / blocks),
        })
        records.append(rec)
    for rec in records:
        rec["wall_seconds_all_bundles"] = round(wall, 3)
    return records


def profile(models: Sequence[str], options: Options, seconds: float = 20.0, warmup: int = 100,
            audio: str | None = None, noise: bool = False, label: str | None = None,
            command: str | None = None, turn_seconds: float = 1.0) -> dict[str, Any]:
    """Measure bundles interleaved on this device; return the JSON-ready profile."""
    if seconds <= 0:
        raise EdgeError(f"--seconds must be > 0, got {seconds}")
    if warmup < 0:
        raise EdgeError(f"--warmup must be >= 0 blocks, got {warmup}")
    if turn_seconds < 0:
        raise EdgeError(f"--interleave must be >= 0 seconds, got {turn_seconds}")
    bundles = [load_bundle(m) for m in models]
    x, sr, audio_desc = load_audio(audio, noise)
    device = device_facts(options, label)
    records = measure(bundles, options, seconds, warmup, x, sr, turn_seconds)
    device["temperature_c_after"] = temperatures() or None
    device["load_average_after"] = [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None
    return {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "device": device,
        "settings": {"seconds": seconds, "warmup_blocks": warmup, "threads": options.num_threads,
                     "xnnpack": options.xnnpack, "auto_level": options.auto_level, "audio": audio_desc,
                     "interleave": (f"round robin, turns of {turn_seconds:g} s of audio" if turn_seconds else
                                    "round robin, turns of one block") + ", first stream rotating",
                     "calls": "process() with one block shift of audio per call",
                     "clock": "time.perf_counter_ns"},
        "bundles": records,
    }


def format_table(prof: dict[str, Any]) -> str:
    """The short human table printed after a run."""
    lines = []
    dev = prof["device"]
    lines.append(f"{dev['label']}: {dev['interpreter']} {dev['interpreter_version']}, "
                 f"{dev['threads']} thread(s), XNNPACK {'on' if dev['xnnpack'] else 'off'}")
    for rec in prof["bundles"]:
        lines.append("")
        lines.append(f"{rec['name']} ({rec['quantization']}, sha256 {rec['sha256'][:12]}): {rec['blocks']} blocks "
                     f"of {rec['budget_ms']:.3g} ms after {rec['warmup_blocks']} warm-up")
        lines.append(f"  {'stage (ms/block)':<18}" + "".join(f"{k:>9}" for k in STAT_KEYS))
        for name in rec["stages"]:
            st = rec["stages_ms"][name]
            lines.append(f"  {name:<18}" + "".join(f"{st[k]:9.4f}" for k in STAT_KEYS))
        st = rec["uninstrumented_ms"]
        lines.append(f"  {'total, no timers':<18}" + "".join(f"{st[k]:9.4f}" for k in STAT_KEYS))
        lines.append(f"  real-time factor {rec['rtf']:.4f}; budget used p50 {100 * rec['budget_share']['p50']:.2f}% "
                     f"p99 {100 * rec['budget_share']['p99']:.2f}% max {100 * rec['budget_share']['max']:.1f}%; "
                     f"deadline misses {rec['deadline_misses']}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------
# command line
def register(sub) -> None:
    p = sub.add_parser(
        "profile", help="time each stage of bundles on this device, or render reports across devices",
        description="Measure bundles block by block (interleaved, after warm-up): per stage mean/p50/p95/p99/max "
                    "in ms per block, real-time factor, share of the block-shift budget and deadline misses, "
                    "with the device facts. With --report, render saved profiles as a markdown table.")
    add_model_options(p, several=True)
    p.add_argument("--seconds", type=float, default=20.0,
                   help="audio measured per bundle after warm-up, seconds (default: 20)")
    p.add_argument("--warmup", type=int, default=100, metavar="BLOCKS",
                   help="blocks each stream runs before timing starts (default: 100)")
    p.add_argument("--interleave", type=float, default=1.0, metavar="SECONDS",
                   help="audio each stream runs per turn, seconds; 0 = one block per turn, which also measures "
                        "cold caches (default: 1)")
    p.add_argument("--audio", metavar="FILE", default=None,
                   help="recording to feed, looped and resampled to each bundle's rate "
                        "(default: examples/p232_013_noisy.wav)")
    p.add_argument("--noise", action="store_true", help="feed generated white noise instead of a recording")
    p.add_argument("--label", default=None, help="device name in reports (default: board or CPU model and cores)")
    p.add_argument("--json", metavar="FILE", default=None, help="write the profile here (JSON)")
    p.add_argument("--report", metavar="FILE", nargs="+", default=None,
                   help="render these profile JSON files (any devices) as a markdown table instead of measuring")
    p.add_argument("--markdown", metavar="FILE", default=None, help="with --report: also write the table here")
    p.add_argument("--png", metavar="FILE", default=None,
                   help="with --report: draw a chart here (needs matplotlib: pip install 'edge-denoise[plot]')")
    p.add_argument("--quiet", "-q", action="store_true", help="no table on stdout")
    p.set_defaults(func=run)


def _command(args, models: Sequence[str]) -> str:
    """The canonical command line that reproduces this run."""
    parts = ["edge-denoise", "profile"]
    for m in models:
        parts += ["--model", m]
    parts += ["--seconds", f"{args.seconds:g}", "--warmup", str(args.warmup), "--interleave", f"{args.interleave:g}",
              "--threads", str(args.threads)]
    if not args.xnnpack:
        parts.append("--no-xnnpack")
    if args.noise:
        parts.append("--noise")
    elif args.audio:
        parts += ["--audio", args.audio]
    if args.label:
        parts += ["--label", repr(args.label)]
    if args.json:
        parts += ["--json", args.json]
    return " ".join(parts)


def _write(path: str, text: str) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def run(args) -> int:
    if args.report:
        if args.model:
            raise EdgeError("--report renders saved profiles; it does not take --model (run them separately)")
        if args.png:
            try:
                import matplotlib  # noqa: F401 (imported only to learn whether it is installed)
            except ImportError:
                raise EdgeError("--png needs matplotlib: pip install 'edge-denoise[plot]' "
                                "(the markdown table needs nothing)") from None
        profiles = load_profiles(args.report)
        table = render_markdown(profiles)
        if args.markdown:
            _write(args.markdown, table)
        if args.png:
            render_png(profiles, args.png)
        if not args.quiet:
            sys.stdout.write(table)
        return 0
    if args.png or args.markdown:
        raise EdgeError("--png and --markdown go with --report FILE...")
    if args.noise and args.audio:
        raise EdgeError("--noise and --audio exclude each other")
    chosen = ModelOptions.from_args(args)
    models = chosen.paths()
    options = chosen.options
    prof = profile(models, options, args.seconds, args.warmup, args.audio, args.noise, args.label,
                   _command(args, models), args.interleave)
    if args.json:
        _write(args.json, json.dumps(prof, indent=1) + "\n")
    if not args.quiet:
        print(format_table(prof))
    return 0
