"""Audio files and resampling for the CLI: soundfile to read/write, soxr to change rates."""

from __future__ import annotations

import os
import tempfile

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


def write_audio_atomic(path: str, x: np.ndarray, sr: int, subtype: str | None = None) -> None:
    """Write to a temporary file beside ``path`` and rename: never a truncated output."""
    import soundfile as sf

    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    ext = os.path.splitext(path)[1].lower()
    fmt = {".wav": "WAV", ".flac": "FLAC", ".ogg": "OGG"}.get(ext)
    if fmt is None:
        raise AudioError(f"{path}: unknown output format {ext!r} (use {', '.join(EXTENSIONS)})")
    if subtype is not None and not sf.check_format(fmt, subtype):
        subtype = None
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    os.close(fd)
    try:
        sf.write(tmp, np.clip(x, -1.0, 1.0), sr, format=fmt, subtype=subtype)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def pcm16_to_float(data: bytes) -> np.ndarray:
    """s16le bytes -> float32 samples in [-1, 1)."""
    return np.frombuffer(data, "<i2").astype(np.float32) / np.float32(32768.0)


def float_to_pcm16(y: np.ndarray) -> bytes:
    """float samples -> s16le bytes: clipped to the int16 range and rounded (the CLI and the daemon agree)."""
    return (np.clip(y, -1, 1 - 1 / 32768) * 32768).round().astype("<i2").tobytes()
