"""Keras streaming submodel -> ``.tflite`` flatbuffer in one quantisation mode, tensors named."""

from __future__ import annotations

import contextlib
import io
import os
from typing import Any, Callable, Iterable

import numpy as np

from .errors import ConvertError
from .modes import Mode, mode


@contextlib.contextmanager
def quiet():
    """Silence the Keras export banner ("Saved artifact at ...") and TF's C++ logging on fd 1/2."""
    buf = io.StringIO()
    saved = []
    try:
        for fd in (1, 2):
            saved.append(os.dup(fd))
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, fd)
            os.close(devnull)
        with contextlib.redirect_stdout(buf):
            yield
    finally:
        for fd, s in zip((1, 2), saved, strict=False):
            os.dup2(s, fd)
            os.close(s)


def to_tflite(model, inputs: Iterable[tuple[str, tuple[int, ...]]], quantize: str | Mode,
              calibration: Callable[[], Iterable[dict[str, np.ndarray]]] | None = None) -> bytes:
    """Convert one streaming submodel as the mode's table entry says (``convert.modes``); ``calibration``
    yields dicts keyed by signature input name (integer modes need it)."""
    import tensorflow as tf

    m = mode(quantize)
    inputs = list(inputs)
    with quiet():
        import tempfile

        import keras

        # Through keras.export.ExportArchive: it tracks the Keras 3 variables so the converter freezes
        # them (a plain tf.function / tf.Module export keeps VAR_HANDLEs that load as zeros) and keeps
        # the endpoint's input/output names as the signature names.
        names = [n for n, _ in inputs]
        archive = keras.export.ExportArchive()
        archive.track(model)
        archive.add_endpoint(
            name="serving_default",
            fn=lambda *args: model(dict(zip(names, args, strict=True)), training=False),
            input_signature=[tf.TensorSpec(shape, tf.float32, name=n) for n, shape in inputs])
        tmp = tempfile.TemporaryDirectory(prefix="convert-sm-")
        archive.write_out(tmp.name, verbose=False)
        conv = tf.lite.TFLiteConverter.from_saved_model(tmp.name)
        if m.optimize:
            conv.optimizations = [tf.lite.Optimize.DEFAULT]
        if m.float16:
            conv.target_spec.supported_types = [tf.float16]
        if m.calibrated:
            if calibration is None:
                raise ConvertError(f"mode {m.name} needs calibration data")

            def rep():
                for d in calibration():
                    yield {k: np.asarray(v, np.float32) for k, v in d.items()}

            conv.representative_dataset = rep
            conv.target_spec.supported_ops = [getattr(tf.lite.OpsSet, m.integer_ops)]
        try:
            return conv.convert()
        finally:
            tmp.cleanup()


def tensor_table(content: bytes) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    """Signature name -> {tensor, shape, dtype, scale, zero_point} for inputs and outputs."""
    from edge.interpreter import make_interpreter

    it = make_interpreter(content)
    runner = it.get_signature_runner()

    def table(details):
        out = {}
        for name, d in details.items():
            scale, zp = d["quantization"] if "quantization" in d else (0.0, 0)
            qp = d.get("quantization_parameters")
            if qp is not None and len(qp["scales"]) > 0:
                scale, zp = float(qp["scales"][0]), int(qp["zero_points"][0])
            out[name] = {"tensor": d["name"], "shape": [int(s) for s in d["shape"]],
                         "dtype": np.dtype(d["dtype"]).name, "scale": float(scale), "zero_point": int(zp)}
        return out

    return table(runner.get_input_details()), table(runner.get_output_details())


def op_names(content: bytes) -> list[str]:
    """Builtin operator names used by a flatbuffer (for checks such as 'no WHILE')."""
    from edge.interpreter import make_interpreter

    it = make_interpreter(content)
    return sorted({d["op_name"] for d in it._get_ops_details()})  # no public equivalent
