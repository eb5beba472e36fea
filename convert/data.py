"""Training data: speech + noise folders mixed on the fly (DNS-synthesizer style), deterministic by seed."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np

from edge.audio import EXTENSIONS, read_audio, to_mono_rate

from .errors import ConvertError

RATE = 16000


def shared_data() -> Path:
    """``$EDGE_DATA``, else ``../shared/data`` beside the repository."""
    env = os.environ.get("EDGE_DATA")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "shared" / "data"


def vbd23() -> Path:
    """The VBD-23 test folder of the shared data (``clean/``, ``noisy/``, ``labels.tsv``); it may be absent."""
    return shared_data() / "test" / "vbd_test"


def find_audio(folders: Iterable[str | os.PathLike[str]]) -> list[Path]:
    files: list[Path] = []
    for folder in folders:
        folder = Path(folder)
        if not folder.is_dir():
            raise ConvertError(f"{folder}: no such audio folder")
        files += sorted(p for p in folder.rglob("*") if p.suffix.lower() in EXTENSIONS)
    return files


def load_files(paths: Iterable[str | os.PathLike[str]], rate: int = RATE) -> list[np.ndarray]:
    """Decode each file to mono float32 at ``rate`` (any input rate/channels)."""
    out = []
    for p in paths:
        x, sr, _ = read_audio(os.fspath(p))
        out.append(to_mono_rate(x, sr, rate))
    return out


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)) + 1e-12))


def synthetic_noise(rng: np.random.Generator, n: int, rate: int = RATE) -> np.ndarray:
    """White, pink or brown noise, mains hum with harmonics, or clicks; unit RMS."""
    kind = rng.integers(5)
    if kind == 0:
        x = rng.standard_normal(n)
    elif kind in (1, 2):  # pink (1/f) or brown (1/f^2) by spectral shaping
        spec = np.fft.rfft(rng.standard_normal(n))
        f = np.maximum(np.fft.rfftfreq(n, 1.0 / rate), 20.0)
        spec /= f ** (0.5 if kind == 1 else 1.0)
        x = np.fft.irfft(spec, n)
    elif kind == 3:  # hum: 50 or 60 Hz and harmonics with random levels
        f0 = 50.0 if rng.random() < 0.5 else 60.0
        t = np.arange(n) / rate
        x = sum(rng.uniform(0.1, 1.0) / k * np.sin(2 * np.pi * f0 * k * t + rng.uniform(0, 2 * np.pi))
                for k in range(1, 9))
        x = x + 0.01 * rng.standard_normal(n)
    else:  # clicks: sparse decaying impulses over a little white noise
        x = 0.02 * rng.standard_normal(n)
        for pos in rng.integers(0, n, size=max(1, int(rng.uniform(1, 20) * n / rate))):
            length = int(rng.integers(20, 400))
            seg = rng.standard_normal(length) * np.exp(-np.arange(length) / (length / 5))
            x[pos:pos + length] += seg[: n - pos] * rng.uniform(0.5, 3.0)
    return (x / _rms(x)).astype(np.float32)


def rumble(rng: np.random.Generator, n: int, rate: int = RATE) -> np.ndarray:
    """Low-frequency rumble (wind on the microphone, traffic, a building's hum and handling): white noise
    through a smooth low-pass ``1 / (1 + (f / cutoff) ** 4)`` whose cutoff is drawn log-uniform from 15 to
    120 Hz; unit RMS."""
    cutoff = float(np.exp(rng.uniform(np.log(15.0), np.log(120.0))))
    f = np.fft.rfftfreq(n, 1.0 / rate)
    x = np.fft.irfft(np.fft.rfft(rng.standard_normal(n)) / (1.0 + (f / cutoff) ** 4), n)
    return (x / _rms(x)).astype(np.float32)


def random_eq(rng: np.random.Generator, x: np.ndarray, max_db: float, rate: int = RATE) -> np.ndarray:
    """``x`` through a random smooth gain curve: 6 gains uniform in +-``max_db`` at log-spaced
    frequencies from 50 Hz to Nyquist, joined linearly in dB over log frequency, flat beyond."""
    knots = np.geomspace(50.0, rate / 2, 6)
    gains_db = rng.uniform(-max_db, max_db, len(knots))
    f = np.fft.rfftfreq(len(x), 1.0 / rate)
    curve = np.interp(np.log(np.maximum(f, 1.0)), np.log(knots), gains_db)
    return np.fft.irfft(np.fft.rfft(x) * 10 ** (curve / 20), len(x)).astype(np.float32)


def highpass(x: np.ndarray, cutoff_hz: float, rate: int = RATE) -> np.ndarray:
    """Zero-phase high-pass of a whole signal: gain ``1 / (1 + (cutoff / f) ** 8)`` on its spectrum.

    -6 dB at ``cutoff_hz``, -0.3 dB at 1.4 x, -48 dB an octave below; no delay, no phase change.
    Used on clean training speech to take the rumble out of the targets (``MixConfig.speech_highpass_hz``).
    """
    x = np.asarray(x, np.float32)
    if cutoff_hz <= 0 or len(x) < 2:
        return x
    pad = min(len(x), rate // 2)  # reflect a little at both ends: less wrap-around from the circular FFT
    y = np.pad(x.astype(np.float64), pad, mode="reflect")
    f = np.fft.rfftfreq(len(y), 1.0 / rate)
    gain = 1.0 / (1.0 + (cutoff_hz / np.maximum(f, 1e-3)) ** 8)
    return np.fft.irfft(np.fft.rfft(y) * gain, len(y))[pad:pad + len(x)].astype(np.float32)


@dataclass(frozen=True)
class MixConfig:
    """How segments are drawn and mixed."""

    segment: int = 2 * RATE
    """Samples per training segment."""
    snr_db: tuple[float, float] = (-5.0, 25.0)
    level_dbfs: tuple[float, float] = (-35.0, -15.0)
    """Speech RMS level range."""
    synthetic_prob: float = 0.15
    """Share of mixes whose noise is generated instead of recorded."""
    second_noise_prob: float = 0.2
    """Share of mixes with a second noise added (at +0..10 dB below the first)."""
    speech_highpass_hz: float = 0.0
    """High-pass the clean speech at this frequency before mixing (``highpass``), so that the rumble
    recorded with it is noise to remove, not target to keep; 0 leaves the speech as recorded."""
    babble_prob: float = 0.0
    """Share of mixes whose noise is babble: 3 to 7 utterances drawn from the speech pool
    (any speaker, the target's own included), summed."""
    noise_eq_db: float = 0.0
    """Recolour each noise (``random_eq``) by a random smooth gain of up to +-this many dB; 0 leaves
    noise as recorded. Babble and noise EQ widen what "noise" looks like without new recordings; both
    draw from the random stream only when on, so every mix of a recipe without them is unchanged."""
    speed: float = 0.0
    """Speed perturbation of the speech: each clean window is resampled by a factor drawn uniformly
    from 1 +- this (tempo and pitch together, as in Kaldi's speed perturbation); 0 leaves it as
    recorded and draws nothing from the random stream."""
    reverb_prob: float = 0.0
    """Share of mixes whose speech is played in a simulated room (``rooms``): the mixture gets the
    reverberant speech, the target keeps the direct path and the first ``EARLY_S`` of reflections. 0 draws
    nothing from the random stream and builds no rooms."""
    rooms: int = 128
    """Rooms simulated once per ``Mixer`` (seeded) when ``reverb_prob`` is on; each mix draws one."""
    rumble_prob: float = 0.0
    """Share of mixes whose noise gets low-frequency ``rumble`` added (at -10..+5 dB against it) before the
    SNR is set. Our recorded noise holds 0.1-0.3 % of its energy below 30 Hz, VBD-23's a median 40 %
    (``bench/rumble.py``): a model that never met it passes it through. 0 draws nothing from the random stream."""


EARLY_S = 0.05
"""Reflections up to this long after the direct path belong to the reverberation target (the DNS
challenge's convention): the model removes late reverberation and keeps what sounds like the talker."""


def room_impulse_responses(rng: np.random.Generator, count: int, rt60_s: tuple[float, float] = (0.2, 0.6),
                           rate: int = RATE) -> list[tuple[np.ndarray, np.ndarray]]:
    """``count`` (full, early) impulse-response pairs of shoebox rooms simulated by the image-source method
    (pyroomacoustics): 3-10 x 3-8 x 2.5-3.5 m, RT60 by Sabine's formula drawn from ``rt60_s`` (the simulated
    rooms measure longer), talker and microphone at least 0.5 m from every wall.

    Both start pyroomacoustics' fractional-delay half-width before the direct path (the propagation delay
    removed), so the target lines up with the speech in the mixture; ``early`` is ``full`` cut ``EARLY_S``
    after the direct path. Scaled so the direct path has unit peak."""
    try:
        import pyroomacoustics as pra
    except ImportError as e:
        raise ConvertError("reverberation (--reverb) simulates rooms with pyroomacoustics: "
                           "pip install pyroomacoustics") from e

    lead = pra.constants.get("frac_delay_length") // 2
    out: list[tuple[np.ndarray, np.ndarray]] = []
    while len(out) < count:
        dims = np.array([rng.uniform(3, 10), rng.uniform(3, 8), rng.uniform(2.5, 3.5)])
        rt60 = rng.uniform(*rt60_s)
        talker, mic = (rng.uniform(0.5, dims - 0.5) for _ in range(2))
        try:
            absorption, order = pra.inverse_sabine(rt60, dims)
        except ValueError:  # a room too large for so short an RT60: draw another
            continue
        room = pra.ShoeBox(dims, fs=rate, materials=pra.Material(absorption), max_order=order)
        room.add_source(talker)
        room.add_microphone(mic)
        room.compute_rir()
        rir = np.asarray(room.rir[0][0], np.float64)
        direct = int(round(np.linalg.norm(talker - mic) / pra.constants.get("c") * rate)) + lead
        full = rir[max(direct - lead, 0):]
        full = full / max(float(np.max(np.abs(full[:2 * lead + 1]))), 1e-9)
        out.append((full.astype(np.float32), full[:lead + int(EARLY_S * rate)].astype(np.float32)))
    return out


def in_room(speech: np.ndarray, room: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(the speech as the room's microphone hears it, the target: its direct path and early reflections), both
    as long as ``speech``; ``room`` is one (full, early) pair of ``room_impulse_responses``."""
    from scipy.signal import fftconvolve

    full, early = room
    return fftconvolve(speech, full)[:len(speech)], fftconvolve(speech, early)[:len(speech)]


class Mixer:
    """Draws (noisy, clean) pairs; mix ``i`` of seed ``s`` is the same on every run and machine."""

    def __init__(self, speech: list[np.ndarray], noise: list[np.ndarray], cfg: MixConfig = MixConfig(),
                 seed: int = 0):
        if not speech:
            raise ConvertError("no speech to train on")
        self.speech = [highpass(s, cfg.speech_highpass_hz) for s in speech if len(s) > RATE // 4]
        self.noise = [n for n in noise if len(n) > RATE // 4]
        self.cfg = cfg
        self.seed = seed
        lens = np.array([len(s) for s in self.speech], np.float64)
        self._p_speech = lens / lens.sum()
        self.rooms = (room_impulse_responses(np.random.default_rng([seed, 0x2EE7B]), cfg.rooms)
                      if cfg.reverb_prob else [])

    def _window(self, rng, pool: list[np.ndarray], n: int, p=None) -> np.ndarray:
        x = pool[rng.choice(len(pool), p=p)]
        if len(x) >= n:
            start = int(rng.integers(0, len(x) - n + 1))
            return x[start:start + n].astype(np.float32)
        reps = int(np.ceil(n / len(x))) + 1
        start = int(rng.integers(0, len(x)))
        return np.tile(x, reps)[start:start + n].astype(np.float32)

    def _noise(self, rng, n: int) -> np.ndarray:
        if self.cfg.babble_prob and rng.random() < self.cfg.babble_prob:
            x = self._babble(rng, n)
        elif not self.noise or rng.random() < self.cfg.synthetic_prob:
            return synthetic_noise(rng, n)
        else:
            x = self._window(rng, self.noise, n)
        if self.cfg.noise_eq_db:
            x = random_eq(rng, x, self.cfg.noise_eq_db)
        return x / _rms(x)

    def _babble(self, rng, n: int) -> np.ndarray:
        """3 to 7 talkers from the speech pool, each at its own level within 10 dB."""
        talkers = [self._window(rng, self.speech, n) for _ in range(int(rng.integers(3, 8)))]
        return sum(t / _rms(t) * 10 ** (rng.uniform(-10, 0) / 20) for t in talkers)

    def _speech(self, rng, n: int) -> np.ndarray:
        if not self.cfg.speed:
            return self._window(rng, self.speech, n, self._p_speech)
        import soxr

        factor = rng.uniform(1 - self.cfg.speed, 1 + self.cfg.speed)
        x = self._window(rng, self.speech, int(np.ceil(n * factor)) + 16, self._p_speech)
        # played `factor` times faster: the window of n * factor samples read at RATE * factor
        y = soxr.resample(x, RATE * factor, RATE, quality="HQ")
        return np.pad(y, (0, max(0, n - len(y))))[:n].astype(np.float32)

    def mix(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng([self.seed, index])
        n = self.cfg.segment
        clean = self._speech(rng, n)
        speech = clean
        if self.cfg.reverb_prob and rng.random() < self.cfg.reverb_prob:
            speech, clean = in_room(clean, self.rooms[int(rng.integers(len(self.rooms)))])
        noise = self._noise(rng, n)
        if rng.random() < self.cfg.second_noise_prob:
            noise = noise + self._noise(rng, n) * 10 ** (-rng.uniform(0, 10) / 20)
            noise /= _rms(noise)
        if self.cfg.rumble_prob and rng.random() < self.cfg.rumble_prob:
            noise = noise + rumble(rng, n) * 10 ** (rng.uniform(-10, 5) / 20)
            noise /= _rms(noise)
        gain = 10 ** (rng.uniform(*self.cfg.level_dbfs) / 20) / _rms(clean)
        clean, speech = clean * gain, speech * gain
        snr = rng.uniform(*self.cfg.snr_db)  # against the target, as without reverberation
        noise = noise * (_rms(clean) / 10 ** (snr / 20))
        noisy = speech + noise
        peak = float(np.max(np.abs(noisy)))
        if peak > 0.99:
            clean, noisy = clean * (0.99 / peak), noisy * (0.99 / peak)
        return noisy.astype(np.float32), clean.astype(np.float32)

    def batch(self, start: int, size: int) -> tuple[np.ndarray, np.ndarray]:
        pairs = [self.mix(start + k) for k in range(size)]
        return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])


# ESC-50 classes (by the target number that ends each clip's name, ``FOLD-ID-TAKE-TARGET.wav``) kept out of
# training and used as unseen noise categories by the generalisation dev set: machinery, vehicles, crowds,
# household appliances, office and animal sounds, across ESC-50's five major groups.
ESC50_HELDOUT = {9: "crow", 22: "clapping", 26: "laughing", 32: "keyboard_typing", 35: "washing_machine",
                 36: "vacuum_cleaner", 37: "clock_alarm", 40: "helicopter", 41: "chainsaw", 44: "engine",
                 47: "airplane", 49: "hand_saw"}
_ESC50_NAME = re.compile(r"^\d+-\d+-[A-Z]-(\d+)\.wav$")


def esc50_class(path: str | os.PathLike[str]) -> int | None:
    """The ESC-50 target class of a clip from its file name; None for any other file."""
    m = _ESC50_NAME.match(Path(path).name)
    return int(m.group(1)) if m else None


def without_heldout(files: list[Path]) -> tuple[list[Path], int]:
    """``files`` less the ESC-50 clips of ``ESC50_HELDOUT`` classes, and how many were dropped."""
    kept = [f for f in files if esc50_class(f) not in ESC50_HELDOUT]
    return kept, len(files) - len(kept)


def corpus(root: Path, split: str) -> tuple[list[Path], list[Path]]:
    """Speech and noise files of one split (train/dev) of the shared data layout."""
    speech = find_audio([root / "speech" / split]) if (root / "speech" / split).is_dir() else []
    noise = find_audio([root / "noise" / split]) if (root / "noise" / split).is_dir() else []
    return speech, noise


def dev_set(root: Path | None = None, count: int = 128, seconds: float = 4.0, seed: int = 1234,
            speech_highpass_hz: float = 0.0) -> tuple[np.ndarray, np.ndarray] | None:
    """The fixed dev mixes (speech/dev x noise/dev); None when the data folder is absent.

    ``speech_highpass_hz`` as in ``MixConfig``: a run that trains on high-passed speech is scored on it too.
    """
    root = root or shared_data()
    speech, noise = corpus(root, "dev")
    if not speech:
        return None
    seg = int(seconds * RATE)
    mixer = Mixer(load_files(speech), load_files(noise),
                  MixConfig(segment=seg, speech_highpass_hz=speech_highpass_hz), seed=seed)
    return mixer.batch(0, count)


def dev_mixes(count: int = 12, seconds: float = 4.0) -> list[np.ndarray]:
    """A few noisy dev mixes for calibration (never test files); [] without the data folder."""
    d = dev_set(count=count, seconds=seconds, seed=4321)
    return [] if d is None else list(d[0])
