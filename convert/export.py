"""Keras streaming submodel -> ``.tflite`` flatbuffer in one quantisation mode, tensors named."""

from __future__ import annotations

import contextlib
import io
import os
from typing import Any, Callable, Iterable

import numpy as np

from .errors import ConvertError

MODES = ("none", "float16", "dynamic", "int8", "int16x8")


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
        for fd, s in zip((1, 2), saved):
            os.dup2(s, fd)
            os.close(s)


def serving_function(model, inputs: Iterable[tuple[str, tuple[int, ...]]]):
    """A tf.function whose signature has one named float32 argument per model input."""
    import tensorflow as tf

    names = [n for n, _ in inputs]
    specs = [tf.TensorSpec(shape, tf.float32, name=n) for n, shape in inputs]

    @tf.function(input_signature=specs, autograph=False)
    def serve(*args):
        return model(dict(zip(names, args)), training=False)

    return serve


def to_tflite(model, inputs: Iterable[tuple[str, tuple[int, ...]]], mode: str,
              calibration: Callable[[], Iterable[dict[str, np.ndarray]]] | None = None) -> bytes:
    """Convert one streaming submodel; ``calibration`` yields dicts keyed by signature input name."""
    import tensorflow as tf

    if mode not in MODES:
        raise ConvertError(f"unknown quantisation mode {mode!r}; choose one of {', '.join(MODES)}")
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
            fn=lambda *args: model(dict(zip(names, args)), training=False),
            input_signature=[tf.TensorSpec(shape, tf.float32, name=n) for n, shape in inputs])
        tmp = tempfile.TemporaryDirectory(prefix="convert-sm-")
        archive.write_out(tmp.name, verbose=False)
        conv = tf.lite.TFLiteConverter.from_saved_model(tmp.name)
        if mode != "none":
            conv.optimizations = [tf.lite.Optimize.DEFAULT]
        if mode == "float16":
            conv.target_spec.supported_types = [tf.float16]
        elif mode in ("int8", "int16x8"):
            if calibration is None:
                raise ConvertError(f"mode {mode} needs calibration data")

            def rep():
                for d in calibration():
                    yield {k: np.asarray(v, np.float32) for k, v in d.items()}

            conv.representative_dataset = rep
            conv.target_spec.supported_ops = (
                [tf.lite.OpsSet.TFLITE_BUILTINS_INT8] if mode == "int8"
                else [tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8])
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
    return sorted({d["op_name"] for d in it._get_ops_details()})  # noqa: SLF001 (no public equivalent)
