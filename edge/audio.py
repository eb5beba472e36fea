"""Audio files and resampling for the CLI: soundfile to read/write, soxr to change rates."""

from __future__ import annotations

import numpy as np

from .errors import AudioError

EXTENSIONS = (".wav", ".flac", ".ogg")


def read_audio(path: str) -> tuple[np.ndarray, int, str]:
    """(samples (frames, channels) float32, sample rate, subtype) of an audio file."""
    import soundfile as sf

    try:
        info = sf.info(path)
        x, sr = sf.read(path, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError) as exc:
        raise AudioError(f"{path}: cannot read audio ({exc})") from None
    if x.shape[0] == 0:
        raise AudioError(f"{path}: holds no samples (zero-length audio)")
    if not np.isfinite(x).all():
        raise AudioError(f"{path}: holds NaN or Inf samples")
    return x, int(sr), info.subtype


def resample(x: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    """Resample (frames, channels) or (frames,) float32 audio with soxr (VHQ); identity if equal."""
    if sr_in == sr_out:
        return x
    try:
        import soxr
    except ImportError:
        raise AudioError(f"audio at {sr_in} Hz needs resampling to {sr_out} Hz: pip install soxr") from None
    return soxr.resample(x, sr_in, sr_out, quality="VHQ").astype(np.float32)


def fit_length(x: np.ndarray, n: int) -> np.ndarray:
    """Trim or zero-pad the first axis to exactly ``n``."""
    if len(x) >= n:
        return x[:n]
    pad = [(0, n - len(x))] + [(0, 0)] * (x.ndim - 1)
    return np.pad(x, pad)


def to_mono_rate(x: np.ndarray, sr: int, rate: int) -> np.ndarray:
    """(frames, channels) -> mono float32 at ``rate`` (channel mean)."""
    return resample(x.mean(axis=1).astype(np.float32), sr, rate)


def to_int16(x: np.ndarray) -> np.ndarray:
    """Float samples -> int16: ``x * 32768`` rounded to nearest (ties to even), clipped to [-32768, 32767].

    The one rounding rule of every int16 output: files (PCM_16), raw PCM on stdout, the daemon.
    """
    return np.clip(np.round(np.asarray(x) * 32768.0), -32768, 32767).astype(np.int16)


def _to_int32_left(bits: int):
    """The same rule at another PCM width, left-justified in int32 as libsndfile takes it (exact)."""
    full = float(2 ** (bits - 1))

    def convert(x: np.ndarray) -> np.ndarray:
        q = np.clip(np.round(np.asarray(x, np.float64) * full), -full, full - 1)
        return (q * 2.0 ** (32 - bits)).astype(np.int32)

    return convert


PCM_WRITERS = {"PCM_16": to_int16, "PCM_24": _to_int32_left(24), "PCM_32": _to_int32_left(32),
               "PCM_S8": _to_int32_left(8), "PCM_U8": _to_int32_left(8)}
"""Integer subtypes: samples are rounded here and written as integers, so libsndfile does not truncate."""


def pcm_for_subtype(subtype: str | None):
    """float (frames, channels) -> the array to write for ``subtype``: rounded integers, else floats clipped to
    [-1, 1] (float and compressed subtypes)."""
    return PCM_WRITERS.get(subtype or "", lambda y: np.clip(y, -1.0, 1.0))


def pcm16_to_float(data: bytes) -> np.ndarray:
    """s16le bytes -> float32 samples in [-1, 1)."""
    return np.frombuffer(data, "<i2").astype(np.float32) / np.float32(32768.0)


def pcm16_even(data: bytes, held: bytes) -> tuple[bytes, bytes]:
    """One chunk of an s16le stream -> (its whole samples' bytes, the byte to hold for the next chunk):
    ``held`` (the odd byte the last chunk ended in) goes first, and an odd trailing byte waits."""
    if held:
        data = held + data
    if len(data) % 2:
        return data[:-1], data[-1:]
    return data, b""


def pcm16_chunk(data: bytes, held: bytes) -> tuple[np.ndarray, bytes]:
    """``pcm16_even``, its samples as float32."""
    data, held = pcm16_even(data, held)
    return pcm16_to_float(data), held


def float_to_pcm16(y: np.ndarray) -> bytes:
    """float samples -> s16le bytes by ``to_int16`` (files, raw PCM and the daemon agree sample for sample)."""
    return to_int16(y).astype("<i2", copy=False).tobytes()
