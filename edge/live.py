"""``edge-denoise live``: an input device through the denoiser to an output device (a virtual microphone)."""

from __future__ import annotations

import argparse
import json
import logging
import queue
import signal
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable

import numpy as np

from .bundle import Bundle
from .errors import EdgeError
from .options import Options
from .stream import StreamingDenoiser

log = logging.getLogger("edge.live")


class LiveError(EdgeError):
    """sounddevice/PortAudio is missing, or a live option is not what was expected."""


def import_sounddevice():
    """sounddevice, imported on first use so that ``import edge`` and the CLI work without PortAudio."""
    try:
        import sounddevice  # noqa: PLC0415
    except ImportError as exc:
        raise LiveError(f"live audio needs sounddevice: pip install 'edge-denoise[live]' ({exc})") from None
    except OSError as exc:  # sounddevice raises OSError when the PortAudio library itself is missing
        raise LiveError(f"live audio needs the PortAudio library: apt-get install libportaudio2 ({exc})") from None
    return sounddevice


@dataclass
class LiveStats:
    """Counters of one live session. Each field has one writer thread (callback, worker or supervisor)."""

    seconds_in: float = 0.0
    """Seconds of audio the denoiser processed."""
    compute_s: float = 0.0
    callbacks: int = 0
    overruns: int = 0
    """Input chunks dropped because the denoiser queue was full (the denoiser fell behind)."""
    underruns: int = 0
    """Output callbacks that found too few denoised samples (silence was played instead)."""
    output_dropped: int = 0
    """Output samples dropped because the output buffer was full (output device slower than input)."""
    input_overflows: int = 0
    """PortAudio's own input overflow flags."""
    output_underflows: int = 0
    """PortAudio's own output underflow flags."""
    device_errors: int = 0
    reopens: int = 0

    @property
    def real_time_factor(self) -> float | None:
        return self.compute_s / self.seconds_in if self.seconds_in else None

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["seconds_in"] = round(self.seconds_in, 3)
        d["compute_s"] = round(self.compute_s, 4)
        d["real_time_factor"] = None if self.real_time_factor is None else round(self.real_time_factor, 5)
        return d


class _Ring:
    """Bounded float32 sample FIFO shared by the denoiser thread (writer) and the audio callback (reader)."""

    def __init__(self, capacity: int):
        self._buf = np.zeros(capacity, np.float32)
        self._start = 0
        self._len = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return self._len

    def clear(self, fill: int = 0) -> None:
        """Empty it, then hold ``fill`` zeros (the cushion the output callback plays from)."""
        with self._lock:
            self._buf[:fill] = 0.0
            self._start, self._len = 0, fill

    def write(self, x: np.ndarray) -> int:
        """Append; when full the oldest samples go (bounded latency). Returns how many were dropped."""
        cap = len(self._buf)
        with self._lock:
            drop = max(0, self._len + len(x) - cap)
            if len(x) >= cap:
                x = x[len(x) - cap:]
                self._start = self._len = 0
            elif drop:
                self._start = (self._start + drop) % cap
                self._len -= drop
            end = (self._start + self._len) % cap
            first = min(len(x), cap - end)
            self._buf[end:end + first] = x[:first]
            self._buf[:len(x) - first] = x[first:]
            self._len += len(x)
        return drop

    def read_into(self, out: np.ndarray) -> int:
        """Fill ``out`` from the front; returns how many samples there were (the rest is left alone)."""
        cap = len(self._buf)
        with self._lock:
            n = min(len(out), self._len)
            first = min(n, cap - self._start)
            out[:first] = self._buf[self._start:self._start + first]
            out[first:n] = self._buf[:n - first]
            self._start = (self._start + n) % cap
            self._len -= n
        return n


