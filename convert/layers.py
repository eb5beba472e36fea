"""Keras 3 layers the families build their graphs from (TensorFlow backend; importing this imports Keras)."""

from __future__ import annotations

import os

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
    """One LSTM time step with explicit state, Keras gate order (i, f, c, o)."""

    def __init__(self, units, clip_cell=None, clip_gates=None, **kw):
        super().__init__(**kw)
        self.units = units
        self.clip_cell = clip_cell
        self.clip_gates = clip_gates

    def build(self, shapes):
        n_in = shapes[0][-1]
        self.kernel = self.add_weight(shape=(n_in, 4 * self.units), name="kernel")
        self.recurrent_kernel = self.add_weight(shape=(self.units, 4 * self.units), name="recurrent_kernel")
        self.bias = self.add_weight(shape=(4 * self.units,), name="bias")

    def call(self, inputs):
        x, h, c = inputs
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
    matmul, then T unrolled steps (plain ops, no WHILE); same weights and sum order as ``LSTMStep``.
    Returns (all T hidden rows, last h, last c)."""

    def __init__(self, units, steps, clip_cell=None, clip_gates=None, **kw):
        super().__init__(**kw)
        self.units, self.steps = units, steps
        self.clip_cell, self.clip_gates = clip_cell, clip_gates

    def build(self, shapes):
        n_in = shapes[0][-1]
        self.kernel = self.add_weight(shape=(n_in, 4 * self.units), name="kernel")
        self.recurrent_kernel = self.add_weight(shape=(self.units, 4 * self.units), name="recurrent_kernel")
        self.bias = self.add_weight(shape=(4 * self.units,), name="bias")

    def call(self, inputs):
        x, h, c = inputs
        zxs = ops.matmul(x, self.kernel)
        hs = []
        for t in range(self.steps):
            zx = zxs[t:t + 1]  # a static slice per row: XNNPACK takes it (a 64-way SPLIT it does not)
            z = zx + ops.matmul(h, self.recurrent_kernel) + self.bias
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


class QLSTMCell(keras.layers.Layer):
    """Training-time LSTM cell with clipped, int8 fake-quantised pre-activations, cell and hidden state."""

    def __init__(self, units, gate_clip, cell_clip, fake_quant=True, **kw):
        super().__init__(**kw)
        self.units = units
        self.gate_clip, self.cell_clip, self.fake_quant = gate_clip, cell_clip, fake_quant
        self.state_size = [units, units]
        self.output_size = units

    def build(self, shape):
        self.kernel = self.add_weight(shape=(shape[-1], 4 * self.units), name="kernel",
                                      initializer="glorot_uniform")
        self.recurrent_kernel = self.add_weight(shape=(self.units, 4 * self.units), name="recurrent_kernel",
                                                initializer="orthogonal")
        self.bias = self.add_weight(shape=(4 * self.units,), name="bias", initializer="zeros")

    def _fq(self, x, bound):
        if not self.fake_quant:
            return x
        import tensorflow as tf

        return tf.quantization.fake_quant_with_min_max_args(x, -bound, bound * 127 / 128, num_bits=8)

    def call(self, x, states, training=None):
        h, c = states
        z = ops.matmul(x, self.kernel) + ops.matmul(h, self.recurrent_kernel) + self.bias
        z = self._fq(ops.clip(z, -self.gate_clip, self.gate_clip), self.gate_clip)
        i, f, g, o = ops.split(z, 4, axis=-1)
        c = ops.sigmoid(f) * c + ops.sigmoid(i) * ops.tanh(g)
        c = self._fq(ops.clip(c, -self.cell_clip, self.cell_clip), self.cell_clip)
        h = self._fq(ops.sigmoid(o) * ops.tanh(c), 1.0)
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
