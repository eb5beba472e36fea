"""Peak RSS of ``edge-denoise denoise`` on a 60 s recording, each run its own child process.

The peak comes from ``os.wait4`` (the kernel's ru_maxrss of exactly that child). Rows: a 16 kHz mono
file, the same as raw PCM streamed through stdin/stdout, and a child that only imports what the
runtime imports (the floor the interpreter and libraries set).

    python bench/memory.py [--runs 3] [--seconds 60]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
from common import EXAMPLE, WORK, published_bundles, summary, write_result

GOAL_MB = 120.0
IMPORTS_ONLY = "import numpy, soundfile, soxr, edge, edge.cmd_denoise; from edge.interpreter import make_interpreter"


def peak_rss_mb(cmd: list[str], stdin_path: str | None = None) -> tuple[float, float]:
    """(peak resident set size in MB (10^6 bytes), wall seconds) of one child process."""
    with open(stdin_path or os.devnull, "rb") as fin, tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd, stdin=fin, stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(p.pid, 0)
        wall = time.perf_counter() - t0
        p.returncode = os.waitstatus_to_exitcode(status)
        if p.returncode != 0:
            err.seek(0)
            raise SystemExit(f"{' '.join(cmd)} failed ({p.returncode}): {err.read().decode(errors='replace')[-2000:]}")
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    return usage.ru_maxrss * scale / 1e6, wall


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=3, help="runs per row (default: 3)")
    p.add_argument("--seconds", type=float, default=60.0, help="length of the test recording (default: 60)")
    args = p.parse_args()
    import soundfile as sf

    from edge.audio import read_audio, to_mono_rate

    bundles = published_bundles(("float32", "dynamic"))
    WORK.mkdir(parents=True, exist_ok=True)
    x, sr, _ = read_audio(str(EXAMPLE))
    audio = np.resize(to_mono_rate(x, sr, 16000), int(args.seconds * 16000))
    wav = WORK / f"speech-{args.seconds:g}s.wav"
    pcm = WORK / f"speech-{args.seconds:g}s.s16le"
    sf.write(wav, audio, 16000, subtype="PCM_16")
    pcm.write_bytes((np.clip(audio, -1, 1 - 1 / 32768) * 32768).round().astype("<i2").tobytes())
    exe = shutil.which("edge-denoise")
    cli = [exe] if exe else [sys.executable, "-m", "edge.cli"]
    out = WORK / "denoised.wav"
    cases = {
        "imports only (python + numpy + soundfile + soxr + interpreter)": ([sys.executable, "-c", IMPORTS_ONLY], None),
        "denoise 60 s file, float32 bundle": (
            cli + ["denoise", str(wav), "-o", str(out), "--overwrite", "-q", "--model", bundles["float32"]], None),
        "denoise 60 s file, dynamic bundle": (
            cli + ["denoise", str(wav), "-o", str(out), "--overwrite", "-q", "--model", bundles["dynamic"]], None),
        "denoise 60 s raw PCM stdin -> stdout, float32 bundle": (
            cli + ["denoise", "-", "-q", "--model", bundles["float32"]], str(pcm)),
    }
    rows, goals = [], []
    for what, (cmd, stdin) in cases.items():
        what = what.replace("60 s", f"{args.seconds:g} s")
        runs = [peak_rss_mb(cmd, stdin) for _ in range(args.runs)]
        rows.append({"what": what, "unit": "MB peak RSS", **summary([r[0] for r in runs], 1),
                     "wall_s": summary([r[1] for r in runs], 2)["median"],
                     "command": " ".join(cmd) + (f" < {stdin} > /dev/null" if stdin else "")})
        print(f"{what:<60} median {rows[-1]['median']:.1f} MB (min {rows[-1]['min']:.1f}, max {rows[-1]['max']:.1f})")
        if what.startswith("denoise"):
            goals.append({"what": f"peak RSS, {what}", "goal": f"<= {GOAL_MB:g}", "value": rows[-1]["max"],
                          "met": rows[-1]["max"] <= GOAL_MB})
    write_result("memory", {
        "title": f"Peak memory of edge-denoise denoise ({args.seconds:g} s of 16 kHz speech)",
        "settings": {"runs": args.runs, "seconds": args.seconds, "audio": f"{EXAMPLE.name} looped, 16 kHz mono PCM_16",
                     "measure": "os.wait4 ru_maxrss of the child, MB = 10^6 bytes", "threads": 1},
        "rows": rows, "goals": goals,
        "notes": ["Goals are checked against the worst run (max), not the median."]})
    return 0


if __name__ == "__main__":
    sys.exit(main())