class LivePipeline:
    """Audio callbacks <-> a bounded queue <-> one denoiser thread; the callbacks never run the model.

    ``on_input``/``on_output`` (or ``callback`` for a duplex stream) are what PortAudio calls. Input
    chunks go to a bounded queue (full: the chunk is dropped, an overrun); the worker denoises them into
    an output FIFO holding ``prefill`` samples of cushion (empty: silence, an underrun).
    """

    def __init__(self, bundle: Bundle, options: Options, blocksize: int, channels: int = 1,
                 queue_seconds: float = 0.5, stats: LiveStats | None = None,
                 record: Callable[[np.ndarray], Any] | None = None):
        self.den = StreamingDenoiser(bundle, options)
        self.record = record  # the denoiser thread hands it each input chunk (to save what the device gave)
        self.rate = bundle.sample_rate
        self.blocksize = blocksize
        self.channels = channels
        shift = bundle.block_shift
        # One callback of input is processed while the next plays, and the model answers in whole hops:
        # two callbacks plus one hop of cushion keep the output fed in steady state.
        self.prefill = 2 * blocksize + shift
        self.stats = stats or LiveStats()
        self._queue: queue.Queue[tuple[int, np.ndarray]] = queue.Queue(
            maxsize=max(2, int(queue_seconds * self.rate / blocksize)))
        self._out = _Ring(self.prefill + int(queue_seconds * self.rate))
        self._gen = 0
        self._stop = threading.Event()
        self._worker: threading.Thread | None = None
        self.last_callback = time.monotonic()
        self._out.clear(self.prefill)

    @property
    def latency_seconds(self) -> float:
        """What the pipeline adds to the device latency: the model's delay and the output cushion."""
        return (self.den.latency_samples + self.prefill) / self.rate

    # audio thread ---------------------------------------------------------------------------------
    def on_input(self, indata: np.ndarray, status: Any = None) -> None:
        self.last_callback = time.monotonic()
        if status is not None and getattr(status, "input_overflow", False):
            self.stats.input_overflows += 1
        x = indata[:, 0].copy() if indata.shape[1] == 1 else indata.mean(axis=1, dtype=np.float32)
        try:
            self._queue.put_nowait((self._gen, x))
        except queue.Full:
            self.stats.overruns += 1

    def on_output(self, outdata: np.ndarray, status: Any = None) -> None:
        self.last_callback = time.monotonic()
        self.stats.callbacks += 1
        if status is not None and getattr(status, "output_underflow", False):
            self.stats.output_underflows += 1
        mono = outdata[:, 0]
        n = self._out.read_into(mono)
        if n < len(mono):
            mono[n:] = 0.0
            self.stats.underruns += 1
        if outdata.shape[1] > 1:
            outdata[:, 1:] = mono[:, None]

    def callback(self, indata: np.ndarray, outdata: np.ndarray, frames: int, time_info: Any, status: Any) -> None:
        """The duplex PortAudio callback."""
        self.on_input(indata, status)
        self.on_output(outdata, status)

    def input_callback(self, indata, frames, time_info, status) -> None:
        self.on_input(indata, status)

    def output_callback(self, outdata, frames, time_info, status) -> None:
        self.on_output(outdata, status)

    # denoiser thread ------------------------------------------------------------------------------
    def start(self) -> None:
        self._stop.clear()
        self._worker = threading.Thread(target=self._work, name="denoise", daemon=True)
        self._worker.start()

    def stop(self) -> None:
        self._stop.set()
        if self._worker is not None:
            self._worker.join(5.0)
            self._worker = None

    def restart(self) -> None:
        """A new device session: queued input is dropped, the denoiser starts from zero states."""
        self._gen += 1
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
            self._queue.task_done()
        self._out.clear(self.prefill)
        self.last_callback = time.monotonic()

    def _work(self) -> None:
        gen = self._gen
        while not self._stop.is_set():
            try:
                item_gen, x = self._queue.get(timeout=0.1)
            except queue.Empty:
                continue
            if item_gen != gen:
                self.den.reset()
                gen = item_gen
            if self.record is not None:
                self.record(x)
            t0 = time.perf_counter()
            y = self.den.process(x)
            self.stats.compute_s += time.perf_counter() - t0
            self.stats.seconds_in += len(x) / self.rate
            if gen == self._gen:  # a restart while we were busy makes this output stale
                self.stats.output_dropped += self._out.write(y)
            self._queue.task_done()

    @property
    def idle(self) -> bool:
        """True when every queued input chunk has been denoised."""
        return self._queue.unfinished_tasks == 0


def _latency(text: str) -> str | float:
    if text in ("low", "high"):
        return text
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected low, high or seconds, got {text!r}") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"expected a latency > 0 seconds, got {text}")
    return v


def _device(text: str | None) -> int | str | None:
    return int(text) if text is not None and text.isdigit() else text


