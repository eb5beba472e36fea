"""PoCoNet-style U-Net: the tflite bundle streamed through edge equals the whole-utterance Keras model."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

import edge
from edge import StreamingDenoiser

from .conftest import EXAMPLE, REPO, noise_audio

pytest.importorskip("tensorflow", reason="the converter needs TensorFlow")

import h5py  # noqa: E402 (after the skip: h5py comes with the [convert] extra)

from convert.__main__ import main as convert_main  # noqa: E402
from convert.build import convert_poconet  # noqa: E402
from convert.errors import VerificationError, WeightsError  # noqa: E402
from convert.export import op_names  # noqa: E402
from convert.poconet import (PoCoNetConfig, PoCoNetWeights, budget, build_streaming_model,  # noqa: E402
                             build_training_model, load_weights, save_weights)

SMALL = PoCoNetConfig(channels=(4, 6, 8), gru_units=16, pos_channels=2)


def small_weights(seed: int = 0) -> PoCoNetWeights:
    return PoCoNetWeights.random(SMALL, seed=seed)


def speechlike(seconds: float = 1.5, seed: int = 0) -> np.ndarray:
    """Louder than the noise fixture and not white: a harmonic sweep with noise bursts."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(16000 * seconds)) / 16000
    f0 = 120 + 60 * np.sin(2 * np.pi * 1.3 * t)
    x = sum(np.sin(2 * np.pi * k * np.cumsum(f0) / 16000) / k for k in range(1, 12))
    x = 0.3 * x * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t) ** 2) + 0.05 * rng.standard_normal(len(t))
    return (x / np.max(np.abs(x)) * 0.8).astype(np.float32)


@pytest.fixture(scope="module")
def weights() -> PoCoNetWeights:
    return small_weights(seed=1)


@pytest.fixture(scope="module")
def bundle(weights, tmp_path_factory) -> edge.Bundle:
    path = tmp_path_factory.mktemp("poconet") / "small-none"
    return convert_poconet(weights, "none", str(path), verify_audio=[noise_audio(), speechlike(1.0, 5)],
                           verify_names=["noise", "speechlike"])


def test_stream_equals_whole_utterance_model(weights, bundle):
    offline = build_training_model(weights.config, weights)
    for x in (speechlike(), noise_audio(0.77, seed=2), speechlike(0.01, 3)):
        # The offline model frames exactly as the stream does: block_len - block_shift zeros in front,
        # zeros at the end until every frame touching an input sample exists, output delay compensated.
        want = np.asarray(offline(x[None], training=False))[0]
        got = edge.denoise(x, bundle)
        assert got.shape == want.shape == x.shape
        assert np.max(np.abs(got - want)) <= 1e-4, np.max(np.abs(got - want))
        assert np.max(np.abs(want)) > 0.05  # a real signal, not two silences agreeing
    v = bundle.manifest["verification"]
    assert v["passed"] and v["snr_db"] >= 80 and v["offline"]["max_abs_error"] <= 1e-4


def test_manifest_states_pair_and_graph_has_no_fft_or_loops(bundle):
    m = bundle.manifest
    assert m["family"] == "poconet" and m["window"] == "sqrt_hann" and m["latency_samples"] == 384
    (sm,) = m["submodels"]
    ins = {t["name"] for t in sm["inputs"]}
    outs = {t["name"] for t in sm["outputs"]}
    assert sm["data_input"] == "feat" and sm["data_output"] == "mask"
    assert set(sm["states"]) == ins - {"feat"}
    for s_in, s_out in sm["states"].items():
        assert s_out == f"{s_in}_out" and s_out in outs
    assert outs == {"mask"} | set(sm["states"].values())
    assert "gru_state" in sm["states"] and any(n.endswith("_cache") for n in sm["states"])
    with open(f"{bundle.path}/{sm['file']}", "rb") as f:
        ops = op_names(f.read())
    assert not {"WHILE", "FFT", "RFFT2D", "VAR_HANDLE", "READ_VARIABLE"} & set(ops), ops
    assert "CONV_2D" in ops


