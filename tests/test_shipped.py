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
        fcs = [op for op in it._get_ops_details() if op["op_name"] == "FULLY_CONNECTED"]
        assert fcs, sub["file"]
        for op in fcs:
            for t in list(op["inputs"][:2]) + list(op["outputs"]):
                assert details[t]["dtype"] == np.int8, (sub["file"], details[t]["name"], details[t]["dtype"])


WITH_TBLOCK = [p for p in BUNDLES if "batched" in json.loads((p / "manifest.json").read_text())]
WITH_STREAMS = [p for p in BUNDLES if "streams" in json.loads((p / "manifest.json").read_text())]


@pytest.mark.parametrize("path", WITH_TBLOCK, ids=[f"{p.parent.name}/{p.name}" for p in WITH_TBLOCK])
def test_shipped_tblock_graphs_match_the_per_block_path(path):
    """Runtime-only installs run the T-block path of the shipped bundles that carry it: same samples as the
    per-block path within what their verification recorded."""
    import dataclasses

    bundle = edge.load_bundle(runs_here(path))
    x, _ = sf.read(EXAMPLE, dtype="float32")
    tb, pb = edge.denoise(x, bundle), edge.denoise(x, dataclasses.replace(bundle, batched=None))
    v = bundle.manifest["batched"]["verification"]
    err = float(np.max(np.abs(tb - pb)))
    snr = 10 * np.log10(np.sum(pb.astype(np.float64) ** 2) / max(np.sum((tb - pb).astype(np.float64) ** 2), 1e-30))
    assert err <= max(v["max_abs_error"] * 2, 1e-6) or snr >= v["tolerance_snr_db"], (err, snr)


@pytest.mark.parametrize("path", WITH_STREAMS, ids=[f"{p.parent.name}/{p.name}" for p in WITH_STREAMS])
def test_shipped_batch_graphs_run_streams_as_alone(path):
    """Three streams of the example, started at different offsets, through one engine of the shipped batch
    graphs: each within what the bundle's streams verification recorded of it run alone."""
    from edge.batch import BatchEngine

    bundle = edge.load_bundle(runs_here(path))
    x, _ = sf.read(EXAMPLE, dtype="float32")
    xs = [x, x[4000:], x[:20000]]
    eng = BatchEngine(bundle, capacity=8)
    slots = [eng.open() for _ in xs]
    got = {s: [] for s in slots}
    for pos in range(0, len(x), 640):
        for s, y in eng.process({s: a[pos:pos + 640] for s, a in zip(slots, xs, strict=True) if pos < len(a)}).items():
            got[s].append(y)
    v = bundle.manifest["streams"]["verification"]
    for s, a in zip(slots, xs, strict=True):
        y, want = np.concatenate(got[s] + [eng.flush(s)]), edge.denoise(a, bundle)
        assert y.shape == want.shape
        err = float(np.max(np.abs(y - want)))
        snr = 10 * np.log10(np.sum(want.astype(np.float64) ** 2) / max(np.sum((y - want).astype(np.float64) ** 2),
                                                                        1e-30))
        assert err <= max(v["max_abs_error"] * 2, 1e-6) or snr >= v["tolerance_snr_db"], (err, snr)
    assert eng.open_streams == 0
