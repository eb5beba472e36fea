"""DTLN per-block step: magnitude mask (submodel ``mask``), then a learned-basis stage (``frame``)."""

from __future__ import annotations

from typing import Callable

import numpy as np

from ..bundle import MANIFEST, Bundle
from ..errors import BundleError
from . import Opt, check_manifest


def _runtime_bases(bundle: Bundle) -> tuple[np.ndarray, np.ndarray] | None:
    """(encoder, decoder) when ``stage2_bases`` is ``"runtime"``, None when the graph holds them."""
    bases = bundle.family_options.get("stage2_bases", "graph")
    if bases not in ("graph", "runtime"):
        raise BundleError(f"{bundle.path}/{MANIFEST}: stage2_bases {bases!r} is neither 'graph' nor 'runtime'")
    if bases == "graph":
        return None
    enc, dec = bundle.arrays.get("encoder"), bundle.arrays.get("decoder")
    if enc is None or dec is None or enc.ndim != 2 or enc.shape[0] != bundle.block_len \
            or dec.shape != enc.shape[::-1]:
        raise BundleError(f"{bundle.path}/{MANIFEST}: stage2_bases 'runtime' needs arrays encoder "
                          f"({bundle.block_len}, N) and decoder (N, {bundle.block_len}), got "
                          f"{ {k: list(v.shape) for k, v in bundle.arrays.items()} }")
    return enc, dec


def _runtime_sigmoid(bundle: Bundle) -> bool:
    """True when ``mask_sigmoid`` is ``"runtime"``: both submodels return mask logits (needs stage 2's bases here
    too, or stage 2 would apply its mask inside the graph)."""
    where = bundle.family_options.get("mask_sigmoid", "graph")
    if where not in ("graph", "runtime"):
        raise BundleError(f"{bundle.path}/{MANIFEST}: mask_sigmoid {where!r} is neither 'graph' nor 'runtime'")
    if where == "runtime" and bundle.family_options.get("stage2_bases", "graph") != "runtime":
        raise BundleError(f"{bundle.path}/{MANIFEST}: mask_sigmoid 'runtime' needs stage2_bases 'runtime'")
    return where == "runtime"


def _sigmoid(z: np.ndarray) -> np.ndarray:
    """float32 logistic as 0.5 * (tanh(z / 2) + 1): no overflow warning for large negative logits; one new array
    (the per-block loop runs it twice every hop)."""
    out = np.multiply(z, np.float32(0.5), dtype=np.float32)
    np.tanh(out, out=out)
    out += np.float32(1.0)
    out *= np.float32(0.5)
    return out