def test_chunk_size_invariance(bundle):
    x = speechlike(1.3, seed=4)

    def run(chunk):
        den = StreamingDenoiser(bundle)
        return np.concatenate([den.process(x[i:i + chunk]) for i in range(0, len(x), chunk)] + [den.flush()])

    ref = run(len(x))
    for chunk in (1, 127, 128, 1000, 16000):
        np.testing.assert_array_equal(run(chunk), ref, err_msg=f"chunk size {chunk}")
    den = StreamingDenoiser(bundle)
    den.process(x[:3000])
    den.reset()
    np.testing.assert_array_equal(np.concatenate([den.process(x), den.flush()]), ref)


def test_multi_frame_patch_model_equals_one_hop(weights):
    """The patch form (several hops per call) carries the same states: same output as hop by hop."""
    import tensorflow as tf

    rng = np.random.default_rng(0)
    feats = rng.standard_normal((1, 6, SMALL.bins, 2)).astype(np.float32)
    outs = {}
    for frames in (1, 3):
        model, io = build_streaming_model(weights, frames)
        states = {n: np.zeros(s, np.float32) for n, s in io.inputs if n != "feat"}
        got = []
        for k in range(0, 6, frames):
            feed = {"feat": feats[:, k:k + frames], **states}
            out = model({n: tf.constant(v) for n, v in feed.items()}, training=False)
            states = {s_in: np.asarray(out[s_out]) for s_in, s_out in io.states}
            got.append(np.asarray(out["mask"]))
        outs[frames] = np.concatenate(got, axis=1)
    np.testing.assert_allclose(outs[3], outs[1], atol=1e-5)


def test_default_model_is_within_the_edge_budget():
    cfg = PoCoNetConfig()
    fig = budget(cfg)
    assert fig["parameters"] <= 2_000_000
    assert fig["macs_per_second"] <= 1e9
    assert fig["macs_per_second"] == fig["macs_per_frame"] * 16000 / cfg.block_shift
    assert build_training_model(cfg).count_params() == fig["parameters"]  # the analytic count is the model's
    assert budget(SMALL)["parameters"] == build_training_model(SMALL).count_params()


@pytest.mark.parametrize("mode, tolerance", [("float16", 60), ("dynamic", 30), ("int16x8", 30)])
def test_quantised_modes_pass_verification(weights, tmp_path, mode, tolerance):
    b = convert_poconet(weights, mode, str(tmp_path / mode), verify_audio=[speechlike(1.0, 6)],
                        verify_names=["speechlike"])
    v = b.manifest["verification"]
    assert b.quantization == mode and v["passed"] and v["snr_db"] >= tolerance
    y = edge.denoise(speechlike(0.5, 7), b)
    assert len(y) == 8000 and np.isfinite(y).all()


def test_calibration_records_every_block_not_the_last_one_again(weights):
    # the family step fills one feature buffer in place every block: a record must copy it, or the whole
    # calibration set is the last block's features (it was, until 2026-12-01) and int8/int16x8 ranges miss
    from convert.build import _calibration, _poconet_plan

    plan = _poconet_plan(weights, "int8", "")
    (_, io), = plan.pairs
    x = speechlike(0.5, 3)
    recs = _calibration(weights, plan.pairs, [io], plan.family_options, [x], 1000, family=plan.family,
                        window=plan.window)[io.name]
    feats = np.stack([r[io.data_input] for r in recs])
    assert len(recs) >= len(x) // 128 and np.isfinite(feats).all()  # and the flush blocks
    distinct = {f.tobytes() for f in feats}
    assert len(distinct) > 0.9 * len(feats)
    assert not np.shares_memory(recs[0][io.data_input], recs[1][io.data_input])


def test_int8_meets_its_tolerance_or_is_refused(weights, tmp_path):
    try:
        b = convert_poconet(weights, "int8", str(tmp_path / "b"), verify_audio=[speechlike(1.0, 8)],
                            verify_names=["speechlike"], calib_audio=[speechlike(2.0, 9), noise_audio(1.0, 9)])
    except VerificationError as exc:
        assert "float16" in str(exc) and not (tmp_path / "b").exists()
    else:
        assert b.manifest["verification"]["snr_db"] >= 25
        from edge.interpreter import make_interpreter

        it = make_interpreter(b.submodels[0].content)
        details = {d["index"]: d for d in it.get_tensor_details()}
        convs = [op for op in it._get_ops_details() if op["op_name"] in ("CONV_2D", "FULLY_CONNECTED")]  # noqa: SLF001
        assert convs
        for op in convs:  # 'int8' never silently means float kernels
            for t in list(op["inputs"][:2]) + list(op["outputs"]):
                assert details[t]["dtype"] == np.int8, (op["op_name"], details[t]["name"])


