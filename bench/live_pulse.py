"""`edge-denoise live` end to end through a real PulseAudio server: a file into a pipe source, the pipe sink read back.

Starts a private PulseAudio (no system one is touched) with module-pipe-source and module-pipe-sink at the
model rate, writes a WAV file into the source FIFO in real time, runs ``edge-denoise live --input pulse
--output pulse`` (PortAudio -> ALSA pulse plugin -> PulseAudio) and reads the sink FIFO. ``live
--record-input`` saves what its denoiser was given: the file must be in it sample for sample (the audio
path into the denoiser is exact). The output is cut into 0.25 s segments and each is looked for in a
``StreamingDenoiser`` run on that recorded input (a trained model remembers its whole past, so the exact
lead-in matters); a segment is exact when no sample differs by more than int16 rounding (1.5 LSB). A
device glitch shifts the alignment, so each segment finds its own lag. Writes JSON; exit 0 when the input
is exact and at least --min-exact of the segments match, 1 when not, 3 when this machine cannot run it (no
pulseaudio, PortAudio or ALSA pulse plugin; the reason is in the JSON).

    python bench/live_pulse.py --model DIR [--input examples/p232_013_noisy.wav] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SEGMENT = 4000
"""Samples per checked output segment (0.25 s at 16 kHz)."""
EXACT_LSB = 1.5
"""Largest sample error of an exact segment, in int16 steps (PulseAudio rounds our float32 to s16)."""

PA_CONFIG = """\
load-module module-native-protocol-unix auth-anonymous=1 socket={dir}/native
load-module module-pipe-source source_name=pipein file={dir}/in.fifo format=s16le rate={rate} channels=1
load-module module-pipe-sink sink_name=pipeout file={dir}/out.fifo format=s16le rate={rate} channels=1 \
use_system_clock_for_timing=yes
set-default-source pipein
set-default-sink pipeout
"""


class Skip(Exception):
    """This machine cannot run the check; the message says what is missing."""


def start_pulse(tmp: str, rate: int) -> tuple[subprocess.Popen, dict[str, str]]:
    exe = shutil.which("pulseaudio")
    if exe is None:
        raise Skip("no pulseaudio binary (apt-get install pulseaudio)")
    with open(os.path.join(tmp, "pa.pa"), "w") as f:
        f.write(PA_CONFIG.format(dir=tmp, rate=rate))
    os.makedirs(os.path.join(tmp, "run"), exist_ok=True)
    env = {**os.environ, "HOME": tmp, "PULSE_RUNTIME_PATH": os.path.join(tmp, "run"),
           "PULSE_SERVER": f"unix:{tmp}/native"}
    log = open(os.path.join(tmp, "pulseaudio.log"), "w")
    proc = subprocess.Popen([exe, "-n", "-F", os.path.join(tmp, "pa.pa"), "--daemonize=no", "--exit-idle-time=-1",
                             "--use-pid-file=no", "--log-target=stderr"], env=env, stdout=log, stderr=log)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log.close()
            raise Skip(f"pulseaudio exited with {proc.returncode}: "
                       + Path(tmp, "pulseaudio.log").read_text()[-400:].replace("\n", " | "))
        if all(os.path.exists(os.path.join(tmp, n)) for n in ("native", "in.fifo", "out.fifo")):
            return proc, env
        time.sleep(0.1)
    proc.kill()
    raise Skip("pulseaudio did not create its socket and FIFOs within 15 s")


def check_portaudio(env: dict[str, str]) -> None:
    probe = ("import sounddevice as sd; names = [d['name'] for d in sd.query_devices()]; "
             "assert 'pulse' in names, f'no ALSA pulse device among {names}'")
    r = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=30)
    if r.returncode:
        raise Skip("sounddevice/PortAudio/ALSA pulse plugin unusable (pip install sounddevice; apt-get install "
                   "libportaudio2 libasound2-plugins): "
                   + (r.stderr.strip().splitlines()[-1] if r.stderr.strip() else str(r.returncode)))


def find(y: np.ndarray, r: np.ndarray) -> tuple[int, float]:
    """(lag, largest error in int16 steps) of the best match of segment ``r`` in ``y``."""
    c = np.correlate(y, r, "valid")
    energy = np.convolve(y.astype(np.float64) ** 2, np.ones(len(r)), "valid")
    lag = int(np.argmax(c / np.sqrt(energy + 1e-9)))  # normalised: a loud passage must not win by loudness
    return lag, float(np.max(np.abs(y[lag:lag + len(r)] - r))) * 32768


def analyse(model: str, x: np.ndarray, got_in: np.ndarray, y: np.ndarray) -> dict:
    """Input: the file must be in what the denoiser got, sample exact. Output: the model's stream on that input."""
    import edge
    from edge.daemon import pcm16_to_float

    xf = pcm16_to_float(x.astype("<i2").tobytes())
    at, err = find(got_in, xf[:SEGMENT])
    input_exact = at + len(xf) <= len(got_in) and bool(np.array_equal(got_in[at:at + len(xf)], xf))
    # What `live` plays is the plain stream output (not delay compensated) of exactly what it was given.
    ref = edge.StreamingDenoiser(edge.load_bundle(model)).process(got_in)[at:at + len(xf)]
    segs = [find(y, ref[i:i + SEGMENT]) for i in range(0, len(ref) - SEGMENT + 1, SEGMENT)]
    exact = [s for s in segs if s[1] <= EXACT_LSB]
    # Distinct alignments of the exact segments: one means no glitch; each more is a dropped/inserted run.
    lags = sorted({lag - i * SEGMENT for i, (lag, err) in enumerate(segs) if err <= EXACT_LSB})
    return {"input_exact": input_exact, "input_offset": at, "segments": len(segs), "segments_exact": len(exact),
            "exact_fraction": round(len(exact) / len(segs), 3),
            "segment_max_error_lsb": [round(s[1], 2) for s in segs], "alignments": lags}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="bundle folder (16 kHz)")
    ap.add_argument("--input", default=str(REPO / "examples" / "p232_013_noisy.wav"), help="16 kHz mono WAV")
    ap.add_argument("--out", default=None, help="JSON result (default: stdout only)")
    ap.add_argument("--min-exact", type=float, default=0.75, help="fraction of exact segments to pass (default 0.75)")
    ap.add_argument("--timeout", type=float, default=90.0, help="seconds for the whole run (default 90)")
    args = ap.parse_args(argv)

    import soundfile as sf

    x, rate = sf.read(args.input, dtype="int16")
    x = x if x.ndim == 1 else x[:, 0]
    lead, tail = rate // 4, rate
    result: dict = {"input": os.path.relpath(args.input, REPO), "model": args.model, "seconds": len(x) / rate}
    tmp = tempfile.mkdtemp(prefix="edge-live-pulse-")
    pulse = None
    try:
        try:
            pulse, env = start_pulse(tmp, rate)
            check_portaudio(env)
        except Skip as exc:
            result["skipped"] = str(exc)
            return _finish(result, args.out, 3)
        result["pulseaudio"] = subprocess.run(["pulseaudio", "--version"], capture_output=True,
                                              text=True).stdout.strip()
        got = bytearray()
        stop = threading.Event()

        def read_sink() -> None:
            fd = os.open(os.path.join(tmp, "out.fifo"), os.O_RDONLY | os.O_NONBLOCK)
            try:
                while not stop.is_set():
                    try:
                        data = os.read(fd, 65536)
                    except BlockingIOError:
                        data = b""
                    if data:
                        got.extend(data)
                    else:
                        time.sleep(0.005)
            finally:
                os.close(fd)

        reader = threading.Thread(target=read_sink, daemon=True)
        reader.start()
        stats_path = os.path.join(tmp, "live.json")
        recorded = os.path.join(tmp, "input.wav")
        seconds = (lead + len(x) + tail) / rate
        cmd = [sys.executable, "-m", "edge.cli", "live", "--model", args.model, "--input", "pulse", "--output",
               "pulse", "--duration", f"{seconds:.3f}", "--stats-json", stats_path, "--stats-interval", "1",
               "--record-input", recorded]
        result["command"] = " ".join(cmd[1:])
        live = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True, cwd=REPO)
        lines: list[str] = []
        opened = threading.Event()

        def read_log() -> None:
            for line in live.stderr:
                lines.append(line.rstrip("\n"))
                if "opened" in line:
                    opened.set()

        logger = threading.Thread(target=read_log, daemon=True)
        logger.start()
        # Nothing is written until `live` has its stream open (a source with no listener drops its audio).
        # Then real-time pacing, as a pipe source has no clock and plays what arrives when it arrives;
        # after the file, silence (as from a real microphone) until `live` has seen --duration.
        data = np.zeros(lead, "<i2").tobytes() + x.astype("<i2").tobytes()
        fd = os.open(os.path.join(tmp, "in.fifo"), os.O_WRONLY)
        t_start = time.monotonic()
        step = rate // 50 * 2
        silence = bytes(step)
        try:
            while not opened.wait(0.01):
                if live.poll() is not None or time.monotonic() - t_start > args.timeout:
                    break
            t0 = time.monotonic()
            i = 0
            while live.poll() is None and time.monotonic() - t_start < args.timeout:
                wait = t0 + i / 2 / rate - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                os.write(fd, data[i:i + step] if i < len(data) else silence)
                i += step
        finally:
            os.close(fd)
        try:
            live.wait(timeout=max(5.0, args.timeout - (time.monotonic() - t_start)))
        except subprocess.TimeoutExpired:
            live.kill()
            live.wait()
        logger.join(2)
        err = "\n".join(lines)
        time.sleep(0.3)
        stop.set()
        reader.join(2)
        result["live_rc"] = live.returncode
        result["live_log"] = [ln for ln in err.splitlines() if "XNNPACK" not in ln][-12:]
        if os.path.exists(stats_path):
            with open(stats_path) as f:
                result["live_stats"] = json.load(f)
        y = np.frombuffer(bytes(got[: len(got) // 2 * 2]), "<i2").astype(np.float32) / 32768
        result["sink_seconds"] = round(len(y) / rate, 3)
        if live.returncode != 0 or len(y) < len(x) or not os.path.exists(recorded):
            return _finish(result, args.out, 1)
        got_in, _ = sf.read(recorded, dtype="float32")
        result.update(analyse(args.model, x, got_in, y))
        passed = result["input_exact"] and result["exact_fraction"] >= args.min_exact
        return _finish(result, args.out, 0 if passed else 1)
    finally:
        if pulse is not None:
            pulse.terminate()
            try:
                pulse.wait(5)
            except subprocess.TimeoutExpired:
                pulse.kill()
        shutil.rmtree(tmp, ignore_errors=True)


def _finish(result: dict, out: str | None, code: int) -> int:
    from common import portable

    result["exit"] = code
    text = json.dumps(portable(result), indent=1)
    if out:
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        with open(out, "w") as f:
            f.write(text + "\n")
    print(text)
    return code


if __name__ == "__main__":
    sys.exit(main())
