"""convert.release helpers: family detection from the file's contents, pooled SNR between bundles."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from .conftest import EXAMPLE, noise_audio, small_weights

pytest.importorskip("tensorflow", reason="convert needs the [convert] extra (TensorFlow)")


def test_family_is_read_from_the_file_not_its_name(tmp_path):
    from convert.families import dtln, family_of_file, poconet

    dtln.save_weights(small_weights(), str(tmp_path / "poconet_named.h5"))
    poconet.save_weights(poconet.PoCoNetWeights.random(poconet.PoCoNetConfig(), seed=0),
                         str(tmp_path / "dtln_named.h5"))
    assert family_of_file(str(tmp_path / "poconet_named.h5")).name == "dtln"
    assert family_of_file(str(tmp_path / "dtln_named.h5")).name == "poconet"
    (tmp_path / "junk.h5").write_bytes(b"not hdf5")
    assert family_of_file(str(tmp_path / "junk.h5")).name == "dtln"  # the default family; it fails to load, by name


def test_pooled_snr_is_energy_pooled_over_files(small_bundle, tmp_path):
    import edge
    from convert.build import convert
    from convert.release import pooled_snr

    f16 = convert(small_weights(), "float16", str(tmp_path / "f16"), verify_audio=[noise_audio()],
                       verify_names=["noise"])
    f32 = edge.load_bundle(small_bundle)
    x, sr = sf.read(EXAMPLE, dtype="float32")
    parts = (x[: len(x) // 3], 0.1 * x[len(x) // 3:])  # a loud and a quiet file: pooling weights by energy
    files = []
    for k, part in enumerate(parts):
        files.append(tmp_path / f"{k}.wav")
        sf.write(files[-1], part, sr)
    got = pooled_snr({"none": f32, "float16": f16}, files)
    ref = [edge.denoise(p, f32) for p in parts]
    out = [edge.denoise(p, f16) for p in parts]
    want = 10 * np.log10(sum(np.sum(r.astype(np.float64) ** 2) for r in ref)
                         / sum(np.sum((o - r).astype(np.float64) ** 2) for o, r in zip(out, ref, strict=True)))
    assert set(got) == {"float16"}
    assert got["float16"] == pytest.approx(want, abs=0.06)
    assert 50 < got["float16"] < 120  # float16 weights: a real, finite error


def test_level_fix_undoes_a_louder_inverted_decoder():
    from convert.families.dtln import DTLNWeights, leveled, load_weights

    from .conftest import DATA, REFERENCE, need

    need(DATA / "speech" / "dev", "the dev speech (../shared/data)")
    w = load_weights(str(need(REFERENCE / "model.h5", "the published DTLN model.h5")))
    assert leveled(w, dev_count=24)[1] is None  # the published model is level- and polarity-true
    flipped = DTLNWeights(w.config, {**w.arrays, "decoder": [-2 * a for a in w.arrays["decoder"]]})
    fixed, level = leveled(flipped, dev_count=24)
    assert level["inverted"] and level["gain_db"] == pytest.approx(-6.0, abs=0.2)
    np.testing.assert_allclose(fixed.arrays["decoder"][0], w.arrays["decoder"][0], rtol=0.05, atol=1e-4)