def register(sub) -> None:
    from .check import add_check_option
    from .cmd_denoise import add_model_options

    p = sub.add_parser("live", help="denoise a live input device to an output device (a virtual microphone)",
                       description="Microphone -> denoiser -> output device through PortAudio (sounddevice), e.g. "
                                   "into an ALSA loopback or a PulseAudio/PipeWire null sink whose monitor other "
                                   "programs record (see docs/daemon.md). Overruns/underruns are counted and "
                                   "logged, never fatal; the device is reopened with backoff after an error.")
    add_model_options(p)
    add_check_option(p, default=True)
    p.add_argument("--input", "-i", default=None, metavar="DEV",
                   help="input device: index or part of its name (default: the system default)")
    p.add_argument("--output", "-o", default=None, metavar="DEV",
                   help="output device: index or part of its name (default: the system default)")
    p.add_argument("--list-devices", action="store_true", help="print the audio devices and exit")
    p.add_argument("--latency", type=_latency, default="low",
                   help="device latency: low, high or seconds (default: low)")
    p.add_argument("--blocksize", type=int, default=0,
                   help="frames per audio callback (default: 0 = the model's block shift)")
    p.add_argument("--channels", type=int, default=1,
                   help="device channels: input is averaged to mono, output duplicated (default: 1)")
    p.add_argument("--duplex", action=argparse.BooleanOptionalAction, default=True,
                   help="one duplex stream (default); --no-duplex opens separate input and output streams, for "
                        "devices on different clocks")
    p.add_argument("--duration", type=float, default=None,
                   help="stop after this many seconds of audio (default: run until SIGTERM/SIGINT)")
    p.add_argument("--stats-interval", type=float, default=10.0, help="seconds between figure lines (default: 10)")
    p.add_argument("--stats-json", default=None, metavar="FILE", help="write the final figures there as JSON")
    p.add_argument("--record-input", default=None, metavar="WAV",
                   help="also save the input exactly as the denoiser got it (float WAV), to check a microphone")
    p.add_argument("--quiet", "-q", action="store_true", help="log warnings and errors only")
    p.set_defaults(func=run)


class Supervisor:
    """Opens the device stream, watches it, reopens it with backoff after an error or a stall."""

    def __init__(self, pipeline: LivePipeline, open_stream: Callable[[LivePipeline], Any],
                 stop: threading.Event, duration: float | None = None, stats_interval: float = 10.0,
                 backoff: tuple[float, float] = (0.5, 10.0), stall_s: float = 2.0):
        self.p = pipeline
        self.open_stream = open_stream
        self.stop = stop
        self.duration = duration
        self.stats_interval = stats_interval
        self.backoff = backoff
        self.stall_s = stall_s

    def _done(self) -> bool:
        return self.stop.is_set() or (self.duration is not None and self.p.stats.seconds_in >= self.duration)

    def run(self) -> LiveStats:
        st = self.p.stats
        delay = self.backoff[0]
        self.p.start()
        try:
            while not self._done():
                try:
                    stream = self.open_stream(self.p)
                except Exception as exc:  # noqa: BLE001 (PortAudioError, OSError, ValueError: all mean "retry")
                    st.device_errors += 1
                    log.error("cannot open the audio device (%s); retrying in %.1f s", exc, delay)
                    self.stop.wait(delay)
                    delay = min(delay * 2, self.backoff[1])
                    continue
                opened = time.monotonic()
                try:
                    self._watch(stream)
                finally:
                    _close_stream(stream)
                if not self._done():
                    st.device_errors += 1
                    st.reopens += 1
                    if time.monotonic() - opened > 10 * self.backoff[1]:
                        delay = self.backoff[0]  # it ran fine for a while: start the backoff over
                    log.warning("audio stream stopped; reopening in %.1f s (reopen %d)", delay, st.reopens)
                    self.stop.wait(delay)
                    delay = min(delay * 2, self.backoff[1])
                    self.p.restart()
        finally:
            self.p.stop()
        return st

    def _watch(self, stream: Any) -> None:
        st = self.p.stats
        self.p.last_callback = time.monotonic()
        last_log = time.monotonic()
        seen = (0, 0, 0, 0)
        while not self._done():
            self.stop.wait(0.05)
            now = time.monotonic()
            if not getattr(stream, "active", True):
                log.warning("audio stream is no longer active")
                return
            if now - self.p.last_callback > self.stall_s:
                log.warning("no audio callback for %.1f s: the device stalled or went away", self.stall_s)
                return
            xruns = (st.overruns, st.underruns, st.input_overflows, st.output_underflows)
            if xruns != seen and now - last_log >= min(1.0, self.stats_interval):
                # Logged as they happen, at most once a second: a glitching device must not flood the log.
                log.warning("overruns %d, underruns %d, input overflows %d, output underflows %d", *xruns)
                seen, last_log = xruns, now
            elif now - last_log >= self.stats_interval:
                log.info("%.1f s processed, real-time factor %s, overruns %d, underruns %d", st.seconds_in,
                         None if st.real_time_factor is None else f"{st.real_time_factor:.3f}", st.overruns,
                         st.underruns)
                last_log = now


