"""Write a verified model bundle: convert, calibrate, verify, then rename into place."""

from __future__ import annotations

import json
import os
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from io import BytesIO
from pathlib import Path
from types import MappingProxyType
from typing import Callable

import numpy as np

import edge
from edge.bundle import FORMAT, FORMAT_VERSION, MANIFEST, Bundle, SubmodelSpec, TensorSpec, load_bundle, sha256_bytes
from edge.interpreter import interpreter_package

from . import golden
from .dtln import DTLNWeights, StreamOptions, budget, build_streaming_models, runtime_bases, stream_options_for
from .errors import ConvertError, VerificationError
from .export import MODES, op_names, tensor_table, to_tflite
from .verify import TOLERANCE_DB, compare, keras_denoiser, run_stream

REPO = Path(__file__).resolve().parents[1]

# Which interpreter packages load each mode's files (checked: ai-edge-litert 2.3, tflite-runtime 2.14).
RUNTIMES = {
    "none": ["ai-edge-litert", "tflite-runtime>=2.14", "tensorflow>=2.14"],
    "float16": ["ai-edge-litert", "tflite-runtime>=2.14", "tensorflow>=2.14"],
    "dynamic": ["ai-edge-litert", "tensorflow>=2.16"],  # per-channel FULLY_CONNECTED v12
    "int8": ["ai-edge-litert", "tflite-runtime>=2.14", "tensorflow>=2.14"],
    "int16x8": ["ai-edge-litert", "tensorflow>=2.16"],  # int16 RSQRT
}
LOG_NEEDS = ["ai-edge-litert", "tensorflow>=2.16"]  # LOG v2 in integer graphs


@dataclass(frozen=True)
class Progress:
    say: Callable[[str], None] = lambda msg: None


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


def _tensor_specs(table: dict[str, dict], order) -> tuple[TensorSpec, ...]:
    return tuple(TensorSpec(name=n, tensor=table[n]["tensor"], shape=tuple(table[n]["shape"]),
                            dtype=table[n]["dtype"], scale=table[n]["scale"], zero_point=table[n]["zero_point"])
                 for n in order)


def stub_bundle(weights, ios, family_options: dict, *, family: str = "dtln", window: str = "none",
                arrays: dict | None = None) -> Bundle:
    """A Bundle describing Keras submodels (no files): lets the edge framing drive Keras models."""
    cfg = weights.config

    def spec(n, s):
        return TensorSpec(name=n, tensor=n, shape=tuple(s), dtype="float32")

    subs = tuple(SubmodelSpec(name=io.name, file="", sha256="", inputs=tuple(spec(n, s) for n, s in io.inputs),
                              outputs=tuple(spec(n, s) for n, s in io.outputs), data_input=io.data_input,
                              data_output=io.data_output, states=io.states) for io in ios)
    return Bundle(path="<keras>", name="keras", family=family, sample_rate=16000, block_len=cfg.block_len,
                  block_shift=cfg.block_shift, window=window, latency_samples=cfg.latency_samples,
                  quantization="none", family_options=MappingProxyType(family_options), submodels=subs,
                  manifest=MappingProxyType({}), sha256="",
                  arrays=MappingProxyType({k: np.asarray(v, np.float32) for k, v in (arrays or {}).items()}))


def _calibration(weights, models, ios, family_options, audio, max_blocks: int, *, family: str = "dtln",
                 window: str = "none", arrays: dict | None = None) -> dict[str, list]:
    """Closed loop: each submodel input recorded with the states the float model itself produced."""
    records: dict[str, list] = {}
    den = keras_denoiser(stub_bundle(weights, ios, family_options, family=family, window=window, arrays=arrays),
                         models, family_options, records)
    total = 0
    for x in audio:
        x = x[: max(0, max_blocks - total) * weights.config.block_shift]
        if len(x) == 0:
            break
        run_stream(den, [x])
        total = len(next(iter(records.values())))
    return records


