"""Bundles that come with the install: the default bundles as package data, `edge-denoise models`, the default."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import soundfile as sf

from edge.cli import main
from edge.models import DEFAULT_BUNDLES, default_model, runs_here

from .conftest import EXAMPLE, REPO


def _setup_module():
    spec = importlib.util.spec_from_file_location("edge_setup", REPO / "setup.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # setup() itself runs only as __main__
    return mod


def test_models_lists_every_shipped_bundle_with_its_scores(capsys, monkeypatch):
    monkeypatch.delenv("EDGE_DENOISE_MODEL", raising=False)
    assert main(["models", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    rows = {os.path.realpath(r["path"]): r for r in doc["bundles"]}
    shipped = sorted(p.parent for p in (REPO / "pretrained_model").glob("*/*/manifest.json"))
    assert {os.path.realpath(p) for p in shipped} <= set(rows)
    assert os.path.realpath(doc["default"]) == os.path.realpath(REPO / DEFAULT_BUNDLES[0])
    assert [r["default"] for r in doc["bundles"]].count(True) == 1
    for p in shipped:
        r = rows[os.path.realpath(p)]
        assert r["source"] == "checkout" and r["golden"] is True
        assert r["name"] == json.loads((p / "manifest.json").read_text())["name"]
        scores = json.loads((p.parent / "scores.json").read_text())["modes"]
        entry = next(e for e in scores.values() if e.get("folder") == p.name)
        assert r["vbd23"]["pesq_wb"] == entry["vbd23"]["means"]["pesq_wb"]


def test_models_table_marks_the_default(capsys):
    assert main(["models"]) == 0
    lines = capsys.readouterr().out.splitlines()
    starred = [line for line in lines if line.startswith("*")]
    assert len(starred) == 1 and os.path.basename(DEFAULT_BUNDLES[0]) in starred[0]


def test_environment_variable_wins_and_is_listed_first(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("EDGE_DENOISE_MODEL", str(REPO / "pretrained_model" / "poconet-16k" / "int8"))
    assert default_model() == os.environ["EDGE_DENOISE_MODEL"]
    assert main(["models", "--json"]) == 0
    first = json.loads(capsys.readouterr().out)["bundles"][0]
    assert first["source"] == "env" and first["default"] is True


def test_the_wheel_hook_names_exactly_the_default_bundles_files():
    setup = _setup_module()
    assert setup.default_bundles() == DEFAULT_BUNDLES
    for rel in DEFAULT_BUNDLES:
        files = setup.bundle_files(rel)
        m = json.loads((REPO / rel / "manifest.json").read_text())
        sub = os.path.relpath(REPO / rel, REPO / "pretrained_model")
        want = {"manifest.json", *(s["file"] for s in m["submodels"]), *(a["file"] for a in m.get("arrays", [])),
                m["golden"]["input"]["file"], m["golden"]["output"]["file"]}
        assert {os.path.basename(f) for f in files if os.path.dirname(f) == sub} == want
        assert all((REPO / "pretrained_model" / f).is_file() for f in files)


@pytest.mark.slow
def test_installed_wheel_denoises_from_any_folder_with_no_model_option(tmp_path):
    """pip wheel + pip install --target: `edge-denoise denoise` outside the checkout finds its packaged bundle."""
    wheels = tmp_path / "wheels"
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels), str(REPO)],
                       capture_output=True, text=True, timeout=600)
    if r.returncode and ("No matching distribution" in r.stderr or "Could not find a version" in r.stderr):
        pytest.skip(f"pip cannot fetch the build backend (setuptools>=68) here: {r.stderr.strip()[-300:]}")
    assert r.returncode == 0, r.stderr
    (wheel,) = wheels.glob("edge_denoise-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    bundles = {os.path.dirname(n) for n in names if n.startswith("edge/_bundles/") and n.endswith("manifest.json")}
    assert bundles == {"edge/_bundles/" + os.path.relpath(REPO / rel, REPO / "pretrained_model")
                       for rel in DEFAULT_BUNDLES}
    assert not [n for n in names if n.endswith((".h5", ".npz", ".jsonl"))]  # weights and training state stay out
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
                   check=True, capture_output=True, timeout=300)
    work = tmp_path / "elsewhere"
    work.mkdir()
    sf.write(work / "in.wav", sf.read(EXAMPLE, dtype="float32")[0][:16000], 16000, subtype="PCM_16")
    env = {**os.environ, "PYTHONPATH": str(target)}
    env.pop("EDGE_DENOISE_MODEL", None)
    code = "import edge, sys; from edge.cli import main; print(edge.__file__, file=sys.stderr); sys.exit(main())"
    r = subprocess.run([sys.executable, "-c", code, "denoise", "in.wav", "-o", "out.wav"], cwd=work, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.stderr.splitlines()[0].startswith(str(target))  # the installed package ran, not the checkout
    if not any(runs_here(REPO / rel) for rel in DEFAULT_BUNDLES):  # e.g. tflite-runtime and a dynamic default
        assert r.returncode == 2 and "is not a runtime this" in r.stderr, r.stderr
    else:
        assert r.returncode == 0, r.stderr
        y, sr = sf.read(work / "out.wav")
        assert sr == 16000 and len(y) == 16000 and np.any(y != 0)
    r = subprocess.run([sys.executable, "-c", code, "models"], cwd=work, env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0 and "package" in r.stdout, r.stderr


def test_default_is_the_first_default_bundle_that_runs_here(tmp_path, monkeypatch):
    import edge.models as models
    from edge.interpreter import interpreter_package

    for name, runtimes in (("x", ["some-other-interpreter"]), ("y", [interpreter_package().name])):
        (tmp_path / "fam" / name).mkdir(parents=True)
        (tmp_path / "fam" / name / "manifest.json").write_text(json.dumps({"runtimes": runtimes}))
    monkeypatch.delenv("EDGE_DENOISE_MODEL", raising=False)
    monkeypatch.setattr(models, "CHECKOUT_DIR", tmp_path)
    monkeypatch.setattr(models, "DEFAULT_BUNDLES", ("pretrained_model/fam/x", "pretrained_model/fam/y"))
    assert default_model() == str(tmp_path / "fam" / "y")
    monkeypatch.setattr(models, "DEFAULT_BUNDLES", ("pretrained_model/fam/x",))
    assert default_model() == str(tmp_path / "fam" / "x")  # none runs here: the first, which load then refuses