class DTLN:
    """Two submodels in call order: ``mask`` (|X| -> mask) and ``frame`` (time frame -> frame).

    Family options: ``frame_rms_norm`` (divide the ``frame`` input by its RMS, floor 1e-4, and
    multiply the output back: exact for DTLN's scale-invariant second stage, and what integer modes
    need); ``log_mag`` (feed log(|X| + 1e-7) instead of |X|, the log computed here in float);
    ``stage2_bases`` = ``"runtime"`` (the bundle's ``encoder``/``decoder`` arrays are applied here in
    float32: ``frame`` takes the encoded frame and returns its mask; full int8 bundles do this);
    ``mask_sigmoid`` = ``"runtime"`` (both submodels return mask logits, the sigmoid is applied here in
    float32; needs ``stage2_bases`` ``"runtime"``; full int8 bundles do this).
    """

    SUBMODELS = ("mask", "frame")
    FRAMING = {"sample_rate": (16000,), "block_len": (512,), "block_shift": (128,), "window": ("none",)}
    """The framing DTLN is trained and verified with (32 ms frames, 8 ms hop, no window)."""
    OPTIONS = {"frame_rms_norm": Opt("bool"), "log_mag": Opt("bool"),
               "stage2_bases": Opt("str", choices=("graph", "runtime")),
               "mask_sigmoid": Opt("str", choices=("graph", "runtime"))}

    @classmethod
    def check(cls, bundle: Bundle) -> None:
        check_manifest(bundle, cls.FRAMING, cls.OPTIONS)
        names = tuple(sm.name for sm in bundle.submodels)
        if names != cls.SUBMODELS:
            raise BundleError(f"{bundle.path}/{MANIFEST}: dtln needs submodels {list(cls.SUBMODELS)} in that "
                              f"order, got {list(names)}")
        bins = bundle.block_len // 2 + 1
        bases = _runtime_bases(bundle)
        _runtime_sigmoid(bundle)
        sizes = (bins, bundle.block_len if bases is None else bases[0].shape[1])
        for sm, n in zip(bundle.submodels, sizes, strict=True):
            for t in (sm.input(sm.data_input), sm.output(sm.data_output)):
                if int(np.prod(t.shape)) != n:
                    raise BundleError(f"{bundle.path}/{sm.file}: {t.name} has shape {list(t.shape)}, "
                                      f"dtln with block_len {bundle.block_len} needs {n} values")

    def __init__(self, bundle: Bundle, runners, irfft: Callable[[np.ndarray], np.ndarray]):
        self._mask = runners["mask"]
        self._frame = runners["frame"]
        self._irfft = irfft
        self._mask_shape = bundle.submodels[0].input(bundle.submodels[0].data_input).shape
        self._frame_shape = bundle.submodels[1].input(bundle.submodels[1].data_input).shape
        self._rms_norm = bool(bundle.family_options.get("frame_rms_norm", False))
        self._log_mag = bool(bundle.family_options.get("log_mag", False))
        self._enc, self._dec = _runtime_bases(bundle) or (None, None)
        self._act = _sigmoid if _runtime_sigmoid(bundle) else None

    def reset(self) -> None:
        self._mask.reset()
        self._frame.reset()

    def step(self, spec: np.ndarray) -> np.ndarray:
        mag = np.abs(spec).astype(np.float32)
        if self._log_mag:
            mag = np.log(mag + np.float32(1e-7))
        mask = self._mask(mag.reshape(self._mask_shape))
        if self._act is not None:
            mask = self._act(mask)
        frame = self._irfft(spec * mask.reshape(-1)).astype(np.float32)
        if self._rms_norm:
            rms = max(float(np.sqrt(np.mean(np.square(frame, dtype=np.float64)))), 1e-4)
            frame = frame / np.float32(rms)
        if self._enc is not None:
            enc = frame @ self._enc
            m2 = self._frame(enc.reshape(self._frame_shape)).reshape(-1)
            out = (enc * (m2 if self._act is None else self._act(m2))) @ self._dec
        else:
            out = self._frame(frame.reshape(self._frame_shape)).reshape(-1)
        return out * np.float32(rms) if self._rms_norm else out

    def steps(self, spec: np.ndarray) -> np.ndarray:
        """``step`` over T hops at once: ``spec`` (T, bins) -> frames (T, block_len), through the runners'
        T-block calls (``frames``); the recurrence runs inside the graph."""
        t = len(spec)
        mag = np.abs(spec).astype(np.float32)
        if self._log_mag:
            mag = np.log(mag + np.float32(1e-7))
        mask = self._mask.frames(mag.reshape(1, t, *self._mask_shape[2:]))
        if self._act is not None:
            mask = self._act(mask)
        # the spectrum is this call's own: mask it in place
        frame = self._irfft(np.multiply(spec, mask.reshape(t, -1), out=spec)).astype(np.float32)
        if self._rms_norm:
            rms = np.maximum(np.sqrt(np.mean(np.square(frame, dtype=np.float64), axis=1)), 1e-4)
            rms = rms.astype(np.float32)[:, None]
            frame = frame / rms
        if self._enc is not None:
            enc = frame @ self._enc
            m2 = self._frame.frames(enc.reshape(1, t, *self._frame_shape[2:])).reshape(t, -1)
            out = (enc * (m2 if self._act is None else self._act(m2))) @ self._dec
        else:
            out = self._frame.frames(frame.reshape(1, t, *self._frame_shape[2:])).reshape(t, -1)
        return out * rms if self._rms_norm else out
