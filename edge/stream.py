"""Streaming framing written once: analysis buffer, window, rfft/irfft, overlap-add, sample counters."""

from __future__ import annotations

import os
import weakref
from typing import Mapping

import numpy as np

from .bundle import Bundle, load_bundle
from .errors import AudioError
from .families import Runner, family_class
from .level import StreamLevel
from .options import Options


def windows(kind: str, block_len: int, block_shift: int) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(analysis, synthesis) windows; None means rectangular (no multiply)."""
    if kind == "none":
        return None, None
    n = np.arange(block_len)
    hann = 0.5 - 0.5 * np.cos(2 * np.pi * n / block_len)  # periodic
    if kind == "hann":
        ana, syn = hann, np.ones(block_len)
    else:  # sqrt_hann
        ana = syn = np.sqrt(hann)
    # Scale synthesis so that overlap-added ana*syn sums to one (perfect reconstruction).
    acc = np.zeros(block_shift)
    for k in range(0, block_len, block_shift):
        seg = (ana * syn)[k:k + block_shift]
        acc[: len(seg)] += seg
    syn = syn / acc.mean()
    return ana, syn


def overlap_add(outbuf: np.ndarray, frames: np.ndarray, block_shift: int) -> np.ndarray:
    """Overlap-add ``frames`` (T, block_len) onto ``outbuf`` (block_len, updated in place); return the
    T * block_shift finished samples.

    The sums run in the per-block order (oldest frame first), so the samples equal the per-block ones
    bit for bit.
    """
    t, n = frames.shape
    s = block_shift
    if n % s:
        out = np.empty(t * s)
        for k in range(t):
            outbuf[:-s] = outbuf[s:]
            outbuf[-s:] = 0.0
            outbuf += frames[k]
            out[k * s:(k + 1) * s] = outbuf[:s]
        return out
    q = n // s
    acc = np.zeros((t + q - 1, s))
    acc[: q - 1] = outbuf[s:].reshape(q - 1, s)
    parts = frames.reshape(t, q, s)
    for j in range(q - 1, -1, -1):
        acc[j:j + t] += parts[:, j]
    outbuf[:] = acc[t - 1:].reshape(-1)
    return acc[:t].reshape(-1)


def check_audio(x: object, sample_rate: int, given_rate: int | None = None) -> np.ndarray:
    """Validate one mono chunk at the boundary; return it as a float array (no copy if possible)."""
    if given_rate is not None and given_rate != sample_rate:
        raise AudioError(f"expected audio at {sample_rate} Hz, got {given_rate} Hz (resample it first; "
                         "the edge-denoise command does that for files)")
    if not isinstance(x, np.ndarray):
        raise AudioError(f"expected a 1-D float32 numpy array at {sample_rate} Hz, got {type(x).__name__}")
    if x.ndim != 1 or x.dtype.kind != "f":
        raise AudioError(f"expected 1-D float32 audio in [-1, 1] at {sample_rate} Hz, got shape {x.shape} "
                         f"dtype {x.dtype}" + (" (scale integer PCM by 1/32768 first)" if x.dtype.kind in "iu"
                                               else ""))
    if x.size:
        peak = float(np.max(np.abs(x)))  # NaN propagates, so one reduction checks both
        if not peak <= 1.0:
            raise AudioError(_range_message(x, peak))
    return x


def _range_message(x: np.ndarray, peak: float) -> str:
    """Why a chunk with a NaN, an Inf or a sample beyond full scale is refused."""
    if not np.isfinite(x).all():
        bad = int(np.flatnonzero(~np.isfinite(x))[0])
        return f"audio holds NaN or Inf (first at sample {bad}); expected finite samples in [-1, 1]"
    at = int(np.argmax(np.abs(x)))
    return (f"audio peaks at {peak:.6g} (sample {at}, {20 * np.log10(peak):.1f} dB over full scale); expected "
            "float samples in [-1, 1]: scale it down first (the model would see a level it never met, and "
            "clipping it here would distort it)")


class StreamingDenoiser:
    """One denoising stream: owns its state arrays and interpreters; the bundle is shared.

    ``process(x)`` takes float mono audio of any length >= 0 at ``sample_rate`` and returns the
    samples now ready (a multiple of ``block_shift``); output sample ``k`` belongs to input sample
    ``k - latency_samples``. ``flush()`` returns the rest and resets.
    """

    def __init__(self, bundle: Bundle | str | os.PathLike[str], options: Options | None = None,
                 runners: Mapping[str, Runner] | None = None):
        if not isinstance(bundle, Bundle):
            bundle = load_bundle(bundle)
        self._bundle = bundle
        self._options = options or Options()
        # T-block calls only through the tflite runners, and only for families that define ``steps``
        self._frames = bundle.batched.frames if runners is None and bundle.batched is not None else 0
        if runners is None:
            from .tblock import runners as make_runners  # interpreter imported on the first stream

            runners = make_runners(bundle, self._options)
        # The family calls back into this stream's irfft through a weak reference: no cycle, so a stream is
        # freed (and its T-block graphs go back to the idle pool, edge.tblock) as soon as it is dropped.
        me = weakref.ref(self)
        self._family = family_class(bundle)(bundle, dict(runners), lambda spec: me()._irfft(spec))
        if not hasattr(self._family, "steps"):
            self._frames = 0
        n, s = bundle.block_len, bundle.block_shift
        self._n, self._s = n, s
        self._ana, self._syn = windows(bundle.window, n, s)
        self._inbuf = np.zeros(n)
        self._outbuf = np.zeros(n)
        self._level = StreamLevel(s, bundle.sample_rate) if self._options.auto_level else None
        self._gain = 1.0
        self._fill = 0
        self._samples_in = 0
        self._samples_out = 0

    def _irfft(self, spec: np.ndarray) -> np.ndarray:
        return np.fft.irfft(spec, self._n)

    # read-only facts ---------------------------------------------------------------------------
    @property
    def bundle(self) -> Bundle:
        return self._bundle

    @property
    def sample_rate(self) -> int:
        return self._bundle.sample_rate

    @property
    def block_shift(self) -> int:
        return self._s

    @property
    def latency_samples(self) -> int:
        return self._bundle.latency_samples

    @property
    def batch_samples(self) -> int:
        """Samples per T-block call (``frames * block_shift``), or ``block_shift`` without T-block graphs.

        ``process`` runs every whole T hops of a call in one T-block call: feed multiples of this.
        """
        return self._s * (self._frames or 1)

    @property
    def samples_in(self) -> int:
        """Samples given to ``process`` since the last reset."""
        return self._samples_in

    # processing --------------------------------------------------------------------------------
    def _analyze(self) -> np.ndarray:
        """rfft of the (windowed) analysis buffer; with ``auto_level``, times this hop's gain."""
        spec = np.fft.rfft(self._inbuf if self._ana is None else self._inbuf * self._ana)
        if self._level is None:
            return spec
        self._gain = self._level.gain(self._inbuf[self._n - self._s:])
        return spec if self._gain == 1.0 else spec * self._gain

    def _synthesize(self, frame: np.ndarray) -> np.ndarray:
        """Window and overlap-add one output frame (the gain of ``_analyze`` undone), slide the input; return
        ``block_shift`` samples (a view)."""
        if self._level is not None and self._gain != 1.0:
            frame = frame / self._gain
        if self._syn is not None:
            frame = frame * self._syn
        out = self._outbuf
        out[:-self._s] = out[self._s:]
        out[-self._s:] = 0.0
        out += frame
        self._inbuf[:-self._s] = self._inbuf[self._s:]
        return out[: self._s]

    def _block(self) -> np.ndarray:
        """Run the filled analysis buffer through the model; return ``block_shift`` output samples."""
        return self._synthesize(self._family.step(self._analyze()))

    def _blocks(self, x: np.ndarray) -> np.ndarray:
        """``frames`` hops at once (``x``: frames * block_shift new samples, buffer empty before); the
        same samples the per-block path gives."""
        n, s = self._n, self._s
        buf = np.concatenate([self._inbuf[: n - s], x])
        # every hop's analysis frame as a read-only view of buf (sliding_window_view's checks cost more
        # than the view: ~10 us a call)
        step = buf.strides[0]
        frames = np.lib.stride_tricks.as_strided(buf, (len(x) // s, n), (s * step, step), writeable=False)
        spec = np.fft.rfft(frames if self._ana is None else frames * self._ana, axis=-1)
        # the gains hop by hop, as the per-block path updates the level; all 1: nothing to multiply
        g = None if self._level is None else np.array([self._level.gain(h) for h in x.reshape(-1, s)])[:, None]
        if g is None or not (g != 1.0).any():
            out = self._family.steps(spec)
        else:
            out = self._family.steps(spec * g) / g
        if self._syn is not None:
            out = out * self._syn
        self._inbuf[: n - s] = buf[len(buf) - (n - s):]
        return overlap_add(self._outbuf, out, s)

    def process(self, x: np.ndarray, sample_rate: int | None = None) -> np.ndarray:
        """Feed audio; return the float32 output samples that are ready now.

        Every ``batch_samples`` of ``x`` that start on a hop boundary go through one T-block call when
        the bundle offers them.
        """
        x = check_audio(x, self.sample_rate, sample_rate)
        n, s = self._n, self._s
        if self._fill == 0 and len(x) == s:  # the live case, one hop per call: no bookkeeping loop
            self._inbuf[n - s:] = x
            y = self._block().astype(np.float32)
            self._samples_in += s
            self._samples_out += s
            return y
        ready = (self._fill + len(x)) // s
        y = np.empty(ready * s, np.float32)
        pos = o = 0
        big = self._frames * s
        while pos < len(x):
            if big and self._fill == 0 and len(x) - pos >= big:
                y[o:o + big] = self._blocks(x[pos:pos + big])
                o += big
                pos += big
                continue
            take = min(s - self._fill, len(x) - pos)
            start = n - s + self._fill
            self._inbuf[start:start + take] = x[pos:pos + take]
            self._fill += take
            pos += take
            if self._fill == s:
                y[o:o + s] = self._block()
                o += s
                self._fill = 0
        self._samples_in += len(x)
        self._samples_out += len(y)
        return y

    def flush(self) -> np.ndarray:
        """Push out every sample still buffered (input length + latency in all), then reset."""
        want = self._samples_in + self.latency_samples - self._samples_out
        parts = []
        got = 0
        while got < want:
            z = np.zeros(self._s - self._fill, np.float32)
            y = self.process(z)
            parts.append(y)
            got += len(y)
        self.reset()
        return np.concatenate(parts)[:want] if parts else np.zeros(0, np.float32)

    def reset(self) -> None:
        """Zero every state and buffer: the next sample starts a new stream."""
        self._inbuf[:] = 0.0
        self._outbuf[:] = 0.0
        self._fill = 0
        self._samples_in = self._samples_out = 0
        self._family.reset()
        if self._level is not None:
            self._level.reset()


class Aligner:
    """One stream's delay compensation: the model's first ``latency`` output samples are dropped, and no more
    output is returned than input was given (``owed``), so that a flush ends at the input's length."""

    __slots__ = ("to_drop", "owed")

    def __init__(self, latency: int):
        self.to_drop = latency
        self.owed = 0
        """Input samples given whose output has not been returned yet."""

    def __call__(self, y: np.ndarray) -> np.ndarray:
        """The aligned part of the model's next output samples ``y``."""
        if self.to_drop:
            cut = min(self.to_drop, len(y))
            y, self.to_drop = y[cut:], self.to_drop - cut
        y = y[: self.owed]
        self.owed -= len(y)
        return y


class AlignedStream:
    """A delay-compensated stream: output sample ``k`` belongs to input sample ``k``.

    Wraps one :class:`StreamingDenoiser`; the first ``latency_samples`` of its output (the algorithmic
    delay) are dropped here, and ``flush()`` returns the rest so that the total output length equals
    the total input length. Every caller that wants aligned audio (files, raw PCM, the daemon, the
    converter's verification) uses this instead of trimming by itself.
    """

    def __init__(self, bundle: Bundle | str | os.PathLike[str], options: Options | None = None):
        self._den = StreamingDenoiser(bundle, options)
        self._align = Aligner(self._den.latency_samples)

    @property
    def bundle(self) -> Bundle:
        return self._den.bundle

    @property
    def sample_rate(self) -> int:
        return self._den.sample_rate

    @property
    def block_shift(self) -> int:
        return self._den.block_shift

    @property
    def latency_samples(self) -> int:
        """The model's delay, already compensated here (the wall-clock delay of ``process``)."""
        return self._den.latency_samples

    def process(self, x: np.ndarray, sample_rate: int | None = None) -> np.ndarray:
        """Feed mono float audio in [-1, 1]; return the aligned float32 output samples now ready."""
        y = self._den.process(x, sample_rate)
        self._align.owed += len(x)
        return self._align(y)

    def flush(self) -> np.ndarray:
        """The output of every input sample not yet returned (total out == total in), then reset."""
        y = self._align(self._den.flush())
        self.reset()
        return y

    def reset(self) -> None:
        """Start a new stream: states, buffers and the delay to drop."""
        self._den.reset()
        self._align = Aligner(self._den.latency_samples)


def denoise(audio: np.ndarray, bundle: Bundle | str | os.PathLike[str], options: Options | None = None,
            sample_rate: int | None = None) -> np.ndarray:
    """Denoise a whole mono signal; returns exactly ``len(audio)`` float32 samples, delay compensated."""
    stream = AlignedStream(bundle, options)
    y = stream.process(audio, sample_rate)
    return np.concatenate([y, stream.flush()])
