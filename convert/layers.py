"""Keras 3 layers the families build their graphs from (TensorFlow backend; importing this imports Keras)."""

from __future__ import annotations

import os
from contextlib import contextmanager

import numpy as np

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
import keras  # after KERAS_BACKEND is set: Keras reads it once, at import
from keras import ops


class InstantLayerNorm(keras.layers.Layer):
    """Per-frame layer norm over the last axis (DTLN's instant layer normalisation)."""

    def __init__(self, eps=1e-7, **kw):
        super().__init__(**kw)
        self.eps = eps

    def build(self, shape):
        self.gamma = self.add_weight(shape=(shape[-1],), initializer="ones", name="gamma")
        self.beta = self.add_weight(shape=(shape[-1],), initializer="zeros", name="beta")

    def call(self, x):
        mean = ops.mean(x, axis=-1, keepdims=True)
        d = x - mean
        var = ops.mean(d * d, axis=-1, keepdims=True)  # d*d: SQUARED_DIFFERENCE has no int16 kernel
        return d / ops.sqrt(var + self.eps) * self.gamma + self.beta

    def get_config(self):
        return {**super().get_config(), "eps": self.eps}


class LSTMStep(keras.layers.Layer):
    """One LSTM time step with explicit state, Keras gate order (i, f, c, o). ``bias_first``: the sum is
    ``(x @ W + b) + h @ U`` (the bias goes into the input product's FULLY_CONNECTED) instead of Keras'
    ``(x @ W + h @ U) + b``; the same in float up to rounding, one int8 rounding fewer in integer graphs."""

    def __init__(self, units, clip_cell=None, clip_gates=None, bias_first=False, **kw):
        super().__init__(**kw)
        self.units = units
        self.clip_cell = clip_cell
        self.clip_gates = clip_gates
        self.bias_first = bias_first

    def build(self, shapes):
        n_in = shapes[0][-1]
        self.kernel = self.add_weight(shape=(n_in, 4 * self.units), name="kernel")
        self.recurrent_kernel = self.add_weight(shape=(self.units, 4 * self.units), name="recurrent_kernel")
        self.bias = self.add_weight(shape=(4 * self.units,), name="bias")

    def call(self, inputs):
        x, h, c = inputs
        if self.bias_first:
            z = (ops.matmul(x, self.kernel) + self.bias) + ops.matmul(h, self.recurrent_kernel)
        else:
            z = ops.matmul(x, self.kernel) + ops.matmul(h, self.recurrent_kernel) + self.bias
        if self.clip_gates is not None:
            z = ops.clip(z, -self.clip_gates, self.clip_gates)
        i, f, g, o = ops.split(z, 4, axis=-1)
        c = ops.sigmoid(f) * c + ops.sigmoid(i) * ops.tanh(g)
        if self.clip_cell is not None:
            c = ops.clip(c, -self.clip_cell, self.clip_cell)
        h = ops.sigmoid(o) * ops.tanh(c)
        return h, c


class SeqLSTM(keras.layers.Layer):
    """An LSTM over a whole (T, n_in) sequence with explicit state: the input product for all T rows in one
    matmul, then T unrolled steps (plain ops, no WHILE); same weights and sum order as ``LSTMStep`` (and its
    ``bias_first``).
    Returns (all T hidden rows, last h, last c)."""

    def __init__(self, units, steps, clip_cell=None, clip_gates=None, bias_first=False, **kw):
        super().__init__(**kw)
        self.units, self.steps = units, steps
        self.clip_cell, self.clip_gates, self.bias_first = clip_cell, clip_gates, bias_first

    def build(self, shapes):
        n_in = shapes[0][-1]
        self.kernel = self.add_weight(shape=(n_in, 4 * self.units), name="kernel")
        self.recurrent_kernel = self.add_weight(shape=(self.units, 4 * self.units), name="recurrent_kernel")
        self.bias = self.add_weight(shape=(4 * self.units,), name="bias")

    def call(self, inputs):
        x, h, c = inputs
        zxs = ops.matmul(x, self.kernel)
        if self.bias_first:
            zxs = zxs + self.bias
        hs = []
        for t in range(self.steps):
            zx = zxs[t:t + 1]  # a static slice per row: XNNPACK takes it (a 64-way SPLIT it does not)
            z = zx + ops.matmul(h, self.recurrent_kernel)
            if not self.bias_first:
                z = z + self.bias
            if self.clip_gates is not None:
                z = ops.clip(z, -self.clip_gates, self.clip_gates)
            i, f, g, o = ops.split(z, 4, axis=-1)
            c = ops.sigmoid(f) * c + ops.sigmoid(i) * ops.tanh(g)
            if self.clip_cell is not None:
                c = ops.clip(c, -self.clip_cell, self.clip_cell)
            h = ops.sigmoid(o) * ops.tanh(c)
            hs.append(h)
        return concat_rows(hs), h, c