def _close_stream(stream: Any) -> None:
    # abort, not stop: stop waits for queued output to play, which never happens on a stalled device.
    for method in ("abort", "close"):
        try:
            getattr(stream, method)()
        except Exception as exc:  # noqa: BLE001 (a vanished device fails to close in PortAudio-specific ways)
            log.debug("closing the stream: %s", exc)


def sounddevice_opener(sd, args, rate: int) -> Callable[[LivePipeline], Any]:
    """A function that opens and starts the device stream(s) for a pipeline."""
    inp, out = _device(args.input), _device(args.output)

    def open_stream(p: LivePipeline):
        common = {"samplerate": rate, "blocksize": p.blocksize, "dtype": "float32", "latency": args.latency}
        if args.duplex:
            s = sd.Stream(device=(inp, out), channels=args.channels, callback=p.callback, **common)
            s.start()
            log.info("opened duplex stream %s -> %s at %d Hz, blocksize %d, device latency in %.1f ms out %.1f ms",
                     inp, out, rate, p.blocksize, 1000 * s.latency[0], 1000 * s.latency[1])
            return s
        si = sd.InputStream(device=inp, channels=args.channels, callback=p.input_callback, **common)
        so = sd.OutputStream(device=out, channels=args.channels, callback=p.output_callback, **common)
        pair = _StreamPair(si, so)
        so.start()
        si.start()
        log.info("opened input %s and output %s at %d Hz, blocksize %d", inp, out, rate, p.blocksize)
        return pair

    return open_stream


class _StreamPair:
    """Input and output streams watched and closed as one."""

    def __init__(self, *streams):
        self.streams = streams

    @property
    def active(self) -> bool:
        return all(s.active for s in self.streams)

    def abort(self) -> None:
        for s in self.streams:
            _close_stream(s)

    def close(self) -> None:
        pass


def run(args) -> int:
    sd = import_sounddevice()
    if args.list_devices:
        print(sd.query_devices())
        return 0
    from .check import check_at_start
    from .cmd_denoise import model_and_options

    if args.blocksize < 0 or args.channels < 1:
        raise LiveError(f"expected --blocksize >= 0 and --channels >= 1, got {args.blocksize} and {args.channels}")
    bundle, options = model_and_options(args)
    if not check_at_start(args, bundle, options):
        return 1
    blocksize = args.blocksize or bundle.block_shift
    recording = None
    if args.record_input:
        import soundfile as sf  # noqa: PLC0415

        recording = sf.SoundFile(args.record_input, "w", samplerate=bundle.sample_rate, channels=1, subtype="FLOAT")
    pipeline = LivePipeline(bundle, options, blocksize, args.channels,
                            record=recording.write if recording is not None else None)
    log.info("model %s (sha256 %s): %.1f ms model delay + %.1f ms output cushion, then the devices' latency",
             bundle.name, bundle.sha256[:12], 1000 * bundle.latency_samples / bundle.sample_rate,
             1000 * pipeline.prefill / bundle.sample_rate)
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        stats = Supervisor(pipeline, sounddevice_opener(sd, args, bundle.sample_rate), stop, args.duration,
                           args.stats_interval).run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if recording is not None:
            recording.close()
    figures = stats.as_dict()
    log.info("stopped: %s", json.dumps(figures))
    if args.stats_json:
        with open(args.stats_json, "w") as f:
            json.dump(figures, f, indent=1)
    return 0
