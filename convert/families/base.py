"""What a model family gives the converter and the trainer (``Family``), and what they exchange with it."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

SAMPLE_RATE = 16000
"""Hertz every family here is trained and run at; a config's ``sample_rate`` reads it, the manifest records it."""

PRETRAINED = Path(__file__).resolve().parents[2] / "pretrained_model"
"""The shipped bundles and the weights they were converted from (in a checkout)."""


@dataclass(frozen=True)
class IOSpec:
    """Inputs/outputs of one streaming submodel, in signature order."""

    name: str
    inputs: tuple[tuple[str, tuple[int, ...]], ...]
    outputs: tuple[tuple[str, tuple[int, ...]], ...]
    data_input: str
    data_output: str
    states: tuple[tuple[str, str], ...]


@dataclass
class Plan:
    """What one family contributes to a bundle in one mode: graphs, the float reference, manifest facts."""

    window: str
    family_options: dict
    pairs: list
    """(keras streaming model, IOSpec) to convert, in call order."""
    reference: list
    """The float32 streaming graphs without the mode's graph changes: what verification compares against."""
    reference_options: dict
    model: dict
    """The manifest's ``model`` entry."""
    converter_options: dict
    int8_hint: str = ""
    """Appended to a failed int8 verification: what to do instead."""
    offline: Callable[[list[np.ndarray]], list[np.ndarray]] | None = None
    """Whole-utterance Keras model on each signal (delay compensated), when the family checks against one."""
    arrays: dict = field(default_factory=dict)
    """Constant arrays the runtime applies itself (name -> array), written as ``NAME.npy``."""


@dataclass(frozen=True)
class DefaultWeights:
    """The shipped weights ``python -m convert`` uses without ``--weights``, and why those."""

    path: Path
    why: str = ""


@dataclass(frozen=True)
class Family:
    """One model family: every family-specific step of converting and training, behind one name.

    ``edge.families`` holds its runtime half (the per-block step), under the same name.
    """

    name: str
    """The manifest's ``family`` and the ``--family`` value."""
    weights_type: type
    """Its weights class: ``config`` (block_len, block_shift, latency_samples, sample_rate) and ``arrays``."""
    load_weights: Callable[..., Any]
    """(path, block_shift=None) -> weights; ConvertError/WeightsError naming the file and the mismatch."""
    save_weights: Callable[[Any, str], None]
    owns_file: Callable[[str], bool]
    """Whether an h5 file holds this family's weights (told by its contents, never its name)."""
    default_weights: Callable[[str], DefaultWeights]
    """Mode name -> the shipped weights to convert when none are given."""
    plan: Callable[[Any, Any, str, Any], Plan]
    """(weights, Mode, source file name, graph options or None) -> the Plan for that mode."""
    training_model: Callable[..., Any]
    """(config, weights or None) -> whole-utterance Keras model (batch, samples) -> (batch, samples)."""
    get_model_weights: Callable[[Any, Any], Any]
    set_model_weights: Callable[[Any, Any], None]
    train_architecture: Callable[[Any, Path | None], tuple[Any, Any]]
    """(TrainConfig, last checkpoint of the run or None) -> (config, initial weights or None)."""
    release_fix: Callable[[Any], tuple[Any, dict | None]] | None = None
    """Weights -> (weights to ship, what was changed or None), run by ``convert.release`` unless --keep-level."""
    tblock_models: Callable[[Any, Mapping, int], list] | None = None
    """(weights, bundle manifest, T) -> [(keras model, IOSpec)]: the bundle's submodels over T hops per call,
    same names, states and order as its per-block ones (``convert.batched``); None: the family has none."""
    float_layers: tuple[str, ...] = ()
    """Keras layers whose weights stay float32 in the dynamic mode (``convert.export.keep_float_weights``):
    those whose int8 error the output hears most for what they cost."""
    batch_models: Callable[[Any, Mapping, int | None], list] | None = None
    """(weights, bundle manifest, B) -> [(keras model, IOSpec)]: the bundle's per-block submodels with B
    independent streams per call, states ``[B, ...]``, or B None: a dynamic batch axis the runtime resizes
    (``convert.streams``); None: the family has none."""


def manifest_model(cfg, figures: dict, source: str) -> dict:
    """The manifest's ``model`` entry: the architecture, its budget figures and the weights file's name."""
    return {"config": asdict(cfg), "parameters": figures["parameters"], "macs_per_frame": figures["macs_per_frame"],
            "macs_per_second": figures["macs_per_second"], "source": source}