def concat_rows(parts: list):
    """Concatenate rows on axis 0 in groups of at most four (the widest CONCATENATION XNNPACK delegates)."""
    while len(parts) > 1:
        parts = [p[0] if len(p) == 1 else ops.concatenate(p, axis=0) for p in
                 (parts[i:i + 4] for i in range(0, len(parts), 4))]
    return parts[0]


RANGE_DECAY = 0.995
"""Per training step, a tracked range shrinks by at most this factor (it follows a model whose tensors shrink)."""


def _fq(x, lo, hi):
    """int8 rounding on the fixed range [lo, hi]; gradients pass straight through inside it."""
    import tensorflow as tf

    return tf.quantization.fake_quant_with_min_max_args(x, lo, hi, num_bits=8)


def _fq_weights(w):
    """Per output channel (last axis), symmetric int8 weights ([-127, 127]), as the converter stores them."""
    import tensorflow as tf

    m = tf.stop_gradient(tf.maximum(tf.reduce_max(tf.abs(w), axis=0), 1e-8))
    return tf.quantization.fake_quant_with_min_max_vars_per_channel(w, -m, m, num_bits=8, narrow_range=True)


def _grown_range(var, seen):
    """A tracked range after a training step that saw max |x| = ``seen``: up at once, down by RANGE_DECAY at most
    (``seen`` itself while the range is still unknown, 0)."""
    import tensorflow as tf

    return tf.where(var > 0, tf.maximum(seen, var * RANGE_DECAY), seen)


def _fq_range(x, r):
    """int8 rounding of ``x`` on +-``r`` (a tensor); gradients pass straight through inside it."""
    import tensorflow as tf

    return tf.quantization.fake_quant_with_min_max_vars(x, -r, r, num_bits=8)


def _fq_tracked(x, var, training):
    """int8 rounding of ``x`` on +-``var``, the running maximum of |x| seen in training: what the converter's
    calibration sets from data. Unrounded while the range is still unknown (0)."""
    import tensorflow as tf

    r = var
    if training:
        r = _grown_range(var, tf.reduce_max(tf.abs(x)))
        var.assign(r)
    q = _fq_range(x, tf.stop_gradient(tf.maximum(tf.convert_to_tensor(r), 1e-6)))
    return q if training else tf.where(var > 0, q, x)


class _Int8Simulation:
    """A QAT layer: rounds as the full-int8 graph does while ``simulate`` is True; computes the same network in
    float (nothing rounded, no range updated) while it is False (``float_twin``)."""

    simulate = True


@contextmanager
def float_twin(model):
    """Inside this block the QAT layers of ``model`` compute in float: the model is then its own float32 graph
    (same weights and clips), the reference the int8 simulation is compared with (``--consistency``)."""
    layers = [layer for layer in model.layers if isinstance(layer, _Int8Simulation)]
    for layer in layers:
        layer.simulate = False
    try:
        yield model
    finally:
        for layer in layers:
            layer.simulate = True


def _no_fq(x, *_):
    return x


class _OwnWeightsOnly:
    """get/set_weights see the model's weights only, not the tracked ranges (the h5 layout has none)."""

    n_model_weights = 0

    def get_weights(self):
        return [np.asarray(v) for v in self.weights[:self.n_model_weights]]

    def set_weights(self, weights):
        own = self.weights[:self.n_model_weights]
        if len(weights) != len(own):
            raise ValueError(f"{self.name}: {len(weights)} arrays for {len(own)} weights")
        for v, w in zip(own, weights, strict=True):
            v.assign(w)


