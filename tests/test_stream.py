"""StreamingDenoiser: chunk-size invariance, reset, length and alignment, input errors."""

from __future__ import annotations

import numpy as np
import pytest

import edge
from edge import AudioError, StreamingDenoiser, denoise

from .conftest import noise_audio


def _stream(bundle, x, chunk):
    den = StreamingDenoiser(bundle)
    parts = [den.process(x[i:i + chunk]) for i in range(0, len(x), chunk)]
    return np.concatenate(parts + [den.flush()])


def test_chunk_size_invariance(small_bundle):
    x = noise_audio(1.3, seed=3)
    bundle = edge.load_bundle(small_bundle)
    ref = _stream(bundle, x, len(x))
    for chunk in (1, 127, 128, 1000, 16000):
        got = _stream(bundle, x, chunk)
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, ref, err_msg=f"chunk size {chunk}")


def test_process_returns_whole_hops_and_zero_length_is_fine(small_bundle):
    den = StreamingDenoiser(small_bundle)
    assert len(den.process(np.zeros(0, np.float32))) == 0
    assert len(den.process(np.zeros(127, np.float32))) == 0
    assert len(den.process(np.zeros(1, np.float32))) == den.block_shift
    assert len(den.process(np.zeros(300, np.float32))) == 2 * den.block_shift
    tail = den.flush()  # 428 in + 384 latency - 384 already out
    assert len(tail) == 428
    assert den.samples_in == 0  # flush resets


def test_reset_reproduces_bit_for_bit(small_bundle):
    x = noise_audio(0.7, seed=4)
    den = StreamingDenoiser(small_bundle)
    first = np.concatenate([den.process(x), den.flush()])  # flush resets
    second = np.concatenate([den.process(x), den.flush()])
    np.testing.assert_array_equal(first, second)
    den.process(x[:5000])
    den.reset()
    third = np.concatenate([den.process(x), den.flush()])
    np.testing.assert_array_equal(first, third)
    assert np.any(first != 0)


def test_streams_are_independent(small_bundle):
    bundle = edge.load_bundle(small_bundle)
    a, b = StreamingDenoiser(bundle), StreamingDenoiser(bundle)
    x, z = noise_audio(0.5, 5), noise_audio(0.5, 6)
    interleaved = [a.process(x[:3000]), b.process(z), b.process(z), a.process(x[3000:]), a.flush()]
    solo = StreamingDenoiser(bundle)
    ref = np.concatenate([solo.process(x), solo.flush()])
    np.testing.assert_array_equal(np.concatenate([interleaved[0], *interleaved[3:]]), ref)


@pytest.mark.parametrize("n", [0, 1, 127, 128, 383, 384, 385, 16000, 16001])
def test_denoise_keeps_length(small_bundle, n):
    x = noise_audio(1.1, seed=n)[:n]
    y = denoise(x, small_bundle)
    assert len(y) == n and y.dtype == np.float32


def test_impulse_stays_aligned(identity_bundle):
    x = np.zeros(5000, np.float32)
    for pos in (0, 1, 383, 2500, 4999):
        x[:] = 0.0
        x[pos] = 0.5
        y = denoise(x, identity_bundle)
        assert int(np.argmax(np.abs(y))) == pos
        assert abs(y[pos] - 0.5) < 1e-5


def test_pass_through_is_exact_after_delay(identity_bundle):
    x = noise_audio(0.8, seed=9)
    den = StreamingDenoiser(identity_bundle)
    y = np.concatenate([den.process(x), den.flush()])
    assert len(y) == len(x) + den.latency_samples
    np.testing.assert_allclose(y[den.latency_samples:], x, atol=2e-6)
    np.testing.assert_allclose(denoise(x, identity_bundle), x, atol=2e-6)


def test_read_only_facts(small_bundle):
    den = StreamingDenoiser(small_bundle)
    assert (den.sample_rate, den.block_shift, den.latency_samples) == (16000, 128, 384)
    with pytest.raises(AttributeError):
        den.sample_rate = 8000


@pytest.mark.parametrize("bad, words", [
    (np.zeros(100, np.int16), "dtype int16"),
    (np.zeros((2, 480), np.float32), "shape (2, 480)"),
    (np.array([0.0, np.nan], np.float32), "NaN"),
    (np.array([np.inf], np.float64), "NaN or Inf"),
    ([0.0, 0.1], "list"),
])
def test_bad_audio_raises_clear_error(small_bundle, bad, words):
    den = StreamingDenoiser(small_bundle)
    with pytest.raises(AudioError) as exc:
        den.process(bad)
    assert words in str(exc.value)
    with pytest.raises(AudioError):
        denoise(bad, small_bundle)


def test_sample_rate_change_is_refused(small_bundle):
    den = StreamingDenoiser(small_bundle)
    den.process(np.zeros(256, np.float32), sample_rate=16000)
    with pytest.raises(AudioError, match="expected audio at 16000 Hz, got 48000 Hz"):
        den.process(np.zeros(256, np.float32), sample_rate=48000)
