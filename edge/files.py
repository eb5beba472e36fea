"""Audio files through the denoiser in bounded memory: blocks in, resample, denoise, resample back, blocks out.

An output is written to a hidden temporary file beside it, locked while it is written, and renamed into
place: never a truncated output. A writer killed with SIGKILL leaves its temporary file unlocked, which is
how a later run tells a stale one (``remove_stale_temps``) from one another run is still writing.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import secrets
import stat
from concurrent.futures import Executor
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np

from .audio import EXTENSIONS, pcm_for_subtype
from .bundle import Bundle
from .errors import AudioError
from .options import Options
from .stream import AlignedStream

BLOCK_SECONDS = 2.0
"""Seconds of input read, resampled and denoised per step (memory stays a few such blocks)."""
FORMATS = {".wav": "WAV", ".flac": "FLAC", ".ogg": "OGG"}
TEMP_TAG = "edge-denoise"
_TEMP = re.compile(rf"^\.(?P<name>.+)\.{TEMP_TAG}-[0-9a-f]{{16}}\.tmp$")
"""Only this tool's temporary files: ``.NAME.edge-denoise-<16 hex>.tmp``."""


def temp_name(dst: Path) -> Path:
    return dst.with_name(f".{dst.name}.{TEMP_TAG}-{secrets.token_hex(8)}.tmp")


@contextmanager
def atomic_output(dst: Path) -> Iterator[int]:
    """Yield a locked, new file descriptor for ``dst``'s temporary file; rename it to ``dst`` on success.

    Created with mode 0666 so that the umask decides the output's permissions, as for any new file.
    The exclusive ``flock`` held until the rename marks the file as in use; the kernel drops it when
    the process dies, however it dies.
    """
    dst.parent.mkdir(parents=True, exist_ok=True)
    while True:
        tmp = temp_name(dst)
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
        fcntl.flock(fd, fcntl.LOCK_EX)  # blocks only while a cleaner holds it for a moment
        if _same_file(fd, tmp):
            break
        os.close(fd)  # a cleaner took it for stale between create and lock: take a new name
    try:
        yield fd
        os.fsync(fd)
        os.replace(tmp, dst)
    except BaseException:
        _unlink_quietly(tmp)
        raise
    finally:
        os.close(fd)


def _same_file(fd: int, path: Path) -> bool:
    try:
        st = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    own = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino)


def _unlink_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def remove_stale_temps(folder: Path) -> list[Path]:
    """Delete this tool's temporary files in ``folder`` that no live writer holds; return them.

    Only names of this tool's pattern, only regular files of this user, and only when the exclusive
    lock can be taken at once (a writer that is alive holds it until it renames the file).
    """
    removed: list[Path] = []
    try:
        names = os.listdir(folder)
    except (FileNotFoundError, NotADirectoryError):
        return removed
    for name in names:
        if not _TEMP.match(name):
            continue
        path = folder / name
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            continue  # vanished, a symlink, or not ours to read
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid():
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                    continue  # a live writer
                raise
            if _same_file(fd, path):
                os.unlink(path)
                removed.append(path)
        finally:
            os.close(fd)
    return removed


def _check_block(x: np.ndarray, src: Path, at: int, sr: int) -> None:
    """Refuse NaN/Inf and float samples beyond full scale, naming the file and where (never clip silently)."""
    peak = float(np.max(np.abs(x))) if x.size else 0.0
    if peak <= 1.0:
        return
    bad = ~np.isfinite(x)
    if bad.any():
        raise AudioError(f"{src}: holds NaN or Inf samples (first at {(at + np.argwhere(bad)[0][0]) / sr:.3f} s)")
    k = int(np.argmax(np.abs(x).max(axis=1)))
    raise AudioError(f"{src}: float samples reach {peak:.6g} ({20 * np.log10(peak):+.1f} dB over full scale, "
                     f"first at {(at + k) / sr:.3f} s); expected [-1, 1]: scale it down first (e.g. "
                     "sox --norm=-1 IN OUT); nothing was written")