class QATLSTM(_Int8Simulation, _OwnWeightsOnly, keras.layers.Layer):
    """Training-time LSTM over a sequence that rounds what the full-int8 graph rounds: its input, the int8
    weights (per channel), ``x @ W + b`` and ``h @ U`` each on its own range (running maxima, as calibration
    sets them), the clipped gate sum, the sigmoid and tanh outputs, the cell state and ``h``. Same weights,
    names and gate order (i, f, c, o) as a Keras LSTM."""

    n_model_weights = 3

    def __init__(self, units, gate_clip, cell_clip, **kw):
        super().__init__(**kw)
        self.units, self.gate_clip, self.cell_clip = units, gate_clip, cell_clip

    def build(self, shape):
        self.kernel = self.add_weight(shape=(shape[-1], 4 * self.units), name="kernel", initializer="glorot_uniform")
        self.recurrent_kernel = self.add_weight(shape=(self.units, 4 * self.units), name="recurrent_kernel",
                                                initializer="orthogonal")
        self.bias = self.add_weight(shape=(4 * self.units,), name="bias", initializer="zeros")
        self.range_x, self.range_xw, self.range_hu = (
            self.add_weight(shape=(), name=n, initializer="zeros", trainable=False) for n in ("range_x", "range_xw",
                                                                                              "range_hu"))

    def call(self, x, training=None):
        import tensorflow as tf

        sim = self.simulate
        training = bool(training) and sim
        gc, cc = self.gate_clip, self.cell_clip
        q = _fq if sim else _no_fq
        if sim:  # the bias inside the input product, as the int8 graph adds it (``bias_first``)
            x = _fq_tracked(x, self.range_x, training)
            xw = _fq_tracked(tf.matmul(x, _fq_weights(self.kernel)) + self.bias, self.range_xw, training)
            u = _fq_weights(self.recurrent_kernel)
        else:
            xw, u = tf.matmul(x, self.kernel) + self.bias, self.recurrent_kernel
        r_hu = tf.convert_to_tensor(self.range_hu)
        known = r_hu > 0
        r = tf.maximum(r_hu, 1e-6)
        batch = tf.shape(x)[0]
        zeros = tf.zeros((batch, self.units), x.dtype)

        def step(carry, xw_t):
            h, c, seen = carry
            hu = tf.matmul(h, u)
            if sim:
                seen = tf.maximum(seen, tf.reduce_max(tf.abs(hu)))
                hu = tf.where(known, _fq_range(hu, r), hu)
            z = q(tf.clip_by_value(xw_t + hu, -gc, gc), -gc, gc * 127 / 128)
            i, f, g, o = tf.split(z, 4, axis=-1)
            fc = q(tf.sigmoid(f), 0.0, 1.0) * c
            ig = q(tf.sigmoid(i), 0.0, 1.0) * q(tf.tanh(g), -1.0, 127 / 128)
            c = q(tf.clip_by_value(q(fc, -cc, cc * 127 / 128) + q(ig, -1.0, 127 / 128), -cc, cc),
                  -cc, cc * 127 / 128)
            h = q(q(tf.sigmoid(o), 0.0, 1.0) * q(tf.tanh(c), -1.0, 127 / 128), -1.0, 127 / 128)
            return h, c, seen

        hs, _, seen = tf.scan(step, tf.transpose(xw, (1, 0, 2)), initializer=(zeros, zeros, tf.zeros((), x.dtype)))
        if training:
            self.range_hu.assign(_grown_range(r_hu, seen[-1]))
        return tf.transpose(hs, (1, 0, 2))

    def get_config(self):
        return {**super().get_config(), "units": self.units, "gate_clip": self.gate_clip, "cell_clip": self.cell_clip}


class QATDense(_Int8Simulation, _OwnWeightsOnly, keras.layers.Layer):
    """Training-time sigmoid Dense as full int8 computes it: int8 weights per channel, its logits on a tracked
    range; the sigmoid in float, as the runtime applies it (the int8 mode's ``runtime_sigmoid``). Same
    weights as a Keras Dense."""

    n_model_weights = 2

    def __init__(self, units, **kw):
        super().__init__(**kw)
        self.units = units

    def build(self, shape):
        self.kernel = self.add_weight(shape=(shape[-1], self.units), name="kernel", initializer="glorot_uniform")
        self.bias = self.add_weight(shape=(self.units,), name="bias", initializer="zeros")
        self.range_sum = self.add_weight(shape=(), name="range_sum", initializer="zeros", trainable=False)

    def call(self, x, training=None):
        import tensorflow as tf

        if not self.simulate:
            return tf.sigmoid(tf.matmul(x, self.kernel) + self.bias)
        z = tf.matmul(x, _fq_weights(self.kernel)) + self.bias
        return tf.sigmoid(_fq_tracked(z, self.range_sum, bool(training)))

    def get_config(self):
        return {**super().get_config(), "units": self.units}


