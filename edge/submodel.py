"""One stream's handle on one submodel: its own interpreter, cached indices and state arrays."""

from __future__ import annotations

import numpy as np

from .bundle import DTYPES, Bundle, SubmodelSpec, TensorSpec, check_interpreter
from .interpreter import make_interpreter
from .options import Options


def _quantizer(spec: TensorSpec):
    """(float -> stored dtype, stored dtype -> float) for one tensor."""
    dt = DTYPES[spec.dtype]
    if spec.scale == 0.0:
        return (lambda x: x.astype(dt, copy=False)), (lambda q: q)
    info = np.iinfo(dt)
    scale, zp = np.float32(spec.scale), spec.zero_point

    def quant(x):
        return np.clip(np.round(x / scale) + zp, info.min, info.max).astype(dt)

    def dequant(q):
        return (q.astype(np.float32) - zp) * scale

    return quant, dequant


def _requantizer(quant, dequant):
    """A state output's dtype -> the matching input's dtype, through float."""
    def requantize(a):
        return quant(dequant(a))

    return requantize


class TFLiteSubmodel:
    """Drives one ``.tflite`` submodel block by block; states stay inside.

    ``__call__(x)`` takes the data input as float32 of the manifest shape and returns the data output
    as float32 (int tensors are (de)quantised here from the manifest's scale and zero point).
    """

    def __init__(self, bundle: Bundle, spec: SubmodelSpec, options: Options):
        self.spec = spec
        self._interp = make_interpreter(spec.content, options.num_threads, options.xnnpack)
        index = check_interpreter(bundle, spec, self._interp)
        self._in = index[spec.data_input]
        self._out = index[spec.data_output]
        self._q_in, _ = _quantizer(spec.input(spec.data_input))
        _, self._dq_out = _quantizer(spec.output(spec.data_output))
        self._pairs = []  # (input index, output index, convert out->in or None)
        for s_in, s_out in spec.states:
            tin, tout = spec.input(s_in), spec.output(s_out)
            same = (tin.dtype, tin.scale, tin.zero_point) == (tout.dtype, tout.scale, tout.zero_point)
            conv = None
            if not same:
                q, _ = _quantizer(tin)
                _, dq = _quantizer(tout)
                conv = _requantizer(q, dq)
            self._pairs.append((index[s_in], index[s_out], conv))
        self._zeros = [self._zero_state(spec.input(s_in)) for s_in, _ in spec.states]
        self._states: list[np.ndarray] = []
        self.reset()

    @staticmethod
    def _zero_state(t: TensorSpec) -> np.ndarray:
        q, _ = _quantizer(t)
        return q(np.zeros(t.shape, np.float32))

    def reset(self) -> None:
        self._states = [z.copy() for z in self._zeros]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        it = self._interp
        it.set_tensor(self._in, self._q_in(x))
        states = self._states
        for k, (i, _, _) in enumerate(self._pairs):
            it.set_tensor(i, states[k])
        it.invoke()
        for k, (_, o, conv) in enumerate(self._pairs):
            s = it.get_tensor(o)
            states[k] = s if conv is None else conv(s)
        return self._dq_out(it.get_tensor(self._out))
