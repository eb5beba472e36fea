"""Shared fixtures: a small random DTLN bundle built by the real converter, and paths to optional assets."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("EDGE_SHARED", REPO.parent / "shared"))
REFERENCE = SHARED / "reference" / "dtln" / "pretrained_model"
DATA = SHARED / "data"
EXAMPLE = REPO / "examples" / "p232_013_noisy.wav"


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


@pytest.fixture(scope="session")
def small_bundle(tmp_path_factory) -> str:
    """A randomly initialised small DTLN converted to float32 and verified (no ../shared needed)."""
    pytest.importorskip("tensorflow", reason="the converter needs TensorFlow (pip install .[convert])")
    from convert.build import convert

    path = tmp_path_factory.mktemp("bundles") / "small-none"
    convert(small_weights(), "none", str(path), verify_audio=[noise_audio()], verify_names=["noise"])
    return str(path)


@pytest.fixture(scope="session")
def bases_bundle(tmp_path_factory):
    """A float small DTLN bundle whose stage 2 bases the runtime applies (the layout full int8 bundles use);
    verified to >= 60 dB against the Keras graph (the bases are stored as float16)."""
    pytest.importorskip("tensorflow", reason="the converter needs TensorFlow (pip install .[convert])")
    from convert.build import convert
    from convert.families.dtln import StreamOptions

    path = tmp_path_factory.mktemp("bases") / "b"
    convert(small_weights(), "none", str(path), verify_audio=[noise_audio()], verify_names=["noise"],
                 tolerance_db=60.0, opts=StreamOptions(frame_rms_norm=True, bases_outside=True))
    return path