class TrackedFakeQuant(_Int8Simulation, keras.layers.Layer):
    """Training-time int8 rounding of a tensor on its tracked range (e.g. an integer graph's input)."""

    def build(self, shape):
        self.range = self.add_weight(shape=(), name="range", initializer="zeros", trainable=False)

    def call(self, x, training=None):
        return _fq_tracked(x, self.range, bool(training)) if self.simulate else x


class QLSTMCell(keras.layers.Layer):
    """Training-time LSTM cell with clipped pre-activations and cell state (a model trained with --gate-clip
    but without --qat)."""

    def __init__(self, units, gate_clip, cell_clip, **kw):
        super().__init__(**kw)
        self.units = units
        self.gate_clip, self.cell_clip = gate_clip, cell_clip
        self.state_size = [units, units]
        self.output_size = units

    def build(self, shape):
        self.kernel = self.add_weight(shape=(shape[-1], 4 * self.units), name="kernel",
                                      initializer="glorot_uniform")
        self.recurrent_kernel = self.add_weight(shape=(self.units, 4 * self.units), name="recurrent_kernel",
                                                initializer="orthogonal")
        self.bias = self.add_weight(shape=(4 * self.units,), name="bias", initializer="zeros")

    def call(self, x, states, training=None):
        h, c = states
        z = ops.matmul(x, self.kernel) + ops.matmul(h, self.recurrent_kernel) + self.bias
        i, f, g, o = ops.split(ops.clip(z, -self.gate_clip, self.gate_clip), 4, axis=-1)
        c = ops.clip(ops.sigmoid(f) * c + ops.sigmoid(i) * ops.tanh(g), -self.cell_clip, self.cell_clip)
        h = ops.sigmoid(o) * ops.tanh(c)
        return h, [h, c]


class GRUStep(keras.layers.Layer):
    """One GRU step with explicit state; Keras' GRU maths (gates z, r, h; reset after the matmul)."""

    def __init__(self, units, **kw):
        super().__init__(**kw)
        self.units = units

    def build(self, shapes):
        n_in = shapes[0][-1]
        self.kernel = self.add_weight(shape=(n_in, 3 * self.units), name="kernel")
        self.recurrent_kernel = self.add_weight(shape=(self.units, 3 * self.units), name="recurrent_kernel")
        self.bias = self.add_weight(shape=(2, 3 * self.units), name="bias")

    def call(self, inputs):
        x, h = inputs
        mx = ops.matmul(x, self.kernel) + self.bias[0]
        mh = ops.matmul(h, self.recurrent_kernel) + self.bias[1]
        xz, xr, xh = ops.split(mx, 3, axis=-1)
        hz, hr, hh = ops.split(mh, 3, axis=-1)
        z = ops.sigmoid(xz + hz)
        r = ops.sigmoid(xr + hr)
        c = ops.tanh(xh + r * hh)
        return z * h + (1.0 - z) * c


class STFT(keras.layers.Layer):
    """(batch, samples) -> magnitude and phase (batch, frames, bins); no padding, like DTLN."""

    def __init__(self, block_len, block_shift, **kw):
        super().__init__(**kw)
        self.block_len, self.block_shift = block_len, block_shift

    def call(self, x):
        import tensorflow as tf

        spec = tf.signal.rfft(tf.signal.frame(x, self.block_len, self.block_shift))
        return tf.abs(spec), tf.math.angle(spec)


class ISTFTFrames(keras.layers.Layer):
    """Masked magnitude + phase -> time frames (batch, frames, block_len)."""

    def __init__(self, block_len, **kw):
        super().__init__(**kw)
        self.block_len = block_len

    def call(self, inputs):
        import tensorflow as tf

        mag, phase = inputs
        spec = tf.cast(mag, tf.complex64) * tf.exp(tf.complex(tf.zeros_like(phase), phase))
        return tf.signal.irfft(spec, fft_length=[self.block_len])