@dataclass
class _Plan:
    """What one family contributes to a bundle: graphs for the mode, the float reference, manifest facts."""

    family: str
    window: str
    family_options: dict
    pairs: list
    """(keras streaming model, IOSpec) to convert, in call order."""
    reference: list
    """The float32 streaming graphs without graph changes: what verification compares against."""
    reference_options: dict
    model: dict
    """The manifest's ``model`` entry."""
    converter_options: dict
    int8_hint: str = ""
    offline: Callable[[list[np.ndarray]], list[np.ndarray]] | None = None
    """Whole-utterance Keras model on each signal (delay compensated), when the family has one."""
    arrays: dict = field(default_factory=dict)
    """Constant arrays the runtime applies itself (name -> array), written as ``NAME.npy``."""


def _dtln_plan(weights: DTLNWeights, mode: str, opts: StreamOptions | None, source: str) -> _Plan:
    cfg = weights.config
    opts = stream_options_for(mode, cfg, opts)
    fig = budget(cfg)
    family_options = {"frame_rms_norm": opts.frame_rms_norm, "log_mag": bool(opts.log_mag_outside and cfg.norm_mag)}
    arrays = {}
    if opts.bases_outside:
        family_options["stage2_bases"] = "runtime"
        arrays = runtime_bases(weights)
    return _Plan(
        family="dtln", window="none", family_options=family_options, pairs=build_streaming_models(weights, opts),
        reference=build_streaming_models(weights, stream_options_for("none", cfg)), reference_options={},
        model={"config": asdict(cfg), "parameters": fig["parameters"], "macs_per_frame": fig["macs_per_frame"],
               "macs_per_second": fig["macs_per_second"], "source": source},
        converter_options=asdict(opts), arrays=arrays,
        int8_hint=((" This model was fine-tuned with --qat and still misses: quiet-bin detail (e.g. from a "
                    "--spectral loss) is what int8 loses first. The shipped pretrained_model/dtln-16k-int8 is "
                    "fine-tuned for it" if cfg.qat else
                    f" Full int8 needs a model fine-tuned for it: python -m convert.train --init "
                    f"{source or 'WEIGHTS.h5'} --qat --out runs/qat, then convert runs/qat/best.h5")
                   + "; for this checkpoint use --quantize dynamic (int8 weights) or --quantize int16x8."))


def _poconet_plan(weights, mode: str, source: str) -> _Plan:
    from . import poconet

    cfg = weights.config
    fig = poconet.budget(cfg)
    pair = poconet.build_streaming_model(weights, frames=1)
    model = poconet.build_training_model(cfg, weights)

    def offline(audio: list[np.ndarray]) -> list[np.ndarray]:
        return [np.asarray(model(x.astype(np.float32)[None], training=False))[0] for x in audio]

    return _Plan(
        family=poconet.FAMILY, window=cfg.window, family_options=poconet.family_options(cfg), pairs=[pair],
        reference=[pair], reference_options=poconet.family_options(cfg),
        model={"config": asdict(cfg), "parameters": fig["parameters"], "macs_per_frame": fig["macs_per_frame"],
               "macs_per_second": fig["macs_per_second"], "source": source},
        converter_options={"frames_per_call": 1},
        int8_hint=" For this checkpoint use --quantize float16 or --quantize dynamic (int8 weights).",
        offline=offline)


def convert_dtln(weights: DTLNWeights, mode: str, output: str, *, force: bool = False, name: str | None = None,
                 verify_audio: list[np.ndarray], verify_names: list[str], calib_audio: list[np.ndarray] | None = None,
                 opts: StreamOptions | None = None, source: str = "", progress: Progress = Progress(),
                 tolerance_db: float | None = None, calib_blocks: int = 2000) -> Bundle:
    """Convert, verify and write a bundle folder; on any failure nothing is left at ``output``."""
    return _write_bundle(lambda: _dtln_plan(weights, mode, opts, source), weights, mode, output, force, name,
                         verify_audio, verify_names, calib_audio, progress, tolerance_db, calib_blocks)


