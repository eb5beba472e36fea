"""`edge-denoise live`: the pipeline with a stand-in PortAudio stream, and through a real sound server."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import edge

from .conftest import REPO, noise_audio
from .daemon_util import RATE


def test_import_and_cli_work_without_sounddevice(small_bundle):
    code = ("import sys; sys.modules['sounddevice'] = None\n"
            "import edge, edge.cli\n"
            "edge.cli.build_parser()\n"
            "assert 'sounddevice' not in [m for m, v in sys.modules.items() if v is not None]\n"
            "sys.exit(edge.cli.main(['live', '--model', sys.argv[1], '--list-devices']))\n")
    r = subprocess.run([sys.executable, "-c", code, small_bundle], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, r.stderr
    assert "live audio needs sounddevice" in r.stderr


class FakeStream:
    """Stands in for a PortAudio duplex stream: a thread calls the pipeline's callback with a signal.

    A mock, because this machine may have no sound device: it drives the same callbacks PortAudio
    would, in lock step (each callback waits until the worker has caught up) so the output is exact.
    """

    def __init__(self, pipeline, x: np.ndarray, blocksize: int, lockstep: bool = True, die_after: int | None = None):
        self.p, self.x, self.bs = pipeline, x, blocksize
        self.out: list[np.ndarray] = []
        self.active = True
        self.lockstep = lockstep
        self.die_after = die_after
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        for k, i in enumerate(range(0, len(self.x) - self.bs + 1, self.bs)):
            if not self.active or (self.die_after is not None and k >= self.die_after):
                break
            indata = self.x[i:i + self.bs, None].copy()
            outdata = np.full((self.bs, 1), np.nan, np.float32)
            self.p.callback(indata, outdata, self.bs, None, None)
            self.out.append(outdata[:, 0].copy())
            deadline = time.monotonic() + 5
            while self.lockstep and not self.p.idle and time.monotonic() < deadline:
                time.sleep(0.0005)
        self.active = False

    def abort(self) -> None:
        self.active = False
        self.thread.join(5)

    def close(self) -> None:
        pass


def test_live_pipeline_with_a_fake_stream_is_exact(small_bundle):
    """MOCK (no sound device needed): the queue/worker/cushion path gives the model's output, delayed."""
    from edge.live import LivePipeline, Supervisor

    bundle = edge.load_bundle(small_bundle)
    x = noise_audio(1.0, 7)
    for blocksize in (128, 64, 300):
        p = LivePipeline(bundle, edge.Options(), blocksize)
        streams = []

        def opener(pipe, x=x, blocksize=blocksize, streams=streams):
            streams.append(FakeStream(pipe, x, blocksize))
            return streams[-1]

        stop = threading.Event()
        sup = Supervisor(p, opener, stop, duration=(len(x) // blocksize) * blocksize / RATE, stall_s=5)
        st = sup.run()
        got = np.concatenate(streams[0].out)
        den = edge.StreamingDenoiser(bundle)
        want = np.concatenate([np.zeros(p.prefill, np.float32), den.process(x[:len(got)])])[:len(got)]
        assert st.overruns == st.underruns == 0
        np.testing.assert_array_equal(got, want)


def test_live_counts_overruns_and_underruns_and_reopens(small_bundle):
    """MOCK: a device that floods input, one that dies, one that cannot open: counted, never fatal."""
    from edge.live import LivePipeline, Supervisor

    bundle = edge.load_bundle(small_bundle)
    x = noise_audio(3.0, 8)
    p = LivePipeline(bundle, edge.Options(), 128, queue_seconds=0.02)
    opens = []

    def opener(pipe):
        opens.append(len(opens))
        if len(opens) == 1:
            raise OSError("device busy")
        if len(opens) == 2:  # floods callbacks with no waiting, then dies
            return FakeStream(pipe, x, 128, lockstep=False, die_after=200)
        return FakeStream(pipe, x, 128)

    sup = Supervisor(p, opener, threading.Event(), duration=1.0, backoff=(0.01, 0.05), stall_s=1.0)
    st = sup.run()
    assert len(opens) >= 3
    assert st.device_errors >= 2 and st.reopens >= 1
    assert st.overruns > 0  # the flood outran the small queue
    assert st.seconds_in >= 1.0
    # starve the output: no worker running, so callbacks find the cushion, then nothing
    q = LivePipeline(bundle, edge.Options(), 128)
    out = np.zeros((128, 1), np.float32)
    for _ in range(5):
        q.callback(np.zeros((128, 1), np.float32), out, 128, None, None)
    assert q.stats.underruns == 5 - q.prefill // 128


def test_live_through_a_real_pulseaudio_server(small_bundle, tmp_path):
    """Real sound server: a WAV into a PulseAudio pipe source, `edge-denoise live`, the pipe sink read back."""
    out = tmp_path / "live.json"
    # Real-time audio on a shared 2-core machine can glitch when other work runs: up to three tries,
    # each judged in full; a machine without a sound server skips on the first.
    for _ in range(3):
        r = subprocess.run([sys.executable, str(REPO / "bench" / "live_pulse.py"), "--model", small_bundle, "--out",
                            str(out), "--min-exact", "0.5", "--timeout", "60"], capture_output=True, text=True,
                           timeout=150, cwd=REPO)
        result = json.loads(out.read_text()) if out.exists() else {}
        if r.returncode in (0, 3):
            break
    if r.returncode == 3:
        pytest.skip(f"no PulseAudio/PortAudio here: {result.get('skipped')}")
    assert r.returncode == 0, (result or r.stderr[-2000:])
    assert result["live_rc"] == 0 and result["input_exact"]  # the file reached the denoiser sample for sample
    assert result["segments_exact"] >= result["segments"] // 2  # the denoised audio came back sample for sample
    st = result["live_stats"]
    # A change of alignment between input and output means the device glitched: the counters saw it
    # (one PortAudio underflow flag can stand for several ALSA recoveries, so not one count per shift).
    glitches = st["underruns"] + st["overruns"] + st["input_overflows"] + st["output_underflows"]
    assert len(result["alignments"]) == 1 or glitches > 0
