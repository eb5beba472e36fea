"""Bundle loading: checksums, names, shapes and quantisation checked; one clear error per mismatch."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

import edge
from edge import BundleError


@pytest.fixture
def copy(small_bundle, tmp_path):
    dst = tmp_path / "b"
    shutil.copytree(small_bundle, dst)
    return dst


@pytest.fixture
def bases_copy(bases_bundle, tmp_path):
    dst = tmp_path / "bb"
    shutil.copytree(bases_bundle, dst)
    return dst


def _edit(folder, fn):
    p = folder / "manifest.json"
    m = json.loads(p.read_text())
    fn(m)
    p.write_text(json.dumps(m))


def test_loads_and_is_immutable(small_bundle):
    b = edge.load_bundle(small_bundle)
    assert b.family == "dtln" and len(b.sha256) == 64
    with pytest.raises(dataclasses.FrozenInstanceError):
        b.sample_rate = 8000
    with pytest.raises(TypeError):
        b.manifest["family"] = "x"


def test_missing_folder(tmp_path):
    with pytest.raises(BundleError, match="no such bundle folder"):
        edge.load_bundle(tmp_path / "nope")


def test_missing_manifest(copy):
    (copy / "manifest.json").unlink()
    with pytest.raises(BundleError, match="manifest.json: missing"):
        edge.load_bundle(copy)


def test_corrupt_manifest(copy):
    (copy / "manifest.json").write_text("{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        edge.load_bundle(copy)


def test_checksum_mismatch_names_file(copy):
    with open(copy / "mask.tflite", "r+b") as f:
        f.seek(2000)
        f.write(b"\x00\x01\x02\x03")
    with pytest.raises(BundleError, match=r"mask\.tflite: sha256 mismatch"):
        edge.load_bundle(copy)


def test_missing_tflite(copy):
    (copy / "frame.tflite").unlink()
    with pytest.raises(BundleError, match=r"frame\.tflite: cannot read"):
        edge.load_bundle(copy)


def test_renamed_tensor(copy):
    _edit(copy, lambda m: m["submodels"][0]["inputs"][1].update(tensor="serving_default_renamed:0"))
    with pytest.raises(BundleError, match=r"mask\.tflite: tensor 'serving_default_renamed:0'"):
        edge.load_bundle(copy)


def _shape(folder, *where) -> list[int]:
    """A shape from the manifest (fixtures differ in size: small converted ones, or shipped stand-ins)."""
    d = json.loads((folder / "manifest.json").read_text())
    for key in where:
        d = d[key]
    return d["shape"]


def test_wrong_shape(copy):
    shape = _shape(copy, "submodels", 1, "inputs", 1)
    _edit(copy, lambda m: m["submodels"][1]["inputs"][1].update(shape=shape[:-1] + [shape[-1] + 1]))
    dims = ", ".join(map(str, shape))
    with pytest.raises(BundleError, match=rf"frame\.tflite: tensor 'frame_state' is float32\[{dims}\] in the model"):
        edge.load_bundle(copy)
    _edit(copy, lambda m: m["submodels"][1]["inputs"][0].update(shape=[1, 1, 256]))
    with pytest.raises(BundleError, match=r"frame\.tflite: frame has shape \[1, 1, 256\], dtln with block_len 512"):
        edge.load_bundle(copy)


def test_wrong_quantisation(copy):
    _edit(copy, lambda m: m["submodels"][0]["inputs"][0].update(scale=0.5, zero_point=3))
    with pytest.raises(BundleError, match="quantisation is scale=0.0 zero_point=0 in the model"):
        edge.load_bundle(copy)


def test_unknown_family(copy):
    _edit(copy, lambda m: m.update(family="nope"))
    with pytest.raises(BundleError, match="unknown family 'nope'"):
        edge.load_bundle(copy)


def test_a_runtime_the_manifest_does_not_list_is_refused(copy):
    from edge.interpreter import interpreter_package

    pkg = interpreter_package()
    _edit(copy, lambda m: m.update(runtimes=["some-other-runtime", f"{pkg.name}>=999"]))
    with pytest.raises(BundleError, match=f"{pkg.name} {pkg.version} is not a runtime this none bundle was checked "
                                          "on; the manifest says it runs on: some-other-runtime"):
        edge.load_bundle(copy)
    _edit(copy, lambda m: m.update(runtimes=["some-other-runtime", pkg.name]))
    assert edge.load_bundle(copy).manifest["runtimes"][1] == pkg.name
    _edit(copy, lambda m: m.pop("runtimes"))  # bundles from before the list load as they did
    edge.load_bundle(copy)


def test_runtime_listed_reads_minimum_versions():
    from edge.bundle import runtime_listed

    listed = ["ai-edge-litert", "tflite-runtime>=2.14", "tensorflow>=2.16"]
    assert runtime_listed(listed, "ai-edge-litert", "2.3.0")
    assert runtime_listed(listed, "tflite-runtime", "2.14.0") and not runtime_listed(listed, "tflite-runtime", "2.13.1")
    assert runtime_listed(listed, "tensorflow", "2.21.0rc1") and not runtime_listed(listed, "tensorflow", "2.9.3")
    assert not runtime_listed(["ai-edge-litert", "tensorflow>=2.16"], "tflite-runtime", "2.14.0")
    assert runtime_listed(listed, "tensorflow", "unknown")  # only a known mismatch refuses


def test_state_pair_must_name_listed_tensors(copy):
    _edit(copy, lambda m: m["submodels"][0].update(states={"mask_state": "ghost_out"}))
    with pytest.raises(BundleError, match="state pair mask_state -> ghost_out"):
        edge.load_bundle(copy)


def test_array_checksum_mismatch_names_file(bases_copy):
    np.save(bases_copy / "decoder.npy", np.zeros((64, 512), np.float16))
    with pytest.raises(BundleError, match=r"decoder\.npy: sha256 mismatch"):
        edge.load_bundle(bases_copy)


def test_array_shape_must_match_manifest(bases_copy):
    rows, cols = _shape(bases_copy, "arrays", 0)
    _edit(bases_copy, lambda m: m["arrays"][0].update(shape=[rows, cols + 1]))
    with pytest.raises(BundleError, match=rf"encoder\.npy: holds float16\[{rows}, {cols}\], manifest says "
                                          rf"float16\[{rows}, {cols + 1}\]"):
        edge.load_bundle(bases_copy)


def test_runtime_bases_need_their_arrays(bases_copy):
    _edit(bases_copy, lambda m: m.update(arrays=m["arrays"][:1]))
    with pytest.raises(BundleError, match="stage2_bases 'runtime' needs arrays encoder"):
        edge.load_bundle(bases_copy)
    _edit(bases_copy, lambda m: m["family_options"].update(stage2_bases="sideways"))
    with pytest.raises(BundleError, match="stage2_bases 'sideways'"):
        edge.load_bundle(bases_copy)


def test_runtime_sigmoid_needs_runtime_bases(copy):
    """Logit outputs with stage 2's bases in the graph would be a mask the graph applied unsquashed: refused."""
    _edit(copy, lambda m: m["family_options"].update(mask_sigmoid="runtime"))
    with pytest.raises(BundleError, match="mask_sigmoid 'runtime' needs stage2_bases 'runtime'"):
        edge.load_bundle(copy)
    _edit(copy, lambda m: m["family_options"].update(mask_sigmoid="later"))
    with pytest.raises(BundleError, match="should be one of 'graph'"):
        edge.load_bundle(copy)


def test_bundle_arrays_are_read_only(bases_bundle):
    b = edge.load_bundle(bases_bundle)
    with pytest.raises(ValueError):
        b.arrays["encoder"][0, 0] = 1.0


def test_import_has_no_tensorflow_even_when_running(small_bundle):
    code = ("import sys, numpy as np, edge; "
            f"y = edge.denoise(np.zeros(1000, np.float32), {small_bundle!r}); "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras', 'convert')]; "
            "print(len(y), bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "1000 []"


def test_missing_interpreter_names_all_three(tmp_path):
    # A fresh process where none of the three packages can be imported.
    code = ("import sys\n"
            "class Block:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name.split('.')[0] in ('ai_edge_litert', 'tflite_runtime', 'tensorflow'):\n"
            "            raise ImportError('blocked for the test')\n"
            "sys.meta_path.insert(0, Block())\n"
            "from edge.interpreter import interpreter_package\n"
            "try:\n"
            "    interpreter_package()\n"
            "except ImportError as e:\n"
            "    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    msg = out.stdout
    assert "ai-edge-litert" in msg and "tflite-runtime" in msg and "tensorflow" in msg
    assert "pip install ai-edge-litert" in msg
