"""``python -m convert.soup``: weight averages of checkpoints of one architecture."""

from __future__ import annotations

import numpy as np
import pytest

from .conftest import small_weights

pytest.importorskip("tensorflow", reason="the converter needs TensorFlow")

from convert.families.dtln import DTLNConfig, DTLNWeights, load_weights, save_weights
from convert.soup import main


def test_the_soup_is_the_weighted_average_and_loads(tmp_path, capsys):
    a, b = small_weights(seed=1), small_weights(seed=2)
    save_weights(a, str(tmp_path / "a.h5"))
    save_weights(b, str(tmp_path / "b.h5"))
    out = tmp_path / "soup.h5"
    assert main([str(tmp_path / "a.h5"), str(tmp_path / "b.h5"), "--mix", "0.25", "0.75", "--out", str(out)]) == 0
    assert "0.25 x" in capsys.readouterr().out
    s = load_weights(str(out))
    assert s.config == a.config
    for name, ws in s.arrays.items():
        for k, w in enumerate(ws):
            want = 0.25 * a.arrays[name][k].astype(np.float64) + 0.75 * b.arrays[name][k].astype(np.float64)
            assert w.dtype == a.arrays[name][k].dtype
            np.testing.assert_allclose(w, want, rtol=1e-6, atol=1e-7, err_msg=name)
    # Equal weights by default; the same checkpoint twice gives itself back.
    assert main([str(tmp_path / "a.h5"), str(tmp_path / "a.h5"), "--out", str(tmp_path / "same.h5")]) == 0
    same = load_weights(str(tmp_path / "same.h5"))
    for name, ws in same.arrays.items():
        for k, w in enumerate(ws):
            np.testing.assert_array_equal(w, a.arrays[name][k])


def test_other_architectures_and_bad_mixes_are_refused(tmp_path, capsys):
    save_weights(small_weights(seed=1), str(tmp_path / "a.h5"))
    save_weights(DTLNWeights.random(DTLNConfig(units=16, encoder_size=64), seed=3), str(tmp_path / "b.h5"))
    assert main([str(tmp_path / "a.h5"), str(tmp_path / "b.h5"), "--out", str(tmp_path / "x.h5")]) == 1
    assert "not the architecture of the first" in capsys.readouterr().err
    assert main([str(tmp_path / "a.h5"), str(tmp_path / "a.h5"), "--mix", "0.5", "0.6",
                 "--out", str(tmp_path / "x.h5")]) == 1
    assert "sum to 1" in capsys.readouterr().err
    assert main([str(tmp_path / "a.h5"), "--out", str(tmp_path / "x.h5")]) == 1
    assert "at least 2 checkpoints" in capsys.readouterr().err
    assert not (tmp_path / "x.h5").exists()
