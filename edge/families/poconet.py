"""PoCoNet-style U-Net per-block step: compressed spectrum in, bounded complex mask out (submodel ``unet``)."""

from __future__ import annotations

from typing import Callable

import numpy as np

from ..bundle import MANIFEST, Bundle
from ..errors import BundleError
from . import Opt, check_manifest

MASKS = ("complex_tanh",)


class PoCoNet:
    """One submodel ``unet``: features (1, 1, bins, 2) -> raw mask (1, 1, bins, 2); states stay in the runner.

    Family options: ``bins`` (bins fed to the network, from DC; higher bins are zeroed), ``compress``
    and ``compress_eps`` (features ``X * (|X| + eps) ** (compress - 1)``, re/im as channels),
    ``mask`` = ``complex_tanh`` (``m * tanh(a) / a`` with ``a = sqrt(|m|^2 + mask_eps)``).
    """

    SUBMODELS = ("unet",)
    FRAMING = {"sample_rate": (16000,), "block_len": (512,), "block_shift": (128,), "window": ("sqrt_hann",)}
    """The framing PoCoNet is trained and verified with (32 ms frames, 8 ms hop, sqrt-Hann analysis/synthesis)."""
    OPTIONS = {"bins": Opt("int", required=True, low=1),
               "compress": Opt("number", required=True, low=0, low_open=True, high=1),
               "compress_eps": Opt("number", required=True, low=0, low_open=True, high=1e-2),
               "mask": Opt("str", required=True, choices=MASKS),
               "mask_eps": Opt("number", required=True, low=0, low_open=True, high=1e-2)}
    """``compress`` is an exponent in (0, 1]; the two eps keep a division and a sqrt away from 0: small, > 0."""

    @classmethod
    def check(cls, bundle: Bundle) -> None:
        where = f"{bundle.path}/{MANIFEST}"
        check_manifest(bundle, cls.FRAMING, cls.OPTIONS)
        names = tuple(sm.name for sm in bundle.submodels)
        if names != cls.SUBMODELS:
            raise BundleError(f"{where}: poconet needs submodels {list(cls.SUBMODELS)}, got {list(names)}")
        opts = bundle.family_options
        bins = int(opts["bins"])
        if not 0 < bins <= bundle.block_len // 2 + 1:
            raise BundleError(f"{where}: poconet bins {bins} must be in 1..block_len // 2 + 1")
        sm = bundle.submodels[0]
        for t in (sm.input(sm.data_input), sm.output(sm.data_output)):
            if tuple(t.shape) != (1, 1, bins, 2):
                raise BundleError(f"{bundle.path}/{sm.file}: {t.name} has shape {list(t.shape)}; the per-block "
                                  f"step needs [1, 1, {bins}, 2] (one hop per call)")

    def __init__(self, bundle: Bundle, runners, irfft: Callable[[np.ndarray], np.ndarray]):
        opts = bundle.family_options
        self._net = runners["unet"]
        self._irfft = irfft
        self._bins = int(opts["bins"])
        self._power = float(opts["compress"]) - 1.0
        self._eps = float(opts["compress_eps"])
        self._mask_eps = float(opts["mask_eps"])
        self._feat = np.zeros((1, 1, self._bins, 2), np.float32)
        self._out = np.zeros(bundle.block_len // 2 + 1, np.complex128)

    def reset(self) -> None:
        self._net.reset()

    def step(self, spec: np.ndarray) -> np.ndarray:
        x = spec[: self._bins]
        g = (np.abs(x) + self._eps) ** self._power
        feat = self._feat
        feat[0, 0, :, 0] = x.real * g
        feat[0, 0, :, 1] = x.imag * g
        raw = self._net(feat).reshape(self._bins, 2).astype(np.float64)
        mr, mi = raw[:, 0], raw[:, 1]
        a = np.sqrt(mr * mr + mi * mi + self._mask_eps)
        k = np.tanh(a) / a
        out = self._out
        out[: self._bins] = x * ((mr * k) + 1j * (mi * k))  # Nyquist and any bins above stay zero
        return self._irfft(out)

    def steps(self, spec: np.ndarray) -> np.ndarray:
        """``step`` over T hops at once: ``spec`` (T, bins) -> frames (T, block_len), one T-block call."""
        t = len(spec)
        x = spec[:, : self._bins]
        g = (np.abs(x) + self._eps) ** self._power
        feat = np.empty((1, t, self._bins, 2), np.float32)
        feat[0, :, :, 0] = x.real * g
        feat[0, :, :, 1] = x.imag * g
        raw = self._net.frames(feat).reshape(t, self._bins, 2).astype(np.float64)
        mr, mi = raw[..., 0], raw[..., 1]
        a = np.sqrt(mr * mr + mi * mi + self._mask_eps)
        k = np.tanh(a) / a
        out = np.zeros((t, len(self._out)), np.complex128)
        out[:, : self._bins] = x * ((mr * k) + 1j * (mi * k))
        return self._irfft(out)