class OverlapAdd(keras.layers.Layer):
    def __init__(self, block_shift, **kw):
        super().__init__(**kw)
        self.block_shift = block_shift

    def call(self, frames):
        import tensorflow as tf

        return tf.signal.overlap_and_add(frames, self.block_shift)


class Log(keras.layers.Layer):
    def call(self, x):
        return ops.log(x + 1e-7)


class FreqEmbedding(keras.layers.Layer):
    """Append constant frequency-positional channels: (..., bins, C) -> (..., bins, C + P)."""

    def __init__(self, table, **kw):
        super().__init__(**kw)
        self.table = np.asarray(table, np.float32)

    def call(self, x):
        emb = ops.convert_to_tensor(self.table)
        if None in tuple(x.shape):
            e = ops.zeros_like(x[..., :1]) + emb
        else:  # static (streaming): a constant the converter folds
            e = ops.broadcast_to(emb, (*x.shape[:-1], self.table.shape[-1]))
        return ops.concatenate([x, e], axis=-1)


class PowerCompress(keras.layers.Layer):
    """Spectrum (..., all bins, 2 = re/im) -> compressed spectrum of the first ``bins``: X * (|X| + eps) ** (c - 1)."""

    def __init__(self, bins, compress, eps, **kw):
        super().__init__(**kw)
        self.bins, self.compress, self.eps = bins, compress, eps

    def call(self, spec):
        x = spec[..., : self.bins, :]
        mag = ops.sqrt(ops.sum(x * x, axis=-1, keepdims=True))
        return x * ops.power(mag + self.eps, self.compress - 1.0)


class FramedAnalysis(keras.layers.Layer):
    """(batch, samples) -> windowed spectrum (batch, frames, block_len // 2 + 1, 2 = re/im).

    Frames exactly as ``edge.stream`` sees them: block_len - block_shift zeros in front, and at the
    end zeros until every frame that touches an input sample exists.
    """

    def __init__(self, block_len, block_shift, window, **kw):
        super().__init__(**kw)
        self.block_len, self.block_shift = block_len, block_shift
        self.window = np.asarray(window, np.float32)

    def call(self, x):
        import tensorflow as tf

        n, s = self.block_len, self.block_shift
        lat = n - s
        length = tf.shape(x)[1]
        last = (length + lat - 1) // s  # index of the last frame that covers an input sample
        pad_end = last * s + n - lat - length
        xp = tf.pad(x, [[0, 0], [lat, 0]])
        xp = tf.concat([xp, tf.zeros(tf.stack([tf.shape(x)[0], pad_end]), x.dtype)], axis=1)
        spec = tf.signal.rfft(tf.signal.frame(xp, n, s) * self.window)
        return tf.stack([tf.math.real(spec), tf.math.imag(spec)], axis=-1)


class MaskedSynthesis(keras.layers.Layer):
    """Spectrum, raw complex mask and the input audio -> denoised audio of the input's length, aligned.

    The mask's magnitude is bounded by tanh: m * tanh(|m|) / |m|, with ``mask_eps`` added to |m|^2; bins from
    ``bins`` up are zeroed; then irfft, synthesis window, overlap-add, and the first block_len - block_shift
    samples dropped.
    """

    def __init__(self, block_len, block_shift, bins, window, mask_eps, **kw):
        super().__init__(**kw)
        self.block_len, self.block_shift, self.bins, self.mask_eps = block_len, block_shift, bins, mask_eps
        self.window = np.asarray(window, np.float32)

    def call(self, inputs):
        import tensorflow as tf

        spec, raw, audio = inputs
        x = spec[..., : self.bins, :]
        mr, mi = raw[..., 0], raw[..., 1]
        a = tf.sqrt(mr * mr + mi * mi + self.mask_eps)
        k = tf.tanh(a) / a
        mr, mi = mr * k, mi * k
        yr = x[..., 0] * mr - x[..., 1] * mi
        yi = x[..., 0] * mi + x[..., 1] * mr
        rest = self.block_len // 2 + 1 - self.bins
        y = tf.complex(tf.pad(yr, [[0, 0], [0, 0], [0, rest]]), tf.pad(yi, [[0, 0], [0, 0], [0, rest]]))
        frames = tf.signal.irfft(y, fft_length=[self.block_len]) * self.window
        out = tf.signal.overlap_and_add(frames, self.block_shift)
        lat = self.block_len - self.block_shift
        return out[:, lat: lat + tf.shape(audio)[1]]
