"""Verification and calibration: Keras streaming graphs driven by the same ``edge`` block loop as a bundle."""

from __future__ import annotations

from dataclasses import replace
from types import MappingProxyType
from typing import Iterable

import numpy as np

from edge import Bundle, StreamingDenoiser
from edge.bundle import SubmodelSpec, TensorSpec


class KerasRunner:
    """A Keras streaming submodel driven like ``edge.submodel.TFLiteSubmodel`` (states kept inside)."""

    def __init__(self, model, io, record: list | None = None):
        import tensorflow as tf

        self._io = io
        names = [n for n, _ in io.inputs]
        specs = [tf.TensorSpec(s, tf.float32, name=n) for n, s in io.inputs]
        self._fn = tf.function(lambda *a: model(dict(zip(names, a, strict=True)), training=False),
                               input_signature=specs, autograph=False)
        self._names = names
        self._shapes = dict(io.inputs)
        self._record = record
        self.reset()

    def reset(self) -> None:
        self._states = {s_in: np.zeros(self._shapes[s_in], np.float32) for s_in, _ in self._io.states}

    def __call__(self, x: np.ndarray) -> np.ndarray:
        # a copy: a family step may hand over the same buffer every block, and a record must keep this block's
        feed = {self._io.data_input: np.array(x, np.float32).reshape(self._shapes[self._io.data_input]),
                **self._states}
        if self._record is not None:
            self._record.append(feed)
        out = self._fn(*[feed[n] for n in self._names])
        for s_in, s_out in self._io.states:
            self._states[s_in] = out[s_out].numpy()
        return out[self._io.data_output].numpy()


def stub_bundle(weights, ios, family_options: dict, *, family: str, window: str = "none",
                arrays: dict | None = None) -> Bundle:
    """A Bundle describing Keras submodels (no files): lets the edge framing drive Keras models."""
    cfg = weights.config

    def spec(n, s):
        return TensorSpec(name=n, tensor=n, shape=tuple(s), dtype="float32")

    subs = tuple(SubmodelSpec(name=io.name, file="", sha256="", inputs=tuple(spec(n, s) for n, s in io.inputs),
                              outputs=tuple(spec(n, s) for n, s in io.outputs), data_input=io.data_input,
                              data_output=io.data_output, states=io.states) for io in ios)
    return Bundle(path="<keras>", name="keras", family=family, sample_rate=cfg.sample_rate, block_len=cfg.block_len,
                  block_shift=cfg.block_shift, window=window, latency_samples=cfg.latency_samples,
                  quantization="none", family_options=MappingProxyType(family_options), submodels=subs,
                  manifest=MappingProxyType({}), sha256="",
                  arrays=MappingProxyType({k: np.asarray(v, np.float32) for k, v in (arrays or {}).items()}))


def calibration(stub: Bundle, models, audio: list[np.ndarray], max_blocks: int) -> dict[str, list]:
    """Closed loop: each submodel input recorded with the states the float model itself produced.

    ``stub`` (``stub_bundle``) describes ``models``, [(keras model, IOSpec)]; at most ``max_blocks`` blocks.
    Returns submodel name -> one dict of inputs per block.
    """
    records: dict[str, list] = {}
    den = keras_denoiser(stub, models, dict(stub.family_options), records)
    total = 0
    for x in audio:
        x = x[: max(0, max_blocks - total) * stub.block_shift]
        if len(x) == 0:
            break
        run_stream(den, [x])
        total = len(next(iter(records.values())))
    return records


def keras_denoiser(bundle: Bundle, models, family_options: dict | None = None,
                   records: dict[str, list] | None = None) -> StreamingDenoiser:
    """A StreamingDenoiser whose submodels are Keras models (same framing as the tflite runtime)."""
    ref = replace(bundle, family_options=MappingProxyType(dict(family_options or {})))
    runners = {io.name: KerasRunner(m, io, None if records is None else records.setdefault(io.name, []))
               for m, io in models}
    return StreamingDenoiser(ref, runners=runners)


def run_stream(den: StreamingDenoiser, audio: Iterable[np.ndarray]) -> list[np.ndarray]:
    """Each signal through the stream, delay compensated; the stream is reset between signals."""
    outs = []
    lat = den.latency_samples
    for x in audio:
        y = np.concatenate([den.process(x.astype(np.float32)), den.flush()])
        outs.append(y[lat:lat + len(x)])
    return outs


def snr_db(ref: np.ndarray, test: np.ndarray) -> float:
    err = float(np.sum((ref.astype(np.float64) - test) ** 2))
    sig = float(np.sum(ref.astype(np.float64) ** 2))
    if err == 0.0:
        return float("inf")
    return 10.0 * np.log10(max(sig, 1e-30) / err)


def compare(refs: list[np.ndarray], tests: list[np.ndarray], sample_rate: int) -> dict[str, float]:
    ref = np.concatenate(refs)
    test = np.concatenate(tests)
    snr = snr_db(ref, test)
    return {"snr_db": round(float(snr), 2) if np.isfinite(snr) else 999.0,
            "max_abs_error": float(np.max(np.abs(ref.astype(np.float64) - test))) if len(ref) else 0.0,
            "seconds": round(len(ref) / float(sample_rate), 2)}