@pytest.fixture(scope="module")
def small_h5(weights, tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("w") / "poconet.h5"
    save_weights(weights, str(path))
    return str(path)


def test_weights_round_trip(weights, small_h5):
    back = load_weights(small_h5)
    assert back.config == weights.config
    assert set(back.arrays) == set(weights.arrays)
    for k, ws in weights.arrays.items():
        for a, b in zip(ws, back.arrays[k]):
            np.testing.assert_array_equal(a, b)


def test_cli_round_trip(small_h5, tmp_path, capsys):
    out = tmp_path / "b"
    assert convert_main(["--family", "poconet", "--weights", small_h5, "--quantize", "float16",
                         "--output", str(out), "--verify-audio", str(EXAMPLE), "-q"]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    b = edge.load_bundle(out)
    assert b.family == "poconet" and b.quantization == "float16"
    assert b.manifest["model"]["parameters"] == budget(SMALL)["parameters"]


def test_weights_errors_name_the_problem(small_h5, tmp_path, capsys):
    assert convert_main(["--family", "poconet", "--weights", str(tmp_path / "nope.h5"),
                         "--output", str(tmp_path / "o")]) == 2
    assert "nope.h5: no such weights file" in capsys.readouterr().err
    bad = tmp_path / "shape.h5"
    import shutil

    shutil.copy(small_h5, bad)
    with h5py.File(bad, "r+") as f:
        del f["enc1_conv0"]["0"]
        f["enc1_conv0"].create_dataset("0", data=np.zeros((3, 3), np.float32))
    with pytest.raises(WeightsError, match=r"layer 'enc1_conv0' has weight shapes \[\(3, 3\), \(6,\)\], expected"):
        load_weights(str(bad))
    assert convert_main(["--family", "poconet", "--weights", str(bad), "--output", str(tmp_path / "o")]) == 2
    assert "enc1_conv0" in capsys.readouterr().err and not (tmp_path / "o").exists()
    dtln = tmp_path / "dtln.h5"
    from convert.dtln import save_weights as save_dtln

    from .conftest import small_weights as small_dtln

    save_dtln(small_dtln(), str(dtln))
    with pytest.raises(WeightsError, match="not a PoCoNet weights file"):
        load_weights(str(dtln))


def test_runtime_family_never_imports_tensorflow(bundle):
    code = ("import sys, numpy as np, edge; "
            f"y = edge.denoise(np.zeros(1000, np.float32), {bundle.path!r}); "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras', 'convert')]; "
            "assert 'edge.families.poconet' in sys.modules and not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def test_training_cli_learns_and_resumes(tmp_path):
    from convert.train import main as train_main

    clean, sr = sf.read(EXAMPLE.parent / "p232_013_clean.wav", dtype="float32")
    rng = np.random.default_rng(0)
    root = tmp_path / "data"
    for split in ("train", "dev"):
        (root / "speech" / split).mkdir(parents=True)
        (root / "noise" / split).mkdir(parents=True)
        sf.write(root / "speech" / split / "a.wav", clean, sr)
        sf.write(root / "noise" / split / "n.wav", rng.standard_normal(40000).astype("float32") * 0.1, sr)
    cfg = tmp_path / "small.json"
    cfg.write_text(json.dumps({"channels": list(SMALL.channels), "gru_units": 16, "pos_channels": 2}))
    out = tmp_path / "run"
    args = ["--family", "poconet", "--out", str(out), "--data", str(root), "--batch", "2", "--segment", "0.5",
            "--steps-per-epoch", "2", "--dev-count", "2", "--threads", "1"]
    assert train_main([*args, "--model-config", str(cfg), "--epochs", "1"]) == 0
    assert load_weights(str(out / "best.h5")).config == SMALL
    assert train_main([*args, "--epochs", "2", "--resume"]) == 0
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log if r["event"] == "epoch"] == [1, 2]
    assert any(r["event"] == "resume" for r in log)
    assert train_main([*args, "--resume", "--epochs", "3", "--family", "dtln"][2:]) == 2  # family mismatch