def convert_poconet(weights, mode: str, output: str, *, force: bool = False, name: str | None = None,
                    verify_audio: list[np.ndarray], verify_names: list[str],
                    calib_audio: list[np.ndarray] | None = None, source: str = "", progress: Progress = Progress(),
                    tolerance_db: float | None = None, calib_blocks: int = 2000) -> Bundle:
    """A PoCoNet-style U-Net (``convert.poconet.PoCoNetWeights``) -> verified bundle of family ``poconet``.

    Verification also checks that the float streaming graph driven through the edge loop equals the
    whole-utterance Keras model (max abs difference <= OFFLINE_MAX_ABS).
    """
    return _write_bundle(lambda: _poconet_plan(weights, mode, source), weights, mode, output, force, name,
                         verify_audio, verify_names, calib_audio, progress, tolerance_db, calib_blocks)


OFFLINE_MAX_ABS = 1e-4
"""Streaming Keras reference vs the whole-utterance model, max abs sample difference (float32)."""


def _write_bundle(make_plan, weights, mode, output, force, name, verify_audio, verify_names, calib_audio,
                  progress, tolerance_db, calib_blocks) -> Bundle:
    if mode not in MODES:
        raise ConvertError(f"unknown quantisation mode {mode!r}; choose one of {', '.join(MODES)}")
    output = os.path.abspath(output)
    if os.path.exists(output) and not force:
        raise ConvertError(f"{output} exists; pass --force to replace it")
    parent = os.path.dirname(output)
    try:
        os.makedirs(parent, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(output)}.tmp-", dir=parent)
    except OSError as exc:
        raise ConvertError(f"{parent}: cannot write the bundle there ({exc.strerror})") from None
    try:
        bundle = _convert_into(make_plan(), weights, mode, tmp, name or os.path.basename(output), verify_audio,
                               verify_names, calib_audio, progress,
                               TOLERANCE_DB[mode] if tolerance_db is None else tolerance_db, calib_blocks)
        golden.add(tmp, verify_audio[0], verify_names[0])  # the pair `edge-denoise check` runs on a device
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
    return load_bundle(output)


