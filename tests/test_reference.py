"""Against the published DTLN (../shared/reference/dtln): our converter and runtime reproduce it."""

from __future__ import annotations

import numpy as np
import pytest

import edge
from edge import StreamingDenoiser

from .conftest import DATA, EXAMPLE, REFERENCE, need

pytest.importorskip("tensorflow", reason="the converter needs TensorFlow")


def _test_audio() -> np.ndarray:
    from convert.data import load_files

    path = DATA / "test" / "vbd_test" / "noisy" / "p232_003.wav"
    return load_files([path if path.exists() else EXAMPLE])[0]


def published_loop(model_1: str, model_2: str, audio: np.ndarray) -> np.ndarray:
    """The published real_time_processing_tf_lite.py loop, tensors addressed by role, not index."""
    from ai_edge_litert.interpreter import Interpreter

    def roles(it):
        ins, outs = it.get_input_details(), it.get_output_details()
        data_in = next(d["index"] for d in ins if len(d["shape"]) == 3)
        state_in = next(d["index"] for d in ins if len(d["shape"]) == 4)
        data_out = next(d["index"] for d in outs if len(d["shape"]) == 3)
        state_out = next(d["index"] for d in outs if len(d["shape"]) == 4)
        return data_in, state_in, data_out, state_out

    i1, i2 = Interpreter(model_path=model_1), Interpreter(model_path=model_2)
    i1.allocate_tensors()
    i2.allocate_tensors()
    r1, r2 = roles(i1), roles(i2)
    states_1 = np.zeros(i1.get_input_details()[[d["index"] for d in i1.get_input_details()].index(r1[1])]["shape"],
                        np.float32)
    states_2 = np.zeros_like(states_1)
    block_len, block_shift = 512, 128
    out_file = np.zeros(len(audio))
    in_buffer = np.zeros(block_len)
    out_buffer = np.zeros(block_len)
    for idx in range((len(audio) - (block_len - block_shift)) // block_shift):
        in_buffer[:-block_shift] = in_buffer[block_shift:]
        in_buffer[-block_shift:] = audio[idx * block_shift:(idx * block_shift) + block_shift]
        in_block_fft = np.fft.rfft(in_buffer)
        in_mag = np.abs(in_block_fft)
        in_phase = np.angle(in_block_fft)
        i1.set_tensor(r1[1], states_1)
        i1.set_tensor(r1[0], np.reshape(in_mag, (1, 1, -1)).astype("float32"))
        i1.invoke()
        out_mask = i1.get_tensor(r1[2])
        states_1 = i1.get_tensor(r1[3])
        estimated_block = np.fft.irfft(in_mag * out_mask * np.exp(1j * in_phase))
        i2.set_tensor(r2[1], states_2)
        i2.set_tensor(r2[0], np.reshape(estimated_block, (1, 1, -1)).astype("float32"))
        i2.invoke()
        out_block = i2.get_tensor(r2[2])
        states_2 = i2.get_tensor(r2[3])
        out_buffer[:-block_shift] = out_buffer[block_shift:]
        out_buffer[-block_shift:] = np.zeros(block_shift)
        out_buffer += np.squeeze(out_block)
        out_file[idx * block_shift:(idx * block_shift) + block_shift] = out_buffer[:block_shift]
    return out_file


@pytest.fixture(scope="module")
def published_bundles(tmp_path_factory):
    need(REFERENCE / "model_1.tflite", "the published DTLN files")
    from convert.published import wrap_published

    base = tmp_path_factory.mktemp("published")
    return {q: wrap_published(str(REFERENCE / f"model{s}_1.tflite"), str(REFERENCE / f"model{s}_2.tflite"),
                              str(base / q), quantization=q) for q, s in (("none", ""), ("dynamic", "_quant"))}


@pytest.fixture(scope="module")
def our_float_bundle(tmp_path_factory):
    need(REFERENCE / "model.h5", "the published DTLN model.h5")
    from convert.build import convert
    from convert.data import load_files
    from convert.families.dtln import load_weights

    path = tmp_path_factory.mktemp("ours") / "model-h5-none"
    return convert(load_weights(str(REFERENCE / "model.h5")), "none", str(path),
                        verify_audio=load_files([EXAMPLE]), verify_names=[EXAMPLE.name])


@pytest.mark.parametrize("quant", ["none", "dynamic"])
def test_edge_drives_published_files_like_the_published_loop(published_bundles, quant):
    suffix = "" if quant == "none" else "_quant"
    x = _test_audio()
    ref = published_loop(str(REFERENCE / f"model{suffix}_1.tflite"), str(REFERENCE / f"model{suffix}_2.tflite"), x)
    y = edge.denoise(x, published_bundles[quant])
    # The published loop delays by 384 samples and drops the tail; compare where it has output.
    n = len(ref) - 384 - 512
    np.testing.assert_allclose(y[:n], ref[384:384 + n], atol=1e-5 if quant == "none" else 1e-4)
    assert np.max(np.abs(ref)) > 0.01


def test_our_float_bundle_matches_published_files_per_block(published_bundles, our_float_bundle):
    x = _test_audio()
    ours, theirs = StreamingDenoiser(our_float_bundle), StreamingDenoiser(published_bundles["none"])
    worst = 0.0
    for i in range(0, len(x) - 128, 128):  # one block per call: compare every block
        a, b = ours.process(x[i:i + 128]), theirs.process(x[i:i + 128])
        worst = max(worst, float(np.max(np.abs(a - b))))
    assert worst <= 1e-6, f"max abs diff per block {worst:.3g}"
    v = our_float_bundle.manifest["verification"]
    assert v["passed"] and v["snr_db"] >= 80


def test_norm_variant_converts_and_matches_its_reference(tmp_path):
    need(REFERENCE / "DTLN_norm_500h.h5", "the published DTLN_norm_500h.h5")
    from convert.build import convert
    from convert.data import load_files
    from convert.families.dtln import load_weights

    w = load_weights(str(REFERENCE / "DTLN_norm_500h.h5"))
    assert w.config.norm_mag  # told apart by content
    assert not load_weights(str(REFERENCE / "model.h5")).config.norm_mag
    b = convert(w, "none", str(tmp_path / "norm"), verify_audio=load_files([EXAMPLE]),
                     verify_names=[EXAMPLE.name])
    v = b.manifest["verification"]
    assert v["passed"] and v["snr_db"] >= 80 and v["max_abs_error"] <= 1e-5


@pytest.mark.parametrize("mode, floor", [("float16", 60.0), ("dynamic", 30.0), ("int16x8", 30.0)])
def test_quantised_modes_meet_tolerance_on_published_weights(tmp_path, mode, floor):
    need(REFERENCE / "model.h5", "the published DTLN model.h5")
    from convert.build import convert
    from convert.data import load_files
    from convert.families.dtln import load_weights

    audio = load_files([EXAMPLE])
    b = convert(load_weights(str(REFERENCE / "model.h5")), mode, str(tmp_path / mode),
                     verify_audio=audio, verify_names=[EXAMPLE.name], calib_audio=audio)
    v = b.manifest["verification"]
    assert v["snr_db"] >= floor and v["passed"]
    assert b.quantization == mode
