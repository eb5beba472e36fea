"""T-block submodels (``python -m convert.batched``): same output as the per-block path, checked bundles."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import edge
from edge import StreamingDenoiser, denoise
from edge.errors import BundleError

from .conftest import noise_audio, small_weights

pytest.importorskip("tensorflow", reason="the converter needs TensorFlow (pip install .[convert])")

from convert.batched import add_to_bundle, main
from convert.errors import ConvertError, WeightsError
from convert.families.dtln import save_weights

FRAMES = 8
TOL = 1e-5  # float32 verification tolerance (max abs sample difference)


@pytest.fixture(scope="module")
def weights_h5(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("tw") / "small.h5"
    save_weights(small_weights(), str(path))  # the weights small_bundle was converted from
    return str(path)


@pytest.fixture(scope="module")
def tblock_bundle(small_bundle, weights_h5, tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("tblock") / "b"
    shutil.copytree(small_bundle, path)
    add_to_bundle(str(path), weights_h5, FRAMES, [noise_audio(1.3, seed=3)], ["noise"])
    return str(path)


def per_block(bundle: edge.Bundle) -> edge.Bundle:
    return dataclasses.replace(bundle, batched=None)


def test_manifest_describes_the_t_block_graphs(tblock_bundle, small_bundle):
    b = edge.load_bundle(tblock_bundle)
    m = b.manifest["batched"]
    assert m["frames"] == FRAMES and [s["name"] for s in m["submodels"]] == ["mask", "frame"]
    for sm, pb in zip(b.batched.submodels, b.submodels, strict=True):
        assert sm.file == f"{sm.name}_t{FRAMES}.tflite" and sm.states == pb.states
        assert sm.input(sm.data_input).shape[1] == FRAMES
    assert not {"WHILE", "FFT", "RFFT2D"} & {op for s in m["submodels"] for op in s["ops"]}
    v = m["verification"]
    assert v["passed"] is True and v["max_abs_error"] <= v["tolerance_max_abs_error"] == TOL
    # the per-block files are untouched
    orig = edge.load_bundle(small_bundle)
    assert [s.sha256 for s in b.submodels] == [s.sha256 for s in orig.submodels]


def test_file_output_matches_the_per_block_path(tblock_bundle):
    b = edge.load_bundle(tblock_bundle)
    x = noise_audio(2.1, seed=11)
    y_t, y_b = denoise(x, b), denoise(x, per_block(b))
    assert len(y_t) == len(x)
    assert float(np.max(np.abs(y_t - y_b))) <= TOL
    assert np.any(y_t != 0)


@pytest.mark.parametrize("chunk", [1, 127, 128, 1000, 3000, 16000])
def test_any_chunking_matches_the_per_block_path(tblock_bundle, chunk):
    """Calls that hold >= T hops go through T-block graphs, the rest block by block; the states are shared."""
    b = edge.load_bundle(tblock_bundle)
    x = noise_audio(1.7, seed=chunk)
    ref = StreamingDenoiser(per_block(b))
    want = np.concatenate([ref.process(x), ref.flush()])
    den = StreamingDenoiser(b)
    got = np.concatenate([den.process(x[i:i + chunk]) for i in range(0, len(x), chunk)] + [den.flush()])
    assert got.shape == want.shape
    assert float(np.max(np.abs(got - want))) <= TOL


def test_batch_samples(tblock_bundle):
    b = edge.load_bundle(tblock_bundle)
    assert StreamingDenoiser(b).batch_samples == FRAMES * b.block_shift
    assert StreamingDenoiser(per_block(b)).batch_samples == b.block_shift


def test_rerun_replaces_the_section_and_its_files(tblock_bundle, weights_h5, tmp_path, capsys):
    path = tmp_path / "b"
    shutil.copytree(tblock_bundle, path)
    assert main([str(path), "--weights", weights_h5, "--frames", "4", "--quiet",
                 "--verify-audio", str(_wav(tmp_path))]) == 0
    assert capsys.readouterr().out.strip() == str(path)
    b = edge.load_bundle(path)
    assert b.batched.frames == 4
    assert not (path / f"mask_t{FRAMES}.tflite").exists() and (path / "mask_t4.tflite").exists()
    x = noise_audio(0.9, seed=5)
    assert float(np.max(np.abs(denoise(x, b) - denoise(x, per_block(b))))) <= TOL


def _wav(folder) -> str:
    import soundfile as sf

    p = folder / "v.wav"
    sf.write(str(p), noise_audio(0.8, seed=8), 16000)
    return str(p)


def test_wrong_weights_are_refused_and_the_bundle_stays(small_bundle, tmp_path):
    from convert.families.dtln import DTLNConfig, DTLNWeights

    path = tmp_path / "b"
    shutil.copytree(small_bundle, path)
    before = (path / "manifest.json").read_bytes()
    other = tmp_path / "other.h5"
    save_weights(DTLNWeights.random(DTLNConfig(units=16, encoder_size=64)), str(other))
    with pytest.raises(WeightsError, match="units"):
        add_to_bundle(str(path), str(other), FRAMES, [noise_audio(0.5)])
    assert (path / "manifest.json").read_bytes() == before
    assert sorted(p.name for p in path.iterdir()) == sorted(p.name for p in Path(small_bundle).iterdir())


def test_same_shape_other_weights_fail_verification(small_bundle, tmp_path):
    """Weights of the same architecture but not the bundle's: the T-block output differs, nothing is kept."""
    from convert.errors import VerificationError

    path = tmp_path / "b"
    shutil.copytree(small_bundle, path)
    before = (path / "manifest.json").read_bytes()
    other = tmp_path / "seed9.h5"
    save_weights(small_weights(seed=9), str(other))
    with pytest.raises(VerificationError, match="differs from the per-block output"):
        add_to_bundle(str(path), str(other), 4, [noise_audio(0.5)])
    assert (path / "manifest.json").read_bytes() == before
    assert not list(path.glob("*_t4.tflite"))


