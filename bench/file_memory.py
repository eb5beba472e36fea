"""Peak RSS of ``edge-denoise denoise`` on a long 48 kHz stereo file: streamed in blocks against the whole-file path.

Generates a 48 kHz stereo PCM_16 recording (the example speech looped, a different noise in each
channel) in ``$EDGE_BENCH_WORK``, never in git. Rows, each its own child process measured with
``os.wait4`` (ru_maxrss of exactly that child):

- the streamed path (``edge-denoise denoise``: soundfile blocks, soxr's streaming resampler, one
  delay-compensated stream per channel, blocks written to the temporary output) on the long file
  (default 30 min) and on a shorter one (default 5 min): its memory should not depend on the length;
- the whole-file path of before issue #19 item 8 (read the file whole, resample, denoise and resample
  back in memory, write; ``edge.cmd_denoise.denoise_array``) on the shorter file only, as the long one
  would need a few GB and as long again in time;
- a child that only imports what the runtime imports (the floor).

    python bench/file_memory.py [--minutes 30] [--compare-minutes 5] [--runs 2]
"""

from __future__ import annotations

import argparse
import shutil
import sys

import numpy as np
from common import EXAMPLE, WORK, summary, write_result
from memory import IMPORTS_ONLY

GOAL_MB = 150.0
RATE = 48000
WHOLE_FILE = """
import sys, numpy as np, soundfile as sf, edge
from edge.audio import read_audio
from edge.cmd_denoise import denoise_array
src, dst, model = sys.argv[1:4]
x, sr, subtype = read_audio(src)
y = denoise_array(x, sr, edge.load_bundle(model), edge.Options())
sf.write(dst, np.clip(y, -1.0, 1.0), sr, subtype=subtype)
"""


LAUNCHER = """
import os, sys, time
t0 = time.perf_counter()
pid = os.spawnv(os.P_NOWAIT, sys.argv[1], sys.argv[1:])
_, status, usage = os.wait4(pid, 0)
print(os.waitstatus_to_exitcode(status), usage.ru_maxrss, time.perf_counter() - t0)
"""
"""A small process between this one and the measured child. On Linux a child's ru_maxrss starts at the
RSS of the process that forked it (the high-water mark survives fork and exec), so measuring from this
script directly, which holds the generated audio and a loaded bundle, would report this script's size."""


def peak_rss_mb(cmd: list[str]) -> tuple[float, float]:
    """(peak resident set size in MB (10^6 bytes), wall seconds) of one child process."""
    import subprocess

    got = subprocess.run([sys.executable, "-S", "-c", LAUNCHER, shutil.which(cmd[0]) or cmd[0], *cmd[1:]],
                         capture_output=True, text=True, check=True)
    code, kib, wall = got.stdout.split()
    if int(code) != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({code}): {got.stderr[-2000:]}")
    return int(kib) * 1024 / 1e6, float(wall)


