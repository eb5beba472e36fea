"""``edge-denoise eval``: PESQ-WB, STOI and SI-SDR of a bundle on clean/noisy pairs, and the gain over noisy."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from .audio import EXTENSIONS, read_audio, to_mono_rate
from .errors import AudioError, EdgeError

RATE = 16000


def si_sdr(ref: np.ndarray, est: np.ndarray) -> float:
    """Scale-invariant SDR in dB (zero-mean)."""
    ref = ref.astype(np.float64) - np.mean(ref)
    est = est.astype(np.float64) - np.mean(est)
    alpha = np.dot(est, ref) / (np.dot(ref, ref) + 1e-12)
    target = alpha * ref
    return float(10 * np.log10((np.dot(target, target) + 1e-12) / (np.dot(est - target, est - target) + 1e-12)))


def scores(clean: np.ndarray, est: np.ndarray) -> dict[str, float]:
    """PESQ-WB, STOI and SI-SDR of ``est`` against ``clean`` (both mono at 16 kHz, same length)."""
    try:
        from pesq import pesq
        from pystoi import stoi
    except ImportError:
        raise EdgeError("eval needs pesq and pystoi: pip install 'edge-denoise[eval]'") from None
    try:
        p = float(pesq(RATE, clean, est, "wb"))
    except Exception as exc:  # pesq raises its own types, e.g. NoUtterancesError
        raise AudioError(f"PESQ failed ({exc.__class__.__name__}: {exc})") from None
    return {"pesq_wb": p, "stoi": float(stoi(clean, est, RATE, extended=False)), "si_sdr": si_sdr(clean, est)}


def register(sub) -> None:
    from .cli import add_model_options

    p = sub.add_parser("eval", help="score a bundle on clean/noisy folder pairs (PESQ-WB, STOI, SI-SDR)",
                       description="Denoise every file of --noisy with the bundle and score it against the "
                                   "same-named file of --clean; the noisy input is scored too.")
    add_model_options(p)
    p.add_argument("--clean", metavar="DIR", required=True, help="clean references")
    p.add_argument("--noisy", metavar="DIR", required=True, help="noisy inputs (same file names)")
    p.add_argument("--json", metavar="FILE", default=None, help="write per-file scores and means here")
    p.add_argument("--quiet", "-q", action="store_true", help="print only the means")
    p.set_defaults(func=run)


def pairs(clean_dir: str, noisy_dir: str) -> list[tuple[Path, Path]]:
    """(clean, noisy) paths: every audio file under ``noisy_dir`` with the same-named file under ``clean_dir``;
    AudioError when a folder or a clean reference is missing, or there is no noisy file."""
    cd, nd = Path(clean_dir), Path(noisy_dir)
    for d in (cd, nd):
        if not d.is_dir():
            raise AudioError(f"{d}: no such folder")
    noisy = sorted(p for p in nd.rglob("*") if p.suffix.lower() in EXTENSIONS)
    found = []
    for n in noisy:
        rel = n.relative_to(nd)
        c = cd / rel
        if not c.exists():
            raise AudioError(f"{n}: no clean reference {c}")
        found.append((c, n))
    if not found:
        raise AudioError(f"{nd}: no noisy audio files")
    return found


def read_pair(clean_path: Path, noisy_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """A clean/noisy pair as mono float32 at 16 kHz, cut to the shorter side."""
    xc, src, _ = read_audio(str(clean_path))
    xn, srn, _ = read_audio(str(noisy_path))
    clean, noisy = to_mono_rate(xc, src, RATE), to_mono_rate(xn, srn, RATE)
    m = min(len(clean), len(noisy))
    return clean[:m], noisy[:m]


def evaluate(bundle, options, pairs, say=lambda msg: None) -> dict:
    from .stream import denoise

    rows = []
    audio_s = wall_s = 0.0
    for k, (c, n) in enumerate(pairs, 1):
        clean, noisy = read_pair(c, n)
        m = len(clean)
        t0 = time.perf_counter()
        est = denoise(noisy, bundle, options) if bundle.sample_rate == RATE else None
        if est is None:
            raise AudioError(f"eval scores at {RATE} Hz; bundle runs at {bundle.sample_rate} Hz")
        wall_s += time.perf_counter() - t0
        audio_s += m / RATE
        s_in, s_out = scores(clean, noisy), scores(clean, est)
        row = {"file": n.name,
               **{f"noisy_{k2}": round(v, 4) for k2, v in s_in.items()},
               **{k2: round(v, 4) for k2, v in s_out.items()},
               **{f"gain_{k2}": round(s_out[k2] - s_in[k2], 4) for k2 in s_out}}
        rows.append(row)
        say(f"[{k}/{len(pairs)}] {n.name}: PESQ {s_in['pesq_wb']:.2f} -> {s_out['pesq_wb']:.2f}  STOI "
            f"{s_in['stoi']:.3f} -> {s_out['stoi']:.3f}  SI-SDR {s_in['si_sdr']:.1f} -> {s_out['si_sdr']:.1f} dB")
    keys = [k for k in rows[0] if k != "file"]
    means = {k: round(float(np.mean([r[k] for r in rows])), 4) for k in keys}
    return {"model": bundle.name, "bundle_sha256": bundle.sha256, "quantization": bundle.quantization,
            "files": len(rows), "audio_seconds": round(audio_s, 2),
            "real_time_factor": round(wall_s / audio_s, 4), "means": means, "per_file": rows}


def table(result: dict) -> str:
    m = result["means"]
    lines = ["| | PESQ-WB | STOI | SI-SDR dB |", "|---|---|---|---|",
             f"| noisy input | {m['noisy_pesq_wb']:.2f} | {m['noisy_stoi']:.3f} | {m['noisy_si_sdr']:.1f} |",
             f"| {result['model']} | {m['pesq_wb']:.2f} | {m['stoi']:.3f} | {m['si_sdr']:.1f} |",
             f"| gain | {m['gain_pesq_wb']:+.2f} | {m['gain_stoi']:+.3f} | {m['gain_si_sdr']:+.1f} |"]
    return "\n".join(lines)


def run(args) -> int:
    from .cli import model_and_options

    found = pairs(args.clean, args.noisy)
    bundle, options = model_and_options(args)
    say = (lambda msg: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    result = evaluate(bundle, options, found, say)
    result["clean"], result["noisy"] = os.path.basename(os.path.normpath(args.clean)), \
        os.path.basename(os.path.normpath(args.noisy))
    print(table(result))
    print(f"{result['files']} files, {result['audio_seconds']:.1f} s, real-time factor "
          f"{result['real_time_factor']:.4f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
            f.write("\n")
    return 0