def test_integer_modes_are_refused(small_bundle, weights_h5, tmp_path):
    path = tmp_path / "b"
    shutil.copytree(small_bundle, path)
    m = json.loads((path / "manifest.json").read_text())
    m["quantization"] = "int8"
    (path / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ConvertError, match="int8 bundle gets no T-block graphs"):
        add_to_bundle(str(path), weights_h5, FRAMES, [noise_audio(0.5)])


def _edited(src: str, dst, edit) -> str:
    shutil.copytree(src, dst)
    m = json.loads((dst / "manifest.json").read_text())
    edit(m)
    (dst / "manifest.json").write_text(json.dumps(m))
    return str(dst)


def test_bad_batched_sections_raise_bundle_errors(tblock_bundle, tmp_path):
    def corrupt(m):
        m["batched"]["submodels"][0]["sha256"] = "0" * 64

    def wrong_frames(m):
        m["batched"]["frames"] = FRAMES + 1

    def renamed(m):
        m["batched"]["submodels"][1]["inputs"][0]["tensor"] = "no_such_tensor"

    def reordered(m):
        m["batched"]["submodels"].reverse()

    cases = [(corrupt, f"mask_t{FRAMES}.tflite: sha256 mismatch"), (wrong_frames, f"with frames {FRAMES + 1}"),
             (renamed, "no_such_tensor"), (reordered, "should be the per-block ones")]
    for k, (edit, words) in enumerate(cases):
        with pytest.raises(BundleError, match=words.replace("(", r"\(")):
            edge.load_bundle(_edited(tblock_bundle, tmp_path / str(k), edit))


def test_cli_jobs_give_the_same_files(tblock_bundle, tmp_path, capsys):
    """--jobs N runs files (or one file's channels) on N threads; every output is what one job writes."""
    import soundfile as sf

    from edge.cli import main as cli

    src = tmp_path / "in"
    src.mkdir()
    rng = np.random.default_rng(1)
    for k, ch in enumerate((1, 2, 3)):
        sf.write(str(src / f"f{k}.wav"), (0.1 * rng.standard_normal((9000 + 1000 * k, ch))).astype(np.float32),
                 16000, subtype="FLOAT")
    outs = {}
    for jobs in (1, 3):
        out = tmp_path / f"out{jobs}"
        assert cli(["denoise", str(src), "-o", str(out), "-m", tblock_bundle, "--jobs", str(jobs)]) == 0
        assert f"{jobs} job" in capsys.readouterr().err
        outs[jobs] = {p.name: sf.read(str(p))[0] for p in sorted((out / "in").iterdir())}
        # one 3-channel file alone: its channels share the threads
        one = tmp_path / f"one{jobs}.wav"
        assert cli(["denoise", str(src / "f2.wav"), "-o", str(one), "-m", tblock_bundle, "-j", str(jobs)]) == 0
        outs[jobs]["one"] = sf.read(str(one))[0]
    assert sorted(outs[1]) == ["f0.wav", "f1.wav", "f2.wav", "one"]
    for name, y in outs[1].items():
        np.testing.assert_array_equal(outs[3][name], y)
    np.testing.assert_array_equal(outs[1]["one"], outs[1]["f2.wav"])
    ref = denoise(sf.read(str(src / "f2.wav"), dtype="float32")[0][:, 2].copy(), tblock_bundle)
    assert float(np.max(np.abs(outs[1]["one"][:, 2] - ref))) <= TOL
    with pytest.raises(SystemExit) as caught:  # refused at parse time, like --threads (edge.cli)
        cli(["denoise", str(src), "-o", str(tmp_path / "x"), "-m", tblock_bundle, "--jobs", "0"])
    assert caught.value.code == 2
    assert "--jobs/-j: expected an integer >= 1, got '0'" in capsys.readouterr().err


