"""Tampered copies of shipped bundles: every load failure is one BundleError line naming the file and the mismatch.

Covers issue #19 item 4: manifests were checked for type, not meaning (sample_rate 0, shape ["a"],
family_options as a list and manifest.json as a folder gave tracebacks; sample_rate 8000, block_shift
100, window "hann", latency_samples -5 were accepted with wrong output; latency_samples 10**9 hung).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

import edge
from edge import BundleError
from edge.check import load_golden

from .conftest import REPO, need, noise_audio

DTLN = REPO / "pretrained_model" / "dtln-16k" / "float32"
DTLN_INT8 = REPO / "pretrained_model" / "dtln-16k-int8" / "int8"
POCONET = REPO / "pretrained_model" / "poconet-16k" / "float32"


def _copy(src, tmp_path):
    need(src / "manifest.json", "shipped bundle")
    dst = tmp_path / src.parent.name
    shutil.copytree(src, dst)
    return dst


def _edit(folder, fn):
    p = folder / "manifest.json"
    m = json.loads(p.read_text())
    fn(m)
    p.write_text(json.dumps(m))


def _set(*keys_and_value):
    """A manifest edit: ``_set("submodels", 0, "inputs", 0, "shape", ["a"])`` sets that leaf."""
    *keys, value = keys_and_value

    def fn(m):
        for k in keys[:-1]:
            m = m[k]
        m[keys[-1]] = value
    return fn


def _drop(*keys):
    def fn(m):
        for k in keys[:-1]:
            m = m[k]
        del m[keys[-1]]
    return fn


class Files:
    """A filesystem tamper (not a manifest edit): called with the bundle folder."""

    def __init__(self, fn):
        self.fn = fn

    def __call__(self, folder):
        self.fn(folder)


def _file_as(kind, name):
    """Replace a bundle file by a folder, a fifo, or an oversized file."""
    def fn(folder):
        p = folder / name
        p.unlink()
        if kind == "folder":
            p.mkdir()
        elif kind == "fifo":
            os.mkfifo(p)
        else:
            p.write_bytes(b" " * (2 << 20))
    return Files(fn)


def _raw(data: bytes):
    def fn(folder):
        (folder / "manifest.json").write_bytes(data)
    return Files(fn)


# (id, bundle, manifest edit or filesystem tamper, words the one-line error must hold)
CASES = [
    ("rate-0", DTLN, _set("sample_rate", 0), "'sample_rate' should be an integer >= 1, got 0"),
    ("rate-8000", DTLN, _set("sample_rate", 8000), "sample_rate 8000 does not fit family 'dtln'"),
    ("rate-str", DTLN, _set("sample_rate", "16000"), "'sample_rate' should be an integer"),
    ("rate-bool", DTLN, _set("sample_rate", True), "'sample_rate' should be an integer"),
    ("rate-missing", DTLN, _drop("sample_rate"), "missing key 'sample_rate'"),
    ("shift-100", DTLN, _set("block_shift", 100), "latency_samples 384 does not match the framing"),
    ("shift-100-latency-412", DTLN, lambda m: m.update(block_shift=100, latency_samples=412),
     "block_shift 100 does not fit family 'dtln'"),
    ("shift-0", DTLN, _set("block_shift", 0), "'block_shift' should be an integer >= 1"),
    ("shift-over-len", DTLN, _set("block_shift", 1024), "block_shift 1024 must be in 1..block_len"),
    ("len-negative", DTLN, _set("block_len", -512), "'block_len' should be an integer >= 1"),
    ("window-hann", DTLN, _set("window", "hann"), "window 'hann' does not fit family 'dtln'"),
    ("window-unknown", DTLN, _set("window", "kaiser"), "unknown window 'kaiser'"),
    ("window-list", DTLN, _set("window", ["none"]), "'window' should be a string"),
    ("latency-negative", DTLN, _set("latency_samples", -5), "latency_samples -5 does not match"),
    ("latency-huge", DTLN, _set("latency_samples", 10 ** 9), "latency_samples 1000000000 does not match"),
    ("latency-float", DTLN, _set("latency_samples", 384.0), "'latency_samples' should be an integer"),
    ("shape-letter", DTLN, _set("submodels", 0, "inputs", 0, "shape", ["a"]),
     "'shape' should be a list of integers >= 1"),
    ("shape-zero", DTLN, _set("submodels", 0, "inputs", 0, "shape", [1, 0, 257]), "'shape' should be a list"),
    ("shape-str", DTLN, _set("submodels", 0, "inputs", 0, "shape", "257"), "'shape' should be a list"),
    ("scale-str", DTLN, _set("submodels", 0, "inputs", 0, "scale", "0.1"), "'scale' should be"),
    ("scale-nan", DTLN, _set("submodels", 0, "inputs", 0, "scale", float("nan")), "'scale' should be a finite"),
    ("zero-point-float", DTLN, _set("submodels", 0, "inputs", 0, "zero_point", 1.5), "'zero_point' should be"),
    ("dtype-unknown", DTLN, _set("submodels", 0, "inputs", 0, "dtype", "float64"), "unknown dtype 'float64'"),
    ("tensor-not-object", DTLN, _set("submodels", 0, "inputs", 0, "x"), "should be an object, got 'x'"),
    ("options-list", DTLN, _set("family_options", []), "'family_options' should be an object"),
    ("option-str-bool", DTLN, _set("family_options", "log_mag", "false"),
     "family_options log_mag 'false' should be a bool"),
    ("option-unknown", DTLN, _set("family_options", "log_mags", True), "unknown family_options key 'log_mags'"),
    ("option-bases", DTLN, _set("family_options", "stage2_bases", "sideways"), "should be one of 'graph'"),
    ("submodels-str", DTLN, _set("submodels", "mask"), "'submodels' should be a list"),
    ("submodel-str", DTLN, _set("submodels", ["mask.tflite"]), "submodels[0]: should be an object"),
    ("submodels-empty", DTLN, _set("submodels", []), "no submodels"),
    ("submodels-order", DTLN, lambda m: m["submodels"].reverse(), "dtln needs submodels ['mask', 'frame']"),
    ("states-not-str", DTLN, lambda m: m["submodels"][0].update(states={"x": 1}), "state pair x -> 1"),
    ("states-empty", DTLN, lambda m: m["submodels"][0].update(states={}), "are neither the manifest's data input"),
    ("file-escapes", DTLN, _set("submodels", 0, "file", "../mask.tflite"), "must be a plain name"),
    ("file-dot", DTLN, _set("submodels", 0, "file", "."), "must be a plain name"),
    ("runtimes-str", DTLN, _set("runtimes", "ai-edge-litert"), "'runtimes' should be a list"),
    ("runtimes-int", DTLN, _set("runtimes", [1]), "'runtimes' should be a list of strings"),
    ("name-int", DTLN, _set("name", 5), "'name' should be a string"),
    ("version-bool", DTLN, _set("format_version", True), "format_version True"),
    ("family-unknown", DTLN, _set("family", "rnnoise"), "unknown family 'rnnoise'"),
    ("manifest-folder", DTLN, _file_as("folder", "manifest.json"), "manifest.json: not a regular file"),
    ("manifest-fifo", DTLN, _file_as("fifo", "manifest.json"), "manifest.json: not a regular file"),
    ("manifest-huge", DTLN, _file_as("big", "manifest.json"), "bytes, expected at most"),
    ("manifest-deep", DTLN, _raw(b"[" * 100_000 + b"]" * 100_000), "not valid JSON"),
    ("manifest-list", DTLN, _raw(b"[]"), "not an edge-denoise manifest"),
    ("manifest-latin1", DTLN, _raw(b'{"format": "\xe9"}'), "not valid JSON"),
    ("tflite-folder", DTLN, _file_as("folder", "mask.tflite"), "mask.tflite: not a regular file"),
    ("tflite-fifo", DTLN, _file_as("fifo", "frame.tflite"), "frame.tflite: not a regular file"),
    ("poconet-window", POCONET, _set("window", "none"), "window 'none' does not fit family 'poconet'"),
    ("poconet-bins-str", POCONET, _set("family_options", "bins", "256"),
     "family_options bins '256' should be an integer"),
    ("poconet-bins-0", POCONET, _set("family_options", "bins", 0), "family_options bins 0 should be >= 1"),
    ("poconet-compress-0", POCONET, _set("family_options", "compress", 0), "compress 0 should be > 0"),
    ("poconet-mask", POCONET, _set("family_options", "mask", "sigmoid"), "should be one of 'complex_tanh'"),
    ("poconet-no-eps", POCONET, _drop("family_options", "mask_eps"), "needs family_options['mask_eps']"),
    ("poconet-rate", POCONET, _set("sample_rate", 48000), "sample_rate 48000 does not fit family 'poconet'"),
    ("arrays-str", DTLN_INT8, _set("arrays", "encoder"), "'arrays' should be a list"),
    ("array-shape", DTLN_INT8, _set("arrays", 0, "shape", ["a"]), "'shape' should be a list of integers"),
    ("array-dtype", DTLN_INT8, _set("arrays", 0, "dtype", "int8"), "manifest says int8"),
    ("array-missing", DTLN_INT8, _drop("arrays"), "stage2_bases 'runtime' needs arrays encoder"),
]


@pytest.mark.parametrize("bundle, tamper, words", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_tampered_bundle_is_one_bundle_error(tmp_path, bundle, tamper, words):
    folder = _copy(bundle, tmp_path)
    if isinstance(tamper, Files):
        tamper(folder)
    else:
        _edit(folder, tamper)
    with pytest.raises(BundleError) as caught:
        edge.load_bundle(folder)
    msg = str(caught.value)
    assert words in msg
    assert "\n" not in msg
    assert msg.startswith(str(folder)), "the message names the file"


BAD_VALUES = [None, "x", [], {}, [["a"]], -1, 0, 10 ** 12, True, 1.5, float("inf")]


def _leaves(m):
    """(path of keys, value) of every place a value sits in a manifest, down to tensors and arrays."""
    out = [((k,), v) for k, v in m.items()]
    for i, sd in enumerate(m["submodels"]):
        out += [(("submodels", i, k), v) for k, v in sd.items()]
        out += [(("submodels", i, "inputs", 0, k), v) for k, v in sd["inputs"][0].items()]
    for i, ad in enumerate(m.get("arrays", [])):
        out += [(("arrays", i, k), v) for k, v in ad.items()]
    out += [(("family_options", k), v) for k, v in m.get("family_options", {}).items()]
    return out


DESCRIPTIVE = {("name",), ("quantization",), ("runtimes",), ("model",), ("converter_options",), ("producer",),
               ("verification",)}
"""Keys the runtime only reports (``runtimes`` = [] means: no runtime constraint)."""


@pytest.mark.parametrize("bundle", [DTLN_INT8, POCONET], ids=["dtln-int8", "poconet"])
def test_any_wrong_value_anywhere_is_a_bundle_error(tmp_path, bundle):
    """Every key of the manifest, down to tensors, arrays and family options, set to each of a list of
    wrong values: BundleError (one line), unless the key is only descriptive or the value is unchanged."""
    folder = _copy(bundle, tmp_path)
    original = json.loads((folder / "manifest.json").read_text())
    accepted = []
    for keys, value in _leaves(original):
        for bad in BAD_VALUES:
            m = json.loads(json.dumps(original))
            _set(*keys, bad)(m)
            (folder / "manifest.json").write_text(json.dumps(m))
            try:
                load_golden(edge.load_bundle(folder))  # the golden pair is read by `check`, not to denoise
            except BundleError as exc:
                assert "\n" not in str(exc), (keys, bad)
                continue
            if keys == ("golden",) and bad is None:  # no golden pair: `check` says so (exit 3)
                continue
            if keys not in DESCRIPTIVE and keys[-1] not in ("bytes", "ops", "source", "reference") and bad != value:
                accepted.append((keys, bad))
    assert not accepted


def _cli(args, timeout=60):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "edge.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


@pytest.mark.parametrize("tamper", [_set("latency_samples", 10 ** 9), _set("sample_rate", 0),
                                    _set("submodels", 0, "inputs", 0, "shape", ["a"])],
                         ids=["latency-1e9", "rate-0", "shape-letter"])
def test_cli_refuses_a_tampered_bundle_in_one_line_without_hanging(tmp_path, tamper):
    folder = _copy(DTLN, tmp_path)
    _edit(folder, tamper)
    wav = tmp_path / "in.wav"
    sf.write(wav, noise_audio(0.5), 16000)
    out = _cli(["denoise", "--model", str(folder), str(wav), "-o", str(tmp_path / "out.wav"), "-q"])
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "manifest.json" in lines[0] and "Traceback" not in out.stderr, out.stderr
    assert not (tmp_path / "out.wav").exists()


def test_untampered_copy_still_loads_and_runs(tmp_path):
    folder = _copy(POCONET, tmp_path)
    x = noise_audio(0.3)
    np.testing.assert_array_equal(edge.denoise(x, folder), edge.denoise(x, POCONET))
