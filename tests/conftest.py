"""Shared fixtures: small DTLN bundles built by the real converter or, where TensorFlow is absent (as on a
device), shipped bundles of the same layout and the committed identity bundle; paths to optional assets."""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("EDGE_SHARED", REPO.parent / "shared"))
REFERENCE = SHARED / "reference" / "dtln" / "pretrained_model"
DATA = SHARED / "data"
EXAMPLE = REPO / "examples" / "p232_013_noisy.wav"
FIXTURES = REPO / "tests" / "fixtures"
"""Committed fixture bundles (python -m tests.make_fixtures writes them)."""
HAVE_TF = importlib.util.find_spec("tensorflow") is not None


def need(path: Path, what: str) -> Path:
    """Skip visibly when an optional asset is absent (as on a user's machine)."""
    if not path.exists():
        pytest.skip(f"{what} not found at {path}")
    return path


def small_weights(seed: int = 0):
    from convert.families.dtln import DTLNConfig, DTLNWeights

    return DTLNWeights.random(DTLNConfig(units=32, encoder_size=64), seed=seed)


def noise_audio(seconds: float = 1.0, seed: int = 0) -> np.ndarray:
    return (0.1 * np.random.default_rng(seed).standard_normal(int(16000 * seconds))).astype(np.float32)


def identity_weights():
    """A DTLN whose masks are 1 and whose second stage is an exact pass-through (decoder = I / 4)."""
    from convert.families.dtln import DTLNConfig, DTLNWeights

    w = DTLNWeights.random(DTLNConfig(units=8, encoder_size=512), seed=1)
    for dense in ("dense1", "dense2"):
        w.arrays[dense][0][:] = 0.0
        w.arrays[dense][1][:] = 30.0  # sigmoid(30) == 1.0 in float32
    w.arrays["encoder"][0][0] = np.eye(512, dtype=np.float32)
    # Four overlapping frames are summed (no synthesis window in DTLN): each contributes a quarter.
    w.arrays["decoder"][0][0] = np.eye(512, dtype=np.float32) / 4
    return w


def build_fixture(name: str, path: Path) -> None:
    """Convert fixture bundle ``name`` into ``path`` with the real converter (needs TensorFlow)."""
    from convert.build import convert
    from convert.families.dtln import StreamOptions

    verify = {"verify_audio": [noise_audio()], "verify_names": ["noise"]}
    if name == "small-none":  # a randomly initialised small DTLN, float32, verified
        convert(small_weights(), "none", str(path), **verify)
    elif name == "bases":  # stage 2 bases and both sigmoids in the runtime (full int8's layout), >= 60 dB
        convert(small_weights(), "none", str(path), tolerance_db=60.0,
                opts=StreamOptions(frame_rms_norm=True, bases_outside=True, mask_logits=True), **verify)
    elif name == "identity":
        convert(identity_weights(), "none", str(path), **verify)
    elif name == "small-batched":  # small-none plus resizable batch-axis graphs for up to 64 streams
        import tempfile

        from convert.families.dtln import save_weights
        from convert.streams import add_to_bundle

        convert(small_weights(), "none", str(path), **verify)
        with tempfile.TemporaryDirectory() as tmp:
            save_weights(small_weights(), f"{tmp}/w.h5")
            add_to_bundle(str(path), f"{tmp}/w.h5", 64, verify["verify_audio"])
    else:
        raise KeyError(name)


COMMITTED = {"small-none": FIXTURES / "small-none", "small-batched": FIXTURES / "small-batched",
             "bases": REPO / "pretrained_model" / "dtln-16k-int8" / "int8",
             "identity": FIXTURES / "identity"}
"""What stands in for each fixture without TensorFlow: the committed copy (tests/fixtures/), or for the bases
layout the shipped full-int8 DTLN, whose runtime applies its stage 2 bases the same way."""


def fixture_bundle(tmp_path_factory, name: str) -> Path:
    """Fixture bundle ``name``: converted now where TensorFlow is installed, else its committed stand-in
    (copied: tests may edit their copy)."""
    path = tmp_path_factory.mktemp("bundles") / name
    if HAVE_TF:
        build_fixture(name, path)
    else:
        shutil.copytree(need(COMMITTED[name], f"the stand-in for fixture bundle {name}"), path)
    return path


@pytest.fixture(scope="session")
def small_bundle(tmp_path_factory) -> str:
    """A randomly initialised small DTLN, float32, verified (no ../shared needed)."""
    return str(fixture_bundle(tmp_path_factory, "small-none"))


@pytest.fixture(scope="session")
def batched_bundle(tmp_path_factory) -> str:
    """small_bundle plus resizable batch-axis graphs (``streams``, up to 64 streams per engine)."""
    return str(fixture_bundle(tmp_path_factory, "small-batched"))


@pytest.fixture(scope="session")
def other_bundle(tmp_path_factory) -> str:
    """A bundle other than small_bundle (another checksum, another output): the shipped dtln-16k-int8 float32."""
    path = tmp_path_factory.mktemp("bundles") / "other"
    shutil.copytree(need(REPO / "pretrained_model" / "dtln-16k-int8" / "float32", "the shipped bundle"), path)
    return str(path)


@pytest.fixture(scope="session")
def bases_bundle(tmp_path_factory):
    """A float small DTLN bundle whose stage 2 bases the runtime applies (the layout full int8 bundles use);
    verified to >= 60 dB against the Keras graph (the bases are stored as float16)."""
    return fixture_bundle(tmp_path_factory, "bases")


@pytest.fixture(scope="session")
def identity_bundle(tmp_path_factory) -> str:
    """A DTLN whose output is its input, delayed by its latency: alignment to the sample."""
    return str(fixture_bundle(tmp_path_factory, "identity"))


def pytest_unconfigure(config):
    """After the summary: where a test ran T-block graphs through ai-edge-litert's compiled model, keep the
    runtime's exit-time log lines out of the output, as the command does (edge.cli.console); the summary
    stays the last line (CI reads it)."""
    import atexit
    import sys

    interp = sys.modules.get("edge.interpreter")
    if interp is not None and interp.shared_weights_used():
        atexit.register(interp.silence_native_teardown)  # at exit: pytest restores descriptor 2 after this hook
