"""The converter writes a golden pair into every bundle: the mode's tolerance, checksums, a pair that passes."""

from __future__ import annotations

import hashlib

import pytest

from edge.check import GOLDEN, check_bundle

from .conftest import noise_audio, small_weights

pytest.importorskip("tensorflow", reason="the converter needs TensorFlow")

from convert.build import convert_dtln  # noqa: E402


def test_converter_writes_a_golden_pair_that_passes(tmp_path):
    path = tmp_path / "small"
    bundle = convert_dtln(small_weights(), "dynamic", str(path), verify_audio=[noise_audio(2.0)],
                          verify_names=["noise"])
    g = bundle.manifest[GOLDEN]
    assert g["tolerance_snr_db"] == bundle.manifest["verification"]["tolerance_snr_db"] == 30.0
    assert g["source"].startswith("noise ") and g["input"]["shape"] == [16000]
    for k in ("input", "output"):
        assert hashlib.sha256((path / g[k]["file"]).read_bytes()).hexdigest() == g[k]["sha256"]
    assert check_bundle(path)["status"] == "pass"
