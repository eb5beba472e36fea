"""The bundles committed under pretrained_model/: each loads (checksums, tensors), runs and keeps its word."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf

import edge
from edge.bundle import runtime_listed
from edge.interpreter import interpreter_package, make_interpreter
from edge.models import DEFAULT_BUNDLES

from .conftest import EXAMPLE, REPO

BUNDLES = sorted(p.parent for p in (REPO / "pretrained_model").glob("*/*/manifest.json"))
ids = [f"{p.parent.name}/{p.name}" for p in BUNDLES]


def test_there_are_shipped_bundles():
    assert BUNDLES, "pretrained_model/ holds no bundle"
    for rel in DEFAULT_BUNDLES:  # what the wheel carries; the first is edge-denoise's default
        assert (REPO / rel / "manifest.json").is_file(), rel


def runs_here(path):
    """Skip, saying why, a bundle whose manifest does not list the interpreter installed here."""
    pkg = interpreter_package()
    if not runtime_listed(json.loads((path / "manifest.json").read_text())["runtimes"], pkg.name, pkg.version):
        pytest.skip(f"{path.parent.name}/{path.name}: its manifest does not list {pkg.name} {pkg.version} "
                    "(the runtime refuses it: tests/test_bundle.py)")
    return path


@pytest.mark.parametrize("path", BUNDLES, ids=ids)
def test_bundle_loads_runs_and_passed_its_verification(path):
    bundle = edge.load_bundle(runs_here(path))
    assert bundle.manifest["verification"]["passed"] is True
    assert bundle.manifest["verification"]["snr_db"] >= bundle.manifest["verification"]["tolerance_snr_db"]
    x, sr = sf.read(EXAMPLE, dtype="float32")
    assert sr == bundle.sample_rate
    y = edge.denoise(x, bundle)
    assert len(y) == len(x) and np.isfinite(y).all()
    # it suppresses something and keeps the speech: neither silence nor louder than the noisy input
    assert 0.05 < np.sqrt(np.mean(y ** 2)) / np.sqrt(np.mean(x ** 2)) < 1.0
    assert np.dot(x, y) > 0.3 * np.sqrt(np.dot(x, x) * np.dot(y, y))  # polarity kept (SI-SDR training is blind to it)


@pytest.mark.parametrize("path", [p for p in BUNDLES if p.name == "int8"], ids=[i for i in ids if i.endswith("/int8")])
def test_shipped_int8_runs_int8_through_every_fully_connected(path):
    """'int8' must never silently mean dynamic range: every FULLY_CONNECTED reads and writes int8."""
    manifest = json.loads((runs_here(path) / "manifest.json").read_text())
    assert manifest["quantization"] == "int8"
    for sub in manifest["submodels"]:
        it = make_interpreter((path / sub["file"]).read_bytes())
        details = {d["index"]: d for d in it.get_tensor_details()}
        fcs = [op for op in it._get_ops_details() if op["op_name"] == "FULLY_CONNECTED"]  # noqa: SLF001
        assert fcs, sub["file"]
        for op in fcs:
            for t in list(op["inputs"][:2]) + list(op["outputs"]):
                assert details[t]["dtype"] == np.int8, (sub["file"], details[t]["name"], details[t]["dtype"])
