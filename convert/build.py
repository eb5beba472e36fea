"""Write a verified model bundle: ``convert()`` plans, converts, calibrates, verifies, then renames into place.

It knows no family: the weights' family (``convert.families``) supplies the graphs for the mode, the float
reference and the manifest's facts; the mode (``convert.modes``) supplies quantisation, tolerance and runtimes.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from io import BytesIO
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable

import numpy as np

import edge
from edge.bundle import FORMAT, FORMAT_VERSION, MANIFEST, Bundle, TensorSpec, load_bundle, sha256_bytes
from edge.interpreter import interpreter_package

from . import golden
from .data import vbd23
from .errors import ConvertError, VerificationError
from .export import op_names, tensor_table, to_tflite
from .families import family_of_weights
from .families.base import Family, Plan
from .modes import Mode, mode
from .verify import calibration, compare, keras_denoiser, run_stream, stub_bundle

REPO = Path(__file__).resolve().parents[1]

OFFLINE_MAX_ABS = 1e-4
"""Streaming Keras reference vs the whole-utterance model, max abs sample difference (float32)."""

FORBIDDEN_OPS = frozenset({"WHILE", "TensorListReserve", "FlexTensorListReserve", "RFFT2D", "FFT"})
"""Ops a streaming submodel must not hold: loops, Flex ops and FFTs belong to the runtime."""


@dataclass(frozen=True)
class Progress:
    say: Callable[[str], None] = lambda msg: None


@dataclass(frozen=True)
class Conversion:
    """What one conversion needs besides the weights, the mode and the output folder."""

    verify_audio: list[np.ndarray]
    """Float mono signals at the model's rate: verification runs the reference and the bundle on them."""
    verify_names: list[str]
    """Their names, recorded in the manifest."""
    calib_audio: list[np.ndarray] | None = None
    """Integer modes calibrate on these (default: the verification audio)."""
    force: bool = False
    """Replace an existing output folder."""
    name: str | None = None
    """The manifest's bundle name (default: the output folder's name)."""
    source: str = ""
    """The weights file's name, recorded in the manifest."""
    progress: Progress = Progress()
    tolerance_db: float | None = None
    """Minimum SNR against the float reference (default: the mode's)."""
    calib_blocks: int = 2000
    """At most this many blocks of calibration audio."""
    opts: Any = None
    """The family's graph options instead of the mode's graph changes (DTLN: ``StreamOptions``)."""


def convert(weights, quantize: str | Mode, output: str | os.PathLike[str], **conversion) -> Bundle:
    """Convert ``weights`` (any family's) in mode ``quantize``, verify, and write a bundle folder at ``output``.

    Keyword arguments are the fields of ``Conversion``. On any failure nothing is left at ``output``
    (VerificationError when the bundle misses its tolerance, ConvertError for bad input).
    """
    job = Conversion(**conversion)
    fam = family_of_weights(weights)
    m = mode(quantize)
    output = os.path.abspath(output)
    if os.path.exists(output) and not job.force:
        raise ConvertError(f"{output} exists; pass --force to replace it")
    parent = os.path.dirname(output)
    try:
        os.makedirs(parent, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(output)}.tmp-", dir=parent)
    except OSError as exc:
        raise ConvertError(f"{parent}: cannot write the bundle there ({exc.strerror})") from None
    try:
        plan = fam.plan(weights, m, job.source, job.opts)
        bundle = _convert_into(fam, plan, weights, m, tmp, job.name or os.path.basename(output), job)
        bundle = _add_to_verified(tmp, bundle, job)
        if os.path.exists(output):
            trash = tempfile.mkdtemp(prefix=f".{os.path.basename(output)}.old-", dir=parent)
            os.replace(output, os.path.join(trash, "old"))
            os.replace(tmp, output)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, output)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return replace(bundle, path=output)


