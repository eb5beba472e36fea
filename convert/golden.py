"""A bundle's golden pair for ``edge-denoise check``: a short input and the bundle's own output on it.

The converter calls ``add`` on every bundle it writes. Bundles already shipped get theirs with
``python -m convert.golden --add $(dirname pretrained_model/*/*/manifest.json)`` (re-runnable: same files, same manifest
on the same interpreter; the ``.tflite`` files are never touched).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from io import BytesIO
from pathlib import Path

import numpy as np

from edge.bundle import MANIFEST, load_bundle, sha256_bytes
from edge.check import GOLDEN
from edge.interpreter import interpreter_package
from edge.options import Options
from edge.stream import denoise

from .errors import ConvertError

SECONDS = 1.0
"""Length of the golden input: 125 blocks of 8 ms, 32 KB of int16 in and 64 KB of float32 out."""
INPUT, OUTPUT = "golden_input.npy", "golden_output.npy"
FILES = (INPUT, OUTPUT)
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "p232_013_noisy.wav"


def excerpt(audio: np.ndarray, sample_rate: int, seconds: float = SECONDS) -> tuple[np.ndarray, int]:
    """(int16 samples, start sample): the loudest ``seconds`` of ``audio`` (float in [-1, 1]) on a 0.1 s grid,
    so that the pair holds speech, not the lead-in silence; all of it when shorter."""
    n = int(round(seconds * sample_rate))
    hop = max(1, sample_rate // 10)
    x = np.asarray(audio, np.float64)
    starts = range(0, max(1, len(x) - n + 1), hop)
    start = max(starts, key=lambda s: float(np.sum(np.square(x[s:s + n]))))
    return np.clip(np.round(x[start:start + n] * 32768.0), -32768, 32767).astype(np.int16), start


def _npy(a: np.ndarray) -> bytes:
    buf = BytesIO()
    np.save(buf, a, allow_pickle=False)
    return buf.getvalue()


def add(folder: str | os.PathLike[str], audio: np.ndarray, source: str) -> dict:
    """Write ``golden_input.npy`` / ``golden_output.npy`` into a verified bundle folder and describe them in its
    manifest (with sha256 and the mode's verification tolerance). Returns the manifest entry."""
    folder = Path(folder)
    bundle = load_bundle(folder)
    verification = bundle.manifest.get("verification") or {}
    if "tolerance_snr_db" not in verification:
        raise ConvertError(f"{folder / MANIFEST}: no verification.tolerance_snr_db; a golden pair needs the mode's "
                           "tolerance (convert the bundle again)")
    x16, start = excerpt(audio, bundle.sample_rate)
    options = Options()
    y = denoise(x16.astype(np.float32) / 32768.0, bundle, options).astype(np.float32)
    pkg = interpreter_package()
    entry = {
        "input": {"file": INPUT, "sha256": "", "shape": [len(x16)], "dtype": "int16", "scale": 1 / 32768},
        "output": {"file": OUTPUT, "sha256": "", "shape": [len(y)], "dtype": "float32"},
        "source": f"{source} {start / bundle.sample_rate:.2f}-{(start + len(x16)) / bundle.sample_rate:.2f} s",
        "reference": f"{pkg.name} {pkg.version}, XNNPACK {'on' if options.xnnpack else 'off'}, "
                     f"{options.num_threads} thread(s), edge.denoise (delay compensated)",
        "tolerance_snr_db": float(verification["tolerance_snr_db"]),
    }
    for key, fname, a in (("input", INPUT, x16), ("output", OUTPUT, y)):
        content = _npy(a)
        (folder / fname).write_bytes(content)
        entry[key]["sha256"] = sha256_bytes(content)
    mpath = folder / MANIFEST
    manifest = json.loads(mpath.read_text(encoding="utf-8"))
    manifest[GOLDEN] = entry
    tmp = mpath.with_name(f".{MANIFEST}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=1)
        f.write("\n")
    os.replace(tmp, mpath)
    return entry


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m convert.golden", description=__doc__.split("\n\n")[0])
    p.add_argument("--add", nargs="+", required=True, metavar="DIR", help="bundle folders to give a golden pair")
    p.add_argument("--audio", default=str(EXAMPLE), metavar="WAV",
                   help="16-bit audio at the bundle's rate to take the loudest second of (default: %(default)s)")
    args = p.parse_args(argv)
    import soundfile as sf

    try:
        audio, sr = sf.read(args.audio, dtype="float32", always_2d=True)
    except (OSError, RuntimeError) as exc:
        raise ConvertError(f"{args.audio}: cannot read audio ({exc})") from None
    for folder in args.add:  # every folder checked before any is written
        rate = load_bundle(folder).sample_rate
        if sr != rate:
            raise ConvertError(f"{args.audio}: expected audio at {rate} Hz for {folder}, got {sr} Hz")
    for folder in args.add:
        entry = add(folder, audio.mean(axis=1), os.path.basename(args.audio))
        print(f"{folder}: golden pair from {entry['source']}, tolerance {entry['tolerance_snr_db']:g} dB")
    return 0


if __name__ == "__main__":
    from edge.errors import EdgeError

    try:
        sys.exit(main())
    except (ConvertError, EdgeError) as exc:
        print(f"python -m convert.golden: error: {exc}", file=sys.stderr)
        sys.exit(2)