def test_poconet_t_block_matches_per_block(tmp_path):
    """The U-Net with its causal caches over T hops per call: same output as block by block."""
    from convert.build import convert
    from convert.families.poconet import save_weights as save_poconet

    from .test_poconet import small_weights as poconet_weights
    from .test_poconet import speechlike

    w = poconet_weights(seed=1)
    h5 = tmp_path / "p.h5"
    save_poconet(w, str(h5))
    path = tmp_path / "p"
    convert(w, "none", str(path), verify_audio=[speechlike(1.0, 5)], verify_names=["speechlike"])
    b = add_to_bundle(str(path), str(h5), 4, [speechlike(0.9, 6)], ["speechlike"])
    assert b.family == "poconet" and b.batched.frames == 4
    assert b.manifest["batched"]["verification"]["passed"] is True
    x = speechlike(1.3, 7)
    ref = StreamingDenoiser(per_block(b))
    want = np.concatenate([ref.process(x), ref.flush()])
    for chunk in (700, len(x)):
        den = StreamingDenoiser(b)
        got = np.concatenate([den.process(x[i:i + chunk]) for i in range(0, len(x), chunk)] + [den.flush()])
        assert float(np.max(np.abs(got - want))) <= TOL
    assert np.any(want != 0)


def test_the_mode_table_says_which_modes_get_t_block_graphs(tmp_path, capsys):
    from convert.__main__ import main as convert_main
    from convert.modes import BATCHED, MODES

    assert BATCHED == ("none", "float16", "dynamic")
    assert all(MODES[n].batched is None for n in MODES if MODES[n].calibrated)
    assert MODES["none"].batched.check({"max_abs_error": 2e-5, "snr_db": 99.0}) == {
        "tolerance_max_abs_error": 1e-5, "passed": False}
    assert MODES["dynamic"].batched.check({"max_abs_error": 0.1, "snr_db": 31.0})["passed"] is True
    assert convert_main(["--quantize", "int8", "--frames", "4", "-o", str(tmp_path / "x"), "-q"]) == 2
    assert "T-block graphs exist for none, float16, dynamic only, not int8" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("name", ["dtln", "poconet"])
def test_family_hooks_keep_the_per_block_names_and_states(name):
    """T-block graphs take the per-block data with a time axis of T, batch-axis graphs every tensor with B rows;
    names, order and states stay the per-block ones (what edge.tblock and edge.batch check at load)."""
    from convert.families import family
    from convert.modes import mode

    from .test_poconet import small_weights as poconet_weights

    fam = family(name)
    w = small_weights() if name == "dtln" else poconet_weights(seed=1)
    plan = fam.plan(w, mode("dynamic"), "w.h5", None)
    m = {"quantization": "dynamic", "converter_options": plan.converter_options}
    per = [io for _, io in plan.pairs]
    tb = [io for _, io in fam.tblock_models(w, m, 3)]
    assert [(io.name, io.data_input, io.data_output, io.states) for io in tb] == \
        [(io.name, io.data_input, io.data_output, io.states) for io in per]
    for t, p in zip(tb, per, strict=True):
        shapes = dict(t.inputs)
        assert shapes[p.data_input] == (1, 3, *dict(p.inputs)[p.data_input][2:])
        assert {n: s for n, s in t.inputs if n != p.data_input} == {n: s for n, s in p.inputs if n != p.data_input}
    bm = [io for _, io in fam.batch_models(w, m, 5)]
    for b, p in zip(bm, per, strict=True):
        assert (b.name, b.states) == (p.name, p.states)
        assert [(n, s) for n, s in b.inputs] == [(n, (5, *s[1:])) for n, s in p.inputs]
        assert [(n, s) for n, s in b.outputs] == [(n, (5, *s[1:])) for n, s in p.outputs]
