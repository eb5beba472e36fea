"""Automatic input level (``Options(auto_level=True)``, ``edge.level``): the gain it applies, and that every path
(hop by hop, any chunk size, T-block calls, batched streams, the CLI) gives the same output with it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf

import edge
from edge.batch import BatchEngine
from edge.bundle import runtime_listed
from edge.cli import main
from edge.interpreter import interpreter_package
from edge.level import FALL_S, GATE_DBFS, MAX_BOOST_DB, RISE_S, TARGET_DBFS, AutoLevel
from edge.options import Options
from edge.stream import AlignedStream, StreamingDenoiser

from .conftest import REPO, need, noise_audio

AUTO = Options(auto_level=True)
RATE, HOP = 16000, 128


def tone(level_dbfs: float, hops: int) -> np.ndarray:
    """A 500 Hz sine (four periods a hop, so every hop has the same power) at ``level_dbfs`` power."""
    t = np.arange(hops * HOP) / RATE
    return (np.sqrt(2 * 10 ** (level_dbfs / 10)) * np.sin(2 * np.pi * 500 * t)).astype(np.float32)


def gains_db(level: AutoLevel, x: np.ndarray) -> np.ndarray:
    """(hops, rows) gains in dB for rows of audio ``x`` (rows, samples) fed hop by hop."""
    return np.array([20 * np.log10(level.gains(slice(None), x[:, i:i + HOP])) for i in range(0, x.shape[1], HOP)])


def test_gain_makes_up_a_quiet_level_up_to_its_limit_and_leaves_loud_and_silent_input_alone():
    x = np.stack([tone(-50, 50), tone(-65, 50), tone(-20, 50), tone(-80, 50), np.zeros(50 * HOP, np.float32)])
    g = gains_db(AutoLevel(5, HOP, RATE), x)
    np.testing.assert_allclose(g[:, 0], TARGET_DBFS + 50, atol=1e-3)  # from the first hop: the tone is steady
    np.testing.assert_allclose(g[:, 1], MAX_BOOST_DB, atol=1e-9)  # 39 dB short of the target: capped
    assert (g[:, 2:] == 0.0).all()  # at the training level, below the gate (-80 < GATE_DBFS), digital silence
    assert GATE_DBFS > -80


def test_gain_falls_fast_when_the_input_gets_louder_and_rises_slowly_after():
    """The level estimate follows ``RISE_S`` up and ``FALL_S`` down (one-pole on power, one step a hop)."""
    x = np.concatenate([tone(-50, 100), tone(-20, 100), tone(-50, 4000)])[None]
    g = gains_db(AutoLevel(1, HOP, RATE), x)[:, 0]
    k = np.arange(1, 101)
    louder = 1e-2 + (1e-5 - 1e-2) * np.exp(-k * HOP / RATE / RISE_S)
    np.testing.assert_allclose(g[100:200], np.clip(TARGET_DBFS - 10 * np.log10(louder), 0, None), atol=1e-6)
    assert g[125] < 1.0  # a fifth of a second after the input got 30 dB louder, the boost is (nearly) gone
    k = np.arange(1, 4001)
    quieter = 1e-5 + (louder[-1] - 1e-5) * np.exp(-k * HOP / RATE / FALL_S)
    np.testing.assert_allclose(g[200:], np.clip(TARGET_DBFS - 10 * np.log10(quieter), 0, None), atol=1e-6)
    assert g[200 + RATE // HOP * 2] == 0.0 and g[-1] > 23  # quieter again: no boost for seconds, then all of it


def test_reset_forgets_the_level():
    lv = AutoLevel(2, HOP, RATE)
    gains_db(lv, np.stack([tone(-50, 10), tone(-40, 10)]))
    lv.reset(0)
    assert lv.power[0] == 0.0 and lv.power[1] > 0.0
    assert gains_db(lv, np.stack([tone(-20, 1), tone(-40, 1)]))[0, 0] == 0.0


def quiet_speech_like(seconds: float, seed: int) -> np.ndarray:
    """Noise bursts and pauses around -45 dBFS: the gain moves up and down."""
    x = noise_audio(seconds, seed) * np.float32(0.05)
    env = (np.sin(2 * np.pi * 1.3 * np.arange(len(x)) / RATE) > -0.3).astype(np.float32)
    return x * (0.1 + env)


def test_same_output_for_every_chunk_size_and_through_t_block_calls():
    """Hop by hop, bit for bit the same output for any chunk size; the shipped dynamic bundle's T-block calls (whole
    T hops per call) within 1e-6 of it (its dynamic-range graphs round boosted input a hair differently per call
    shape: ~1e-10 here, where the per-block and T-block outputs of input at its own level are identical)."""
    path = need(REPO / "pretrained_model" / "dtln-published" / "dynamic", "the shipped bundle")
    pkg = interpreter_package()
    if not runtime_listed(json.loads((path / "manifest.json").read_text())["runtimes"], pkg.name, pkg.version):
        pytest.skip(f"dtln-published/dynamic: its manifest does not list {pkg.name} {pkg.version} (the shipped "
                    "bundles with T-block graphs are dynamic)")
    bundle = edge.load_bundle(path)
    x = quiet_speech_like(2.3, 5)
    den = StreamingDenoiser(bundle, AUTO)
    assert den.batch_samples > 1000  # this bundle has T-block graphs: chunk 16000 and the whole signal use them

    def run(chunk: int, stream: AlignedStream | None = None) -> np.ndarray:
        st = stream or AlignedStream(bundle, AUTO)
        return np.concatenate([st.process(x[i:i + chunk]) for i in range(0, len(x), chunk)] + [st.flush()])

    hop_by_hop = run(1)
    for chunk in (127, 128, 1000):
        assert np.array_equal(run(chunk), hop_by_hop), f"chunk {chunk}"
    for got in (run(16000), edge.denoise(x, bundle, AUTO)):
        np.testing.assert_allclose(got, hop_by_hop, atol=1e-6, rtol=0)
    assert np.abs(hop_by_hop - edge.denoise(x, bundle)).max() > 1e-4  # the gain did something here
    st = AlignedStream(bundle, AUTO)  # and reset() starts a new stream: the same output again
    st.process(quiet_speech_like(0.7, 9))
    st.reset()
    assert np.array_equal(run(128, st), hop_by_hop)


def test_input_at_the_training_level_is_not_touched(small_bundle):
    x = noise_audio(1.5, 3)  # -20 dBFS, steady: the level estimate never falls below the target
    assert np.array_equal(edge.denoise(x, small_bundle, AUTO), edge.denoise(x, small_bundle))


def test_a_pass_through_model_gives_its_input_back_whatever_the_gain(identity_bundle):
    x = np.concatenate([quiet_speech_like(1.0, 2), noise_audio(0.5, 3), quiet_speech_like(1.0, 4) * 0.1])
    y = edge.denoise(x, identity_bundle, AUTO)
    assert np.abs(y - edge.denoise(x, identity_bundle)).max() > 0  # the gain changed the model's input
    np.testing.assert_allclose(y, x, atol=2e-6)


def test_batched_streams_match_each_stream_alone(batched_bundle):
    b = edge.load_bundle(batched_bundle)
    eng = BatchEngine(b, AUTO)
    xs = [quiet_speech_like(1.1, 11), noise_audio(0.9, 12), quiet_speech_like(0.8, 13) * 0.03]
    slots = [eng.open() for _ in xs]
    got: dict[int, list] = {k: [] for k in slots}
    for i in range(0, max(map(len, xs)), 300):
        out = eng.process({k: x[i:i + 300] for k, x in zip(slots, xs, strict=True) if i < len(x)})
        for k, y in out.items():
            got[k].append(y)
    for k, x in zip(slots, xs, strict=True):
        y = np.concatenate(got[k] + [eng.flush(k)])
        np.testing.assert_allclose(y, edge.denoise(x, b, AUTO), atol=1e-5, rtol=0)
    assert np.abs(edge.denoise(xs[0], b, AUTO) - edge.denoise(xs[0], b)).max() > 1e-4  # 10x the tolerance


def test_cli_option_reaches_the_stream(small_bundle, tmp_path):
    x = quiet_speech_like(1.2, 7)
    sf.write(tmp_path / "q.wav", x, RATE, subtype="FLOAT")
    outs = []
    for flag, options in (("--auto-level", AUTO), ("--no-auto-level", Options())):
        out = tmp_path / f"o{flag}.wav"
        assert main(["denoise", "--model", small_bundle, str(tmp_path / "q.wav"), "-o", str(out), "-q", flag]) == 0
        y, _ = sf.read(out, dtype="float32")
        assert np.array_equal(y, np.clip(edge.denoise(x, small_bundle, options), -1, 1)), flag
        outs.append(y)
    assert np.abs(outs[0] - outs[1]).max() > 1e-4  # the flag changed the output (-45 dBFS input: boosted)