def _convert_into(fam: Family, plan: Plan, weights, m: Mode, folder: str, name: str, job: Conversion) -> Bundle:
    """Files, manifest and verification in ``folder``; the bundle as loaded once, with its final manifest."""
    t0 = time.perf_counter()
    cfg = weights.config
    records = None
    if m.calibrated:
        job.progress.say(f"calibrating {m.name} (closed loop, float model states)")
        stub = stub_bundle(weights, [io for _, io in plan.pairs], plan.family_options, family=fam.name,
                           window=plan.window, arrays=plan.arrays)
        records = calibration(stub, plan.pairs, job.calib_audio or job.verify_audio, job.calib_blocks)
    float_layers = fam.float_layers if m.float_activations_int8_weights else ()
    submodels, ops = _write_submodels(plan, m, folder, records, job.progress, float_layers)
    arrays = _write_arrays(plan.arrays, folder)
    manifest = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "name": name, "family": fam.name,
        "sample_rate": cfg.sample_rate, "block_len": cfg.block_len, "block_shift": cfg.block_shift,
        "window": plan.window, "latency_samples": cfg.latency_samples,
        "quantization": m.name, "family_options": plan.family_options, "submodels": submodels,
        **({"arrays": arrays} if arrays else {}),
        "runtimes": m.runtimes_for(ops),
        "model": plan.model,
        "converter_options": {**plan.converter_options, "calibration": "closed-loop" if records is not None else None,
                              **({"float_layers": list(float_layers)} if float_layers else {})},
        "producer": {"tool": "python -m convert", **_versions()},
    }
    _write_manifest(folder, manifest)
    bundle = load_bundle(folder)
    tolerance = m.tolerance_db if job.tolerance_db is None else job.tolerance_db
    manifest["verification"] = _verify(fam, plan, weights, bundle, job, tolerance, t0)
    raw = _write_manifest(folder, manifest)
    _raise_unless_passed(manifest["verification"], plan, m)
    return replace(bundle, manifest=MappingProxyType(manifest), sha256=sha256_bytes(raw))


def _add_to_verified(folder: str, bundle: Bundle, job: Conversion) -> Bundle:
    """The place for steps that add to a verified bundle before it is renamed into place (a golden pair,
    batched submodels): each writes into ``folder``; one that rewrites manifest.json returns
    ``load_bundle(folder)`` so that the bundle returned matches the files."""
    golden.add(folder, job.verify_audio[0], job.verify_names[0])  # the pair `edge-denoise check` runs on a device
    return load_bundle(folder)


def _write_submodels(plan: Plan, m: Mode, folder: str, records: dict | None, progress: Progress,
                     float_layers: tuple[str, ...] = ()) -> tuple[list[dict], set[str]]:
    """Each streaming graph as ``NAME.tflite``: its manifest entries and every op the bundle holds."""
    submodels = []
    ops_all: set[str] = set()
    for model, io in plan.pairs:
        progress.say(f"converting {io.name} ({m.name})")
        calib = (lambda recs=records[io.name]: iter(recs)) if records is not None else None
        content = to_tflite(model, io.inputs, m, calib, float_layers)
        fname = f"{io.name}.tflite"
        entry = submodel_entry(io, content, fname)
        ops_all |= set(entry["ops"])
        with open(os.path.join(folder, fname), "wb") as f:
            f.write(content)
        submodels.append(entry)
    return submodels, ops_all


def submodel_entry(io, content: bytes, fname: str, what: str = "") -> dict:
    """The manifest entry of a converted submodel written as ``fname``; ConvertError when its graph holds
    a forbidden op (``what`` says which kind of graph, for the message)."""
    ops = op_names(content)
    bad = FORBIDDEN_OPS & set(ops)
    if bad:
        raise ConvertError(f"{io.name}{what}: converted graph holds {sorted(bad)}; the streaming form must not")
    ins, outs = tensor_table(content)
    return {
        "name": io.name, "file": fname, "sha256": sha256_bytes(content), "bytes": len(content),
        "inputs": [{"name": n, **ins[n]} for n, _ in io.inputs],
        "outputs": [{"name": n, **outs[n]} for n, _ in io.outputs],
        "data_input": io.data_input, "data_output": io.data_output, "states": dict(io.states),
        "ops": ops,
    }


def _write_arrays(arrays: dict[str, np.ndarray], folder: str) -> list[dict]:
    """Each constant array as ``NAME.npy``: its manifest entries."""
    out = []
    for aname, a in arrays.items():
        buf = BytesIO()
        np.save(buf, a, allow_pickle=False)
        fname = f"{aname}.npy"
        with open(os.path.join(folder, fname), "wb") as f:
            f.write(buf.getvalue())
        out.append({"name": aname, "file": fname, "sha256": sha256_bytes(buf.getvalue()),
                    "shape": list(a.shape), "dtype": a.dtype.name})
    return out