class _Resampler:
    """soxr's streaming resampler (VHQ), or the identity when the rates are equal."""

    def __init__(self, sr_in: int, sr_out: int, channels: int):
        self._rs = None
        if sr_in != sr_out:
            import soxr

            self._rs = soxr.ResampleStream(sr_in, sr_out, channels, dtype="float32", quality="VHQ")

    def __call__(self, x: np.ndarray, last: bool = False) -> np.ndarray:
        if self._rs is None:
            return x
        return self._rs.resample_chunk(np.ascontiguousarray(x, np.float32), last=last).reshape(-1, x.shape[1])


class FilePipeline:
    """(frames, channels) blocks at the file's rate -> denoised blocks, same rate, delay compensated.

    Each channel is its own ``AlignedStream`` at the model's rate. ``push`` returns what is ready,
    ``finish`` the rest; the caller trims/pads the total to the input length.
    """

    def __init__(self, bundle: Bundle, options: Options, sr: int, channels: int, pool: Executor | None = None):
        self.streams = [AlignedStream(bundle, options) for _ in range(channels)]
        self._down = _Resampler(sr, bundle.sample_rate, channels)
        self._up = _Resampler(bundle.sample_rate, sr, channels)
        self._map = pool.map if pool is not None and channels > 1 else map
        """Channels on the pool's threads when given: each is its own stream, so the result is the same."""

    def _denoise(self, x: np.ndarray, last: bool) -> np.ndarray:
        def one(c: int) -> np.ndarray:
            y = self.streams[c].process(np.ascontiguousarray(x[:, c]))
            return np.concatenate([y, self.streams[c].flush()]) if last else y

        return np.stack(list(self._map(one, range(len(self.streams)))), axis=1)

    def push(self, x: np.ndarray) -> np.ndarray:
        return self._up(self._denoise(self._down(x), last=False))

    def finish(self) -> np.ndarray:
        ch = len(self.streams)
        tail = self._denoise(self._down(np.zeros((0, ch), np.float32), last=True), last=True)
        return self._up(tail, last=True)


def denoise_file(src: Path, dst: Path, bundle: Bundle, options: Options,
                 block_seconds: float = BLOCK_SECONDS, pool: Executor | None = None) -> tuple[int, int, int]:
    """Denoise ``src`` into ``dst`` (same rate, channels, length, format and subtype) in bounded memory;
    its channels on ``pool``'s threads when given.

    Returns (frames, channels, sample rate). Raises AudioError (and leaves no output) for unreadable
    or empty files, NaN/Inf, and float samples beyond [-1, 1].
    """
    import soundfile as sf

    fmt = FORMATS.get(dst.suffix.lower())
    if fmt is None:
        raise AudioError(f"{dst}: unknown output format {dst.suffix!r} (use {', '.join(EXTENSIONS)})")
    try:
        fin = sf.SoundFile(str(src))
    except (sf.LibsndfileError, RuntimeError, TypeError) as exc:
        raise AudioError(f"{src}: cannot read audio ({exc})") from None
    with fin:
        sr, ch, frames = fin.samplerate, fin.channels, fin.frames
        if frames == 0:
            raise AudioError(f"{src}: holds no samples (zero-length audio)")
        subtype = fin.subtype if sf.check_format(fmt, fin.subtype) else None
        pcm = pcm_for_subtype(subtype)
        pipe = FilePipeline(bundle, options, sr, ch, pool)
        block = max(1, int(block_seconds * sr))
        with atomic_output(dst) as fd, sf.SoundFile(fd, "w", sr, ch, subtype, format=fmt, closefd=False) as fout:
            written = 0

            def emit(y: np.ndarray) -> None:
                nonlocal written
                y = y[: frames - written]
                if len(y):
                    fout.write(pcm(y))
                    written += len(y)

            at = 0
            while at < frames:
                try:
                    x = fin.read(block, dtype="float32", always_2d=True)
                except (sf.LibsndfileError, RuntimeError) as exc:
                    raise AudioError(f"{src}: cannot read audio at {at / sr:.3f} s ({exc})") from None
                if not len(x):
                    break  # header promised more frames than the file holds: output has the frames read
                _check_block(x, src, at, sr)
                at += len(x)
                emit(pipe.push(x))
            frames = at
            emit(pipe.finish())
            if written < frames:  # resampler rounding: pad like the whole-file path does
                emit(np.zeros((frames - written, ch), np.float32))
    return frames, ch, sr
