"""The committed fixture bundles (tests/fixtures/) still compute what the converter makes from their weights."""

from __future__ import annotations

import json

import numpy as np
import pytest

import edge

from .conftest import COMMITTED, FIXTURES, build_fixture, noise_audio

pytest.importorskip("tensorflow", reason="the converter needs TensorFlow")


@pytest.mark.parametrize("name", sorted(n for n, p in COMMITTED.items() if p.parent == FIXTURES))
def test_committed_fixture_matches_a_fresh_conversion(name, tmp_path):
    build_fixture(name, tmp_path / name)
    fresh, old = (json.loads((p / "manifest.json").read_text()) for p in (tmp_path / name, FIXTURES / name))
    assert sorted(fresh) == sorted(old), "manifest keys changed: python -m tests.make_fixtures"
    assert [s["inputs"] for s in fresh["submodels"]] == [s["inputs"] for s in old["submodels"]]
    x = noise_audio(0.5, seed=11)
    a, b = edge.denoise(x, str(tmp_path / name)), edge.denoise(x, str(FIXTURES / name))
    np.testing.assert_allclose(a, b, atol=1e-5, err_msg="rebuild the fixtures: python -m tests.make_fixtures")
