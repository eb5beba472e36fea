"""Adding verified graphs to an existing bundle (``convert.batched``, ``convert.streams``): the weights it was
converted from, checked against it; the graphs converted in a scratch copy, verified there, then installed
beside its files. On any failure the bundle stays as it was."""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict
from typing import Callable, Mapping

import numpy as np

import edge
from edge.batch import SECTION as STREAMS
from edge.bundle import MANIFEST, load_bundle
from edge.tblock import SECTION as BATCHED

from .errors import ConvertError, WeightsError
from .families import family
from .families.base import Family
from .modes import BATCHED as BATCHED_MODES
from .modes import Mode, mode

SECTIONS = (BATCHED, STREAMS)
"""Manifest sections that name files beside the per-block submodels."""


def read_manifest(folder: str) -> dict:
    """The bundle's manifest as a plain dict, once the bundle loads (one that does not is not upgraded)."""
    load_bundle(folder)
    with open(os.path.join(folder, MANIFEST)) as f:
        return json.load(f)


def batched_mode(m: Mapping, folder: str, what: str) -> Mode:
    """The bundle's mode, when the mode table gives it T-block and batch-axis graphs; ConvertError otherwise."""
    md = mode(m.get("quantization"))
    if md.batched is None:
        raise ConvertError(f"{folder}: a {md.name} bundle gets no {what} (only {', '.join(BATCHED_MODES)}: float "
                           "activations, so their output can match the per-block output)")
    return md


def weights_for(m: Mapping, weights_path: str) -> tuple[Family, object]:
    """The bundle's family and the weights in ``weights_path``, which must be the ones it was converted from."""
    fam = family(m.get("family"))
    weights = fam.load_weights(weights_path, block_shift=m.get("block_shift"))
    want = m.get("model", {}).get("config")
    have = json.loads(json.dumps(asdict(weights.config)))  # as the manifest holds it (tuples as lists)
    if want is not None and have != want:
        diff = {k: (v, want.get(k)) for k, v in have.items() if want.get(k) != v}
        raise WeightsError(f"{weights_path}: its config differs from the bundle's model.config "
                           f"(weights vs bundle: {diff}); pass the weights this bundle was converted from")
    return fam, weights


def float_layers_of(m: dict) -> tuple[str, ...]:
    """The layers a bundle's per-block graphs kept float32 (manifest ``converter_options.float_layers``): its
    T-block and batch graphs keep the same, so they compute what the per-block ones do."""
    return tuple(m.get("converter_options", {}).get("float_layers", ()))


def convert_graphs(pairs: list, md: Mode, work: str, suffix: str, what: str, say,
                   float_layers: tuple[str, ...] = ()) -> list[dict]:
    """Each (keras model, IOSpec) as ``NAME{suffix}.tflite`` in ``work``: their manifest entries."""
    from .build import submodel_entry
    from .export import to_tflite

    entries = []
    for model, io in pairs:
        say(f"converting {io.name} {what} ({md.name})")
        content = to_tflite(model, io.inputs, md, float_layers=float_layers)
        fname = f"{io.name}{suffix}.tflite"
        with open(os.path.join(work, fname), "wb") as f:
            f.write(content)
        entries.append(submodel_entry(io, content, fname, f" ({what})"))
    return entries


def upgrade(folder: str, m: dict, section: str, make: Callable[[str], dict], check: Callable[[edge.Bundle], dict],
            failed: Callable[[dict], str]) -> edge.Bundle:
    """Replace the manifest's ``section`` of the bundle at ``folder`` (manifest ``m``, from ``read_manifest``).

    In a scratch copy of the bundle's files: ``make(work)`` writes the new graphs into ``work`` and returns
    the section (``submodels`` entries naming them); ``check(bundle)`` verifies the copy and returns the
    section's ``verification`` (with ``passed``). Passed: the files first, the manifest naming them last,
    then the files of an earlier section that are no longer named are removed. Failed: VerificationError
    with ``failed(verification)``, and the folder stays as it was.
    """
    from .errors import VerificationError

    t0 = time.perf_counter()
    old = {e["file"] for e in m.get(section, {}).get("submodels", [])}
    keep = [e["file"] for e in m["submodels"]] + [a["file"] for a in m.get("arrays", [])]
    keep += [e["file"] for s in SECTIONS if s != section for e in m.get(s, {}).get("submodels", [])]
    with tempfile.TemporaryDirectory(prefix=f".{section}-", dir=os.path.dirname(os.path.abspath(folder))) as work:
        for fname in keep:
            shutil.copyfile(os.path.join(folder, fname), os.path.join(work, fname))
        m[section] = make(work)
        _write_atomic(os.path.join(work, MANIFEST), _dump(m))
        v = check(load_bundle(work))
        v["seconds_to_convert"] = round(time.perf_counter() - t0, 1)
        m[section]["verification"] = v
        if not v["passed"]:
            raise VerificationError(f"{failed(v)}; {folder} left as it was")
        for e in m[section]["submodels"]:
            with open(os.path.join(work, e["file"]), "rb") as f:
                _write_atomic(os.path.join(folder, e["file"]), f.read())
        _write_atomic(os.path.join(folder, MANIFEST), _dump(m))
    for stale in old - {e["file"] for e in m[section]["submodels"]}:
        os.remove(os.path.join(folder, stale))
    return load_bundle(folder)


def _dump(m: dict) -> bytes:
    return (json.dumps(m, indent=1) + "\n").encode()


def _write_atomic(path: str, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=os.path.dirname(path))
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def example_audio(rate: int) -> list[np.ndarray]:
    """The example recordings at ``rate`` Hz (verification audio when none is given)."""
    from . import build, data

    files = build.example_files()
    if not files:
        raise ConvertError("no verification audio: pass --verify-audio FILE (speech at any rate)")
    return data.load_files(files, rate)


def run_upgrade(prog: str, quiet: bool, add: Callable[[Callable[[str], None]], edge.Bundle]) -> edge.Bundle | int:
    """What ``python -m convert.batched`` and ``convert.streams`` share: TensorFlow imported quietly, progress
    to stderr unless ``quiet``, then ``add(say)``; the upgraded bundle, or the exit status after one line on
    stderr (1: verification failed, 2: any other error)."""
    from .errors import VerificationError
    from .quiet import import_tensorflow

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import_tensorflow()
    say = (lambda msg: None) if quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    try:
        return add(say)
    except VerificationError as exc:
        print(f"{prog}: verification failed: {exc}", file=sys.stderr)
        return 1
    except (ConvertError, edge.EdgeError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