def make_recording(path, minutes: float) -> None:
    """48 kHz stereo PCM_16, written a minute at a time (the generator's own memory stays small)."""
    import soundfile as sf

    from edge.audio import read_audio, to_mono_rate

    if path.is_file() and sf.info(path).frames == int(minutes * 60 * RATE):
        return
    x, sr, _ = read_audio(str(EXAMPLE))
    speech = to_mono_rate(x, sr, RATE)
    rng = np.random.default_rng(0)
    total, step = int(minutes * 60 * RATE), 60 * RATE
    with sf.SoundFile(path, "w", RATE, 2, "PCM_16") as f:
        for start in range(0, total, step):
            n = min(step, total - start)
            s = np.take(speech, np.arange(start, start + n) % len(speech))
            block = np.stack([0.8 * s, 0.6 * s], axis=1) + 0.02 * rng.standard_normal((n, 2))
            f.write(np.clip(block, -1, 1).astype(np.float32))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=30.0, help="long recording, minutes (default: 30)")
    p.add_argument("--compare-minutes", type=float, default=5.0,
                   help="shorter recording, run through both paths, minutes (default: 5)")
    p.add_argument("--runs", type=int, default=2, help="runs per row on the shorter file (default: 2; the long "
                                                       "file runs once, it takes ~10 min on a 2-core VM)")
    p.add_argument("--model", default=None, help="bundle (default: the CLI's default bundle)")
    args = p.parse_args()
    import edge
    from edge.cmd_denoise import default_model

    model = args.model or default_model()
    bundle = edge.load_bundle(model)
    WORK.mkdir(parents=True, exist_ok=True)
    files = {m: WORK / f"speech-{m:g}min-48k-stereo.wav" for m in (args.minutes, args.compare_minutes)}
    for m, path in files.items():
        make_recording(path, m)
    out = WORK / "denoised-48k-stereo.wav"
    exe = shutil.which("edge-denoise")
    cli = [exe] if exe else [sys.executable, "-m", "edge.cli"]

    def streamed(m):
        return cli + ["denoise", str(files[m]), "-o", str(out), "--overwrite", "-q", "--model", model]

    cases = [
        ("imports only (python + numpy + soundfile + soxr + interpreter)", [sys.executable, "-c", IMPORTS_ONLY],
         args.runs),
        (f"streamed (edge-denoise denoise), {args.compare_minutes:g} min", streamed(args.compare_minutes), args.runs),
        (f"whole file in memory (before #19), {args.compare_minutes:g} min",
         [sys.executable, "-c", WHOLE_FILE, str(files[args.compare_minutes]), str(out), model], args.runs),
        (f"streamed (edge-denoise denoise), {args.minutes:g} min", streamed(args.minutes), 1),
    ]
    rows = []
    for what, cmd, runs in cases:
        got = [peak_rss_mb(cmd) for _ in range(runs)]
        rows.append({"what": what, "unit": "MB peak RSS", **summary([g[0] for g in got], 1),
                     "wall_s": summary([g[1] for g in got], 1)["median"], "command": " ".join(cmd[:3]) + " ..."
                     if "-c" in cmd else " ".join(cmd)})
        print(f"{what:<66} median {rows[-1]['median']:.1f} MB (min {rows[-1]['min']:.1f}, max "
              f"{rows[-1]['max']:.1f}), {rows[-1]['wall_s']:.0f} s", flush=True)
    out.unlink(missing_ok=True)
    long_row, short_streamed, short_whole = rows[3], rows[1], rows[2]
    goals = [{"what": f"peak RSS, denoise of a {args.minutes:g} min 48 kHz stereo file", "goal": f"<= {GOAL_MB:g}",
              "value": long_row["max"], "met": long_row["max"] <= GOAL_MB}]
    write_result("file_memory", {
        "title": f"Peak memory of edge-denoise denoise on {args.minutes:g} min of 48 kHz stereo",
        "settings": {"runs": args.runs, "minutes": args.minutes, "compare_minutes": args.compare_minutes,
                     "audio": f"{EXAMPLE.name} looped at 48 kHz, stereo, noise per channel, PCM_16",
                     "bundle": bundle.name, "bundle_sha256": bundle.sha256,
                     "measure": "os.wait4 ru_maxrss of the child, MB = 10^6 bytes", "threads": 1},
        "rows": rows, "goals": goals,
        "ratios": {"whole_file_over_streamed_at_compare_minutes": round(short_whole["median"]
                                                                       / short_streamed["median"], 2),
                   "streamed_long_over_streamed_short": round(long_row["median"] / short_streamed["median"], 3)},
        "notes": ["Goals are checked against the worst run (max), not the median.",
                  "The whole-file path grows with the file (it holds the input, the resampled signal, the "
                  "output and its resampled copy); it runs on the shorter file only."]})
    return 0


if __name__ == "__main__":
    sys.exit(main())
