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
              calibration: Callable[[], Iterable[dict[str, np.ndarray]]] | None = None,
              float_layers: Iterable[str] = ()) -> bytes:
    """Convert one streaming submodel as the mode's table entry says (``convert.modes``); ``calibration``
    yields dicts keyed by signature input name (integer modes need it). In a weight-quantised mode with
    float activations (dynamic), the weights of the Keras layers named in ``float_layers`` stay float32
    (``keep_float_weights``)."""
    m = mode(quantize)
    inputs = list(inputs)
    content = _convert(model, inputs, m, calibration)
    present = set(_layer_names(model))
    layers = tuple(n for n in float_layers if n in present)  # a submodel holds some of a family's layers
    if layers and m.float_activations_int8_weights:
        content = keep_float_weights(content, _convert(model, inputs, mode("none"), None), layers)
    return content


def _layer_names(layer) -> Iterable[str]:
    for sub in getattr(layer, "layers", ()):
        yield sub.name
        yield from _layer_names(sub)


def _convert(model, inputs: list[tuple[str, tuple[int, ...]]], m: Mode,
             calibration: Callable[[], Iterable[dict[str, np.ndarray]]] | None) -> bytes:
    import tensorflow as tf

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


def keep_float_weights(quantised: bytes, float32: bytes, layers: Iterable[str]) -> bytes:
    """``quantised`` with the int8 weights of ``layers`` replaced by the float32 ones of ``float32``, the same
    graph converted without quantisation; the ops reading them then compute in float.

    Weights are told by their tensor names, which carry the Keras layer name (``model_1/decoder_1/MatMul``).
    ConvertError if a layer has no int8 weight, or its float twin is missing or differs in shape.
    """
    import re

    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    def constants(model) -> dict[str, Any]:
        return {t.name.decode(): t for t in model.subgraphs[0].tensors
                if t.buffer and model.buffers[t.buffer].data is not None}

    q = flatbuffer_utils.convert_bytearray_to_object(bytearray(quantised))
    f = flatbuffer_utils.convert_bytearray_to_object(bytearray(float32))
    twins = constants(f)
    for layer in layers:
        pattern = re.compile(rf"/{re.escape(layer)}(_\d+)?/")
        hits = [(n, t) for n, t in constants(q).items() if pattern.search(n) and t.type == schema.TensorType.INT8]
        if not hits:
            raise ConvertError(f"float layer {layer!r}: no int8 weight of that layer in the converted graph")
        for name, t in hits:
            twin = twins.get(name)
            if twin is None or twin.type != schema.TensorType.FLOAT32 or list(twin.shape) != list(t.shape):
                raise ConvertError(f"float layer {layer!r}: no float32 weight {name} {list(t.shape)} to put back")
            t.type = schema.TensorType.FLOAT32
            t.quantization = None
            q.buffers[t.buffer].data = f.buffers[twin.buffer].data
    return bytes(flatbuffer_utils.convert_object_to_bytearray(q))


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