def _convert_into(plan: _Plan, weights, mode, folder, name, verify_audio, verify_names, calib_audio, progress,
                  tolerance_db, calib_blocks) -> Bundle:
    t0 = time.perf_counter()
    cfg = weights.config
    family_options = plan.family_options
    pairs = plan.pairs
    ios = [io for _, io in pairs]
    calib = None
    if mode in ("int8", "int16x8"):
        progress.say(f"calibrating {mode} (closed loop, float model states)")
        records = _calibration(weights, pairs, ios, family_options, calib_audio or verify_audio, calib_blocks,
                               family=plan.family, window=plan.window, arrays=plan.arrays)
    submodels = []
    ops_all: set[str] = set()
    for model, io in pairs:
        progress.say(f"converting {io.name} ({mode})")
        if mode in ("int8", "int16x8"):
            calib = (lambda recs=records[io.name]: iter(recs))
        content = to_tflite(model, io.inputs, mode, calib)
        ops = op_names(content)
        bad = {"WHILE", "TensorListReserve", "FlexTensorListReserve", "RFFT2D", "FFT"} & set(ops)
        if bad:
            raise ConvertError(f"{io.name}: converted graph holds {sorted(bad)}; the streaming form must not")
        ops_all |= set(ops)
        fname = f"{io.name}.tflite"
        with open(os.path.join(folder, fname), "wb") as f:
            f.write(content)
        ins, outs = tensor_table(content)
        submodels.append({
            "name": io.name, "file": fname, "sha256": sha256_bytes(content), "bytes": len(content),
            "inputs": [{"name": n, **ins[n]} for n, _ in io.inputs],
            "outputs": [{"name": n, **outs[n]} for n, _ in io.outputs],
            "data_input": io.data_input, "data_output": io.data_output, "states": dict(io.states),
            "ops": ops,
        })
    arrays = []
    for aname, a in plan.arrays.items():
        buf = BytesIO()
        np.save(buf, a, allow_pickle=False)
        fname = f"{aname}.npy"
        with open(os.path.join(folder, fname), "wb") as f:
            f.write(buf.getvalue())
        arrays.append({"name": aname, "file": fname, "sha256": sha256_bytes(buf.getvalue()),
                       "shape": list(a.shape), "dtype": a.dtype.name})
    runtimes = RUNTIMES[mode]
    if mode in ("int8", "int16x8") and "LOG" in ops_all:
        runtimes = LOG_NEEDS
    manifest = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "name": name, "family": plan.family,
        "sample_rate": 16000, "block_len": cfg.block_len, "block_shift": cfg.block_shift, "window": plan.window,
        "latency_samples": cfg.latency_samples,
        "quantization": mode, "family_options": family_options, "submodels": submodels,
        **({"arrays": arrays} if arrays else {}),
        "runtimes": runtimes,
        "model": plan.model,
        "converter_options": {**plan.converter_options, "calibration": "closed-loop" if calib else None},
        "producer": {"tool": "python -m convert", **_versions()},
    }
    _write_manifest(folder, manifest)
    bundle = load_bundle(folder)

    progress.say("verifying against the Keras float reference")
    ref_pairs = plan.reference
    ref_den = keras_denoiser(stub_bundle(weights, [io for _, io in ref_pairs], plan.reference_options,
                                         family=plan.family, window=plan.window), ref_pairs, plan.reference_options)
    refs = run_stream(ref_den, verify_audio)
    tests = run_stream(edge.StreamingDenoiser(bundle), verify_audio)
    fig = compare(refs, tests)
    passed = bool(fig["snr_db"] >= tolerance_db)
    manifest["verification"] = {
        "reference": "Keras float32 streaming graph of the model as trained (without the conversion's graph changes), same edge block loop",
        "audio": verify_names, **fig, "tolerance_snr_db": tolerance_db, "passed": passed,
        "seconds_to_convert": round(time.perf_counter() - t0, 1),
    }
    offline_ok = True
    if plan.offline is not None:
        progress.say("checking the streaming reference against the whole-utterance model")
        off = compare(plan.offline(verify_audio), refs)
        offline_ok = bool(off["max_abs_error"] <= OFFLINE_MAX_ABS)
        manifest["verification"]["offline"] = {
            "reference": "Keras whole-utterance model vs the float32 streaming reference above",
            **off, "tolerance_max_abs_error": OFFLINE_MAX_ABS, "passed": offline_ok}
        manifest["verification"]["passed"] = passed = passed and offline_ok
    _write_manifest(folder, manifest)
    if not offline_ok:
        raise VerificationError(
            f"the streaming graph does not reproduce the whole-utterance model: max abs error "
            f"{manifest['verification']['offline']['max_abs_error']:.3g} > {OFFLINE_MAX_ABS:g}; nothing written.")
    if not passed:
        hint = plan.int8_hint if mode == "int8" else ""
        raise VerificationError(
            f"{mode} bundle misses its tolerance: SNR {fig['snr_db']:.1f} dB against the float reference, "
            f"needs >= {tolerance_db:.0f} dB (max abs error {fig['max_abs_error']:.3g}); nothing written.{hint}")
    return load_bundle(folder)


def _write_manifest(folder: str, manifest: dict) -> None:
    with open(os.path.join(folder, MANIFEST), "w") as f:
        json.dump(manifest, f, indent=1)
        f.write("\n")


def bundle_bytes(folder: str | os.PathLike[str]) -> int:
    """Bytes on disk of a bundle's model files (submodels and arrays; the manifest and golden pair left out)."""
    return sum(p.stat().st_size for p in Path(folder).iterdir()
               if p.name != MANIFEST and p.name not in golden.FILES)


def default_paths() -> dict[str, Path]:
    return {"weights": REPO / "pretrained_model" / "dtln-16k" / "dtln_weights.h5",
            "int8_weights": REPO / "pretrained_model" / "dtln-16k-int8" / "dtln_weights.h5",
            "poconet_weights": REPO / "pretrained_model" / "poconet-16k" / "poconet_weights.h5",
            "examples": REPO / "examples"}


def example_files() -> list[Path]:
    for base in (REPO / "examples", Path.cwd() / "examples"):
        files = sorted(p for p in base.glob("*noisy*.wav")) if base.is_dir() else []
        if files:
            return files
    return []


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


TERMINAL = Progress(_say)