def _verify(fam: Family, plan: Plan, weights, bundle: Bundle, job: Conversion, tolerance_db: float,
            t0: float) -> dict:
    """The manifest's ``verification``: the bundle against the float Keras reference through the same loop."""
    job.progress.say("verifying against the Keras float reference")
    ref_den = keras_denoiser(stub_bundle(weights, [io for _, io in plan.reference], plan.reference_options,
                                         family=fam.name, window=plan.window), plan.reference, plan.reference_options)
    refs = run_stream(ref_den, job.verify_audio)
    tests = run_stream(edge.StreamingDenoiser(bundle), job.verify_audio)
    fig = compare(refs, tests, bundle.sample_rate)
    out = {
        "reference": "Keras float32 streaming graph of the model as trained (without the conversion's graph "
                     "changes), same edge block loop",
        "audio": job.verify_names, **fig, "tolerance_snr_db": tolerance_db,
        "passed": bool(fig["snr_db"] >= tolerance_db),
        "seconds_to_convert": round(time.perf_counter() - t0, 1),
    }
    if plan.offline is not None:
        job.progress.say("checking the streaming reference against the whole-utterance model")
        off = compare(plan.offline(job.verify_audio), refs, bundle.sample_rate)
        offline_ok = bool(off["max_abs_error"] <= OFFLINE_MAX_ABS)
        out["offline"] = {"reference": "Keras whole-utterance model vs the float32 streaming reference above",
                          **off, "tolerance_max_abs_error": OFFLINE_MAX_ABS, "passed": offline_ok}
        out["passed"] = out["passed"] and offline_ok
    return out


def _raise_unless_passed(v: dict, plan: Plan, m: Mode) -> None:
    if not v.get("offline", {}).get("passed", True):
        raise VerificationError(
            f"the streaming graph does not reproduce the whole-utterance model: max abs error "
            f"{v['offline']['max_abs_error']:.3g} > {OFFLINE_MAX_ABS:g}; nothing written.")
    if not v["passed"]:
        hint = plan.int8_hint if m.name == "int8" else ""
        raise VerificationError(
            f"{m.name} bundle misses its tolerance: SNR {v['snr_db']:.1f} dB against the float reference over "
            f"{verified_on(v)}, "
            f"needs >= {v['tolerance_snr_db']:.0f} dB (max abs error {v['max_abs_error']:.3g}); nothing written.{hint}")


def verified_on(v: dict) -> str:
    """What a verification ran on, for messages: ``p232_013_noisy.wav (4 s)``, ``23 files pooled (78 s)``."""
    files = v["audio"][0] if len(v["audio"]) == 1 else f"{len(v['audio'])} files pooled"
    return f"{files} ({v['seconds']:.0f} s)"


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version(), "numpy": np.__version__, "edge": edge.__version__}
    for dist in ("tensorflow", "keras"):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            pass
    pkg = interpreter_package()
    out["interpreter"] = f"{pkg.name} {pkg.version}"
    return out


def tensor_specs(table: dict[str, dict], order) -> tuple[TensorSpec, ...]:
    """``TensorSpec``s of the named tensors of a ``convert.export.tensor_table``, in ``order``."""
    return tuple(TensorSpec(name=n, tensor=table[n]["tensor"], shape=tuple(table[n]["shape"]),
                            dtype=table[n]["dtype"], scale=table[n]["scale"], zero_point=table[n]["zero_point"])
                 for n in order)


def _write_manifest(folder: str, manifest: dict) -> bytes:
    raw = (json.dumps(manifest, indent=1) + "\n").encode()
    with open(os.path.join(folder, MANIFEST), "wb") as f:
        f.write(raw)
    return raw


def bundle_bytes(folder: str | os.PathLike[str]) -> int:
    """Bytes on disk of a bundle's model files (submodels and arrays; the manifest and golden pair left out)."""
    return sum(p.stat().st_size for p in Path(folder).iterdir()
               if p.name != MANIFEST and p.name not in golden.FILES)


def example_files() -> list[Path]:
    for base in (REPO / "examples", Path.cwd() / "examples"):
        files = sorted(p for p in base.glob("*noisy*.wav")) if base.is_dir() else []
        if files:
            return files
    return []


def pooled_verification_files() -> list[Path]:
    """The VBD-23 noisy files of the shared data folder (``$EDGE_DATA``, else ``../shared/data``); [] without it."""
    folder = vbd23() / "noisy"
    return sorted(folder.glob("*.wav")) if folder.is_dir() else []


def verification_files(m: Mode | str) -> list[Path]:
    """The audio a bundle of mode ``m`` is verified on unless the caller gives some: the example recordings, or
    for a mode with ``pooled_verification`` the VBD-23 noisy files pooled when the shared data has them."""
    return (mode(m).pooled_verification and pooled_verification_files()) or example_files()


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


TERMINAL = Progress(_say)
