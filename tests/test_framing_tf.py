"""The numpy streaming framing equals TensorFlow's offline framing (tf.signal.frame / overlap_and_add)."""

from __future__ import annotations

import numpy as np
import pytest

from .conftest import noise_audio, small_weights

tf = pytest.importorskip("tensorflow", reason="the TensorFlow reference framing needs TensorFlow")


def test_edge_stream_equals_offline_keras_model():
    """Same weights: the whole-utterance Keras model (tf.signal framing, sequence LSTMs) and the edge
    block loop driving the per-step Keras submodels agree to 1e-5."""
    from convert.families.dtln import DTLNConfig, DTLNWeights, build_streaming_models, build_training_model
    from convert.verify import keras_denoiser, run_stream, stub_bundle

    w = small_weights(seed=11)
    w = DTLNWeights(DTLNConfig(units=32, encoder_size=64, norm_mag=True),
                    {"mag_norm": [np.ones(257, np.float32), np.zeros(257, np.float32)], **w.arrays})
    x = noise_audio(0.9, seed=12) * np.hanning(14400).astype(np.float32)
    full = build_training_model(w.config, w)
    # The stream starts with block_len - block_shift zeros in its buffer and is flushed at the end:
    # give the offline model the same frames.
    lat = w.config.latency_samples
    padded = np.pad(x, (lat, w.config.block_len))[None, :]
    offline = np.asarray(full(padded, training=False))[0]
    pairs = build_streaming_models(w)
    den = keras_denoiser(stub_bundle(w, [io for _, io in pairs], {}, family="dtln"), pairs, {})
    streamed = run_stream(den, [x])[0]
    np.testing.assert_allclose(streamed, offline[lat:lat + len(x)], atol=1e-5)
    assert np.max(np.abs(streamed)) > 1e-3


def test_numpy_frame_rfft_overlap_add_equals_tf_signal():
    """The framing primitives alone: analysis frames and overlap-add of the edge loop vs tf.signal."""
    from edge.stream import windows

    n, s = 512, 128
    x = noise_audio(0.5, seed=13).astype(np.float64)
    for window in ("none", "sqrt_hann"):
        ana, syn = windows(window, n, s)
        frames_tf = tf.signal.frame(x, n, s).numpy()
        spec_tf = tf.signal.rfft(tf.constant((frames_tf * (1 if ana is None else ana)).astype(np.float32))).numpy()
        inbuf = np.zeros(n)
        specs = []
        for k in range(len(x) // s):
            inbuf[:-s] = inbuf[s:]
            inbuf[-s:] = x[k * s:(k + 1) * s]
            if k >= n // s - 1:
                specs.append(np.fft.rfft(inbuf if ana is None else inbuf * ana))
        np.testing.assert_allclose(np.array(specs)[: len(spec_tf)], spec_tf, atol=1e-4)
        # overlap-add of the inverse transforms reproduces the signal where all frames overlap
        back = np.fft.irfft(np.array(specs), n) * (1 if syn is None else syn)
        ola_tf = tf.signal.overlap_and_add(tf.constant(back), s).numpy()
        outbuf = np.zeros(n)
        ola = []
        for frame in back:
            outbuf[:-s] = outbuf[s:]
            outbuf[-s:] = 0
            outbuf += frame
            ola.append(outbuf[:s].copy())
        ola = np.concatenate(ola)
        np.testing.assert_allclose(ola[: len(ola_tf) - n + s], ola_tf[: len(ola_tf) - n + s], atol=1e-5)
        if window == "sqrt_hann":  # perfect reconstruction away from the edges
            np.testing.assert_allclose(ola_tf[n:-n], x[n:len(ola_tf) - n], atol=1e-5)
