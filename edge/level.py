"""Automatic input level: a slow gain that brings quiet input up to the level the models were trained at.

DTLN's first stage (and the U-Net) sees raw magnitudes, so the same speech and noise 12-18 dB quieter
than in training is cleaned worse (``bench/results/level_s19.md``: the default bundle loses 0.3 PESQ-WB on
the generalisation set 18 dB down). With ``Options(auto_level=True)`` each hop's analysis spectrum is
multiplied by a gain and the frame the model returns is divided by the same gain, so the model sees input
near its training level while the output keeps the input's level (a model that passed its input through
unchanged would give the input back exactly, whatever the gain).

The gain follows a level estimate of the input, never of the future: the power of each hop's new samples,
smoothed with a fast rise (``RISE_S``) and a slow fall (``FALL_S``), hops below ``GATE_DBFS`` (digital
silence) left out. Where that estimate is below ``TARGET_DBFS`` the gain makes up the difference, at most
``MAX_BOOST_DB``; input at or above it is left as it is (gain exactly 1). The estimate sits about 6 dB
above a file's RMS (``TARGET_DBFS`` -26 ~ noisy speech at -32 dBFS RMS); the constants were chosen on the
generalisation dev set, not on VBD-23.

What it costs: leading silence and pauses let the estimate fall, so the next words of clean or nearly clean
speech at a normal level are boosted too, and the models are less transparent on louder input (a constant
+10 dB on clean speech: PESQ-WB 4.44 -> 4.14). Clean speech in, the default bundle: 4.44 / 40.6 dB -> 4.10 /
33.5 dB; noisy input at its own level: a tie (``bench/results/generalisation_s20.md``, ``level_s20.md``).

One stream (``StreamLevel``: hop by hop and T hops of a file in a loop, the same gains bit for bit) works
in Python floats, a few microseconds a hop; a batch of daemon streams (``AutoLevel``) in numpy arrays, a row
per stream, with the same formulas (gains equal to ~1e-15 relative: ``np.log10`` and ``math.log10`` may
differ in the last bit).
"""

from __future__ import annotations

import math

import numpy as np

TARGET_DBFS = -26.0
"""Level estimate (dB full scale) below which the gain boosts."""
MAX_BOOST_DB = 30.0
"""Largest gain (dB)."""
GATE_DBFS = -70.0
"""Hops quieter than this (dB full scale power) leave the estimate as it is."""
RISE_S = 0.2
"""Time constant (seconds) of the estimate when the input gets louder: the gain comes down fast."""
FALL_S = 3.0
"""Time constant (seconds) when it gets quieter: the gain rises slowly (pauses are not boosted much)."""


def _rates(block_shift: int, sample_rate: int) -> tuple[float, float, float]:
    """(rise step, fall step, gate power) of the one-pole estimate, for hops of ``block_shift`` samples."""
    hop_s = block_shift / sample_rate
    return 1.0 - math.exp(-hop_s / RISE_S), 1.0 - math.exp(-hop_s / FALL_S), 10.0 ** (GATE_DBFS / 10)


def hop_power(hops: np.ndarray) -> np.ndarray:
    """Mean square of each hop's samples (..., block_shift), in float64 whatever the input's type."""
    return np.add.reduce(np.square(hops, dtype=np.float64), axis=-1) / hops.shape[-1]  # np.mean's sum, less its cost


class StreamLevel:
    """One stream's level estimate and gain, hop by hop."""

    def __init__(self, block_shift: int, sample_rate: int):
        self._rise, self._fall, self._gate = _rates(block_shift, sample_rate)
        self.power = 0.0
        """Smoothed power of the input (full scale = 1; 0 = no hop above the gate yet)."""

    def reset(self) -> None:
        self.power = 0.0

    def gain(self, hop: np.ndarray) -> float:
        """Update the estimate with the next hop of new input samples (block_shift,); the gain (>= 1) for that
        hop's frame."""
        e = float(hop_power(hop))
        p = self.power
        if e > self._gate:
            if p == 0.0:
                p = e
            p += (self._rise if e > p else self._fall) * (e - p)
            self.power = p
        if p == 0.0:
            return 1.0
        boost = min(max(TARGET_DBFS - 10.0 * math.log10(p), 0.0), MAX_BOOST_DB)  # p > gate once set
        return 10.0 ** (boost / 20.0)


class AutoLevel:
    """The level estimates of ``rows`` streams (power per row; 0 = no hop above the gate yet): ``StreamLevel``
    for a batch."""

    def __init__(self, rows: int, block_shift: int, sample_rate: int):
        self._rise, self._fall, self._gate = _rates(block_shift, sample_rate)
        self.power = np.zeros(rows)
        """Smoothed power of each row's input (full scale = 1)."""

    def reset(self, rows: slice | np.ndarray | int = slice(None)) -> None:
        """Forget the level of ``rows`` (all by default): a new stream's first audible hop is its first estimate."""
        self.power[rows] = 0.0

    def gains(self, rows: slice | np.ndarray, hops: np.ndarray) -> np.ndarray:
        """Update ``rows``' estimates with their next hop of new input samples ``hops`` (len(rows), block_shift);
        return each row's gain (float64, >= 1) for that hop's frame."""
        e = hop_power(hops)
        p = self.power[rows]
        live = e > self._gate
        p = np.where(live & (p == 0.0), e, p)  # a stream's first audible hop is its first estimate
        step = np.where(e > p, self._rise, self._fall)
        p = np.where(live, p + step * (e - p), p)
        self.power[rows] = p
        level = 10.0 * np.log10(np.maximum(p, self._gate))
        boost = np.where(p > 0.0, np.clip(TARGET_DBFS - level, 0.0, MAX_BOOST_DB), 0.0)
        return 10.0 ** (boost / 20.0)
