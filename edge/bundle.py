"""Model bundles: a folder with ``manifest.json`` beside the ``.tflite`` (and ``.npy``) files it names."""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
from dataclasses import dataclass, field
from io import BytesIO
from types import MappingProxyType
from typing import Any, Mapping

import numpy as np

from .errors import BundleError

MANIFEST = "manifest.json"
FORMAT = "edge-denoise-bundle"
FORMAT_VERSION = 1
DTYPES = {"float32": np.float32, "float16": np.float16, "int8": np.int8, "int16": np.int16,
          "uint8": np.uint8, "int32": np.int32}
WINDOWS = ("none", "hann", "sqrt_hann")


@dataclass(frozen=True)
class TensorSpec:
    """One named input or output of a submodel."""

    name: str
    """Signature name, e.g. ``mag`` or ``lstm_state_out``."""
    tensor: str
    """Tensor name inside the flatbuffer, resolved to an index once at load."""
    shape: tuple[int, ...]
    dtype: str
    scale: float = 0.0
    """Quantisation scale; 0.0 for float tensors."""
    zero_point: int = 0


@dataclass(frozen=True)
class SubmodelSpec:
    """One ``.tflite`` file and how the runtime drives it."""

    name: str
    file: str
    sha256: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    data_input: str
    """The input carrying this block's features (not a state)."""
    data_output: str
    states: tuple[tuple[str, str], ...]
    """State pairs ``(NAME, NAME_out)``: the output is fed back as the input on the next block."""
    content: bytes = field(repr=False, default=b"")

    def input(self, name: str) -> TensorSpec:
        return next(t for t in self.inputs if t.name == name)

    def output(self, name: str) -> TensorSpec:
        return next(t for t in self.outputs if t.name == name)


@dataclass(frozen=True)
class Bundle:
    """A loaded, verified bundle. Immutable: share it between streams."""

    path: str
    name: str
    family: str
    sample_rate: int
    """Hertz."""
    block_len: int
    """Samples per analysis frame."""
    block_shift: int
    """Samples per hop (one call of the per-block step)."""
    window: str
    latency_samples: int
    """Samples from input to output of the stream (the algorithmic delay)."""
    quantization: str
    family_options: Mapping[str, Any]
    submodels: tuple[SubmodelSpec, ...]
    manifest: Mapping[str, Any]
    sha256: str
    """sha256 of manifest.json; names this exact bundle in reports."""
    arrays: Mapping[str, np.ndarray] = field(default_factory=lambda: MappingProxyType({}), repr=False)
    """Constant float arrays the family step uses beside its submodels (``.npy`` files, read-only),
    e.g. DTLN's stage 2 bases when the runtime applies them."""
    batched: Any = field(default=None, repr=False)
    """``edge.tblock.BatchedSpec`` when the manifest offers T-block submodels (``batched``), else None.
    ``dataclasses.replace(bundle, batched=None)`` runs a bundle block by block."""

    def submodel(self, name: str) -> SubmodelSpec:
        for sm in self.submodels:
            if sm.name == name:
                return sm
        raise BundleError(f"{os.path.join(self.path, MANIFEST)}: no submodel named {name!r}")


MAX_MANIFEST_BYTES = 1 << 20
"""A manifest is a few kB; anything this large is not one (and is not read whole)."""


def _kind_name(kind: type | tuple[type, ...]) -> str:
    names = {dict: "an object", list: "a list", str: "a string", int: "an integer", float: "a number"}
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def _require(obj: Mapping[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if not isinstance(obj, dict):
        raise BundleError(f"{where}: should be an object, got {obj!r:.60}")
    if key not in obj:
        raise BundleError(f"{where}: missing key {key!r}")
    value = obj[key]
    if not isinstance(value, kind) or (isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple)
                                                                                else (kind,))):
        raise BundleError(f"{where}: {key!r} should be {_kind_name(kind)}, got {value!r:.60}")
    return value


def _positive(obj: Mapping[str, Any], key: str, where: str) -> int:
    value = _require(obj, key, int, where)
    if value < 1:
        raise BundleError(f"{where}: {key!r} should be an integer >= 1, got {value!r}")
    return value


def _shape(obj: Mapping[str, Any], where: str) -> tuple[int, ...]:
    shape = _require(obj, "shape", list, where)
    if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in shape):
        raise BundleError(f"{where}: 'shape' should be a list of integers >= 1, got {shape!r:.60}")
    return tuple(shape)


def _tensor(d: Mapping[str, Any], where: str) -> TensorSpec:
    name = _require(d, "name", str, where)
    where = f"{where} tensor {name!r}"
    dtype = _require(d, "dtype", str, where)
    if dtype not in DTYPES:
        raise BundleError(f"{where}: unknown dtype {dtype!r}")
    scale = _require(d, "scale", (int, float), where) if "scale" in d else 0.0
    zero_point = _require(d, "zero_point", int, where) if "zero_point" in d else 0
    if not (np.isfinite(scale) and scale >= 0):
        raise BundleError(f"{where}: 'scale' should be a finite number >= 0, got {scale!r}")
    return TensorSpec(name=name, tensor=_require(d, "tensor", str, where), shape=_shape(d, where),
                      dtype=dtype, scale=float(scale), zero_point=zero_point)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _read_regular(fpath: str, limit: int | None = None) -> bytes:
    """The bytes of a regular file (not a folder, fifo or device: those would fail or hang), at most ``limit``."""
    try:
        fd = os.open(fpath, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise BundleError(f"{fpath}: cannot read ({exc.strerror})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise BundleError(f"{fpath}: not a regular file")
        if limit is not None and st.st_size > limit:
            raise BundleError(f"{fpath}: {st.st_size} bytes, expected at most {limit}")
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
        return b"".join(chunks)
    except OSError as exc:
        raise BundleError(f"{fpath}: cannot read ({exc.strerror})") from None
    finally:
        os.close(fd)


def _read_checked(path: str, fname: str, want: str, where: str) -> bytes:
    if os.path.basename(fname) != fname or fname in ("", ".", ".."):
        raise BundleError(f"{where}: file {fname!r} must be a plain name inside the bundle folder")
    fpath = os.path.join(path, fname)
    content = _read_regular(fpath)
    got = sha256_bytes(content)
    if got != want:
        raise BundleError(f"{fpath}: sha256 mismatch: manifest says {want}, file has {got}")
    return content


def _array(path: str, ad: Mapping[str, Any], where: str) -> np.ndarray:
    """One ``arrays`` entry: a checked ``.npy`` file, returned as read-only float32."""
    fname = _require(ad, "file", str, where)
    content = _read_checked(path, fname, _require(ad, "sha256", str, where), where)
    try:
        a = np.load(BytesIO(content), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise BundleError(f"{os.path.join(path, fname)}: not a numpy .npy array ({exc})") from None
    shape = _shape(ad, where)
    dtype = _require(ad, "dtype", str, where)
    if not isinstance(a, np.ndarray) or a.shape != shape or a.dtype.name != dtype:
        raise BundleError(f"{os.path.join(path, fname)}: holds {getattr(a, 'dtype', type(a).__name__)}"
                          f"{list(getattr(a, 'shape', ()))}, manifest says {dtype}{list(shape)}")
    if a.dtype.kind != "f" or not np.isfinite(a).all():
        raise BundleError(f"{os.path.join(path, fname)}: expected finite float values, got {a.dtype.name}")
    a = a.astype(np.float32)
    a.flags.writeable = False
    return a


def _read_manifest(path: str) -> tuple[bytes, dict[str, Any]]:
    """(raw bytes, parsed object) of a bundle's manifest, or BundleError."""
    mpath = os.path.join(path, MANIFEST)
    if not os.path.isdir(path):
        raise BundleError(f"{path}: no such bundle folder (expected a folder holding {MANIFEST})")
    if not os.path.lexists(mpath):
        raise BundleError(f"{mpath}: missing; a bundle folder needs its manifest")
    raw = _read_regular(mpath, MAX_MANIFEST_BYTES)
    try:
        m = json.loads(raw)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise BundleError(f"{mpath}: not valid JSON ({str(exc) or exc.__class__.__name__})") from None
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        raise BundleError(f"{mpath}: not an edge-denoise manifest (expected \"format\": \"{FORMAT}\")")
    if m.get("format_version") != FORMAT_VERSION or isinstance(m.get("format_version"), bool):
        raise BundleError(f"{mpath}: format_version {m.get('format_version')!r:.40}, this runtime reads "
                          f"{FORMAT_VERSION}")
    return raw, m


def _framing(m: Mapping[str, Any], mpath: str) -> dict[str, Any]:
    """Rate, block, shift, window and latency, checked against each other (the family checks its own values)."""
    window = _require(m, "window", str, mpath)
    if window not in WINDOWS:
        raise BundleError(f"{mpath}: unknown window {window!r} (known: {', '.join(WINDOWS)})")
    block_len = _positive(m, "block_len", mpath)
    block_shift = _positive(m, "block_shift", mpath)
    if block_shift > block_len:
        raise BundleError(f"{mpath}: block_shift {block_shift} must be in 1..block_len ({block_len})")
    latency = _require(m, "latency_samples", int, mpath)
    if latency != block_len - block_shift:
        raise BundleError(f"{mpath}: latency_samples {latency} does not match the framing: block_len - block_shift "
                          f"= {block_len - block_shift}")
    return {"sample_rate": _positive(m, "sample_rate", mpath), "block_len": block_len, "block_shift": block_shift,
            "window": window, "latency_samples": latency}


def parse_submodel(path: str, sd: Any, where: str) -> SubmodelSpec:
    """One ``submodels`` entry of a manifest, its file read and checksum checked."""
    fname = _require(sd, "file", str, where)
    want = _require(sd, "sha256", str, where)
    content = _read_checked(path, fname, want, where)
    inputs = tuple(_tensor(t, f"{where} input") for t in _require(sd, "inputs", list, where))
    outputs = tuple(_tensor(t, f"{where} output") for t in _require(sd, "outputs", list, where))
    in_names = {t.name for t in inputs}
    out_names = {t.name for t in outputs}
    if len(in_names) != len(inputs) or len(out_names) != len(outputs):
        raise BundleError(f"{where}: a tensor name is listed twice")
    states = tuple(_require(sd, "states", dict, where).items())
    for s_in, s_out in states:
        if not isinstance(s_out, str) or s_in not in in_names or s_out not in out_names:
            raise BundleError(f"{where}: state pair {s_in} -> {str(s_out):.40} names a tensor that is not listed")
    data_in = _require(sd, "data_input", str, where)
    data_out = _require(sd, "data_output", str, where)
    if data_in not in in_names or data_out not in out_names:
        raise BundleError(f"{where}: data_input/data_output {data_in!r}/{data_out!r} not among the tensors")
    return SubmodelSpec(name=_require(sd, "name", str, where), file=fname, sha256=want, inputs=inputs,
                        outputs=outputs, data_input=data_in, data_output=data_out, states=states, content=content)


def load_bundle(path: str | os.PathLike[str]) -> Bundle:
    """Read and verify a bundle folder: manifest (types and meaning), files, checksums, and every tensor.

    Every failure is a BundleError naming the file and the mismatch.
    """
    path = os.fspath(path)
    mpath = os.path.join(path, MANIFEST)
    raw, m = _read_manifest(path)
    framing = _framing(m, mpath)
    subs = [parse_submodel(path, sd, f"{mpath} submodels[{i}]")
            for i, sd in enumerate(_require(m, "submodels", list, mpath))]
    if not subs:
        raise BundleError(f"{mpath}: no submodels")
    arrays = {}
    for i, ad in enumerate(_require(m, "arrays", list, mpath) if "arrays" in m else []):
        where = f"{mpath} arrays[{i}]"
        arrays[_require(ad, "name", str, where)] = _array(path, ad, where)
    for key in ("name", "quantization"):
        if key in m:
            _require(m, key, str, mpath)
    runtimes = _require(m, "runtimes", list, mpath) if "runtimes" in m else []
    if not all(isinstance(r, str) for r in runtimes):
        raise BundleError(f"{mpath}: 'runtimes' should be a list of strings, got {runtimes!r:.60}")
    bundle = Bundle(
        path=path, name=m.get("name", os.path.basename(os.path.abspath(path))),
        family=_require(m, "family", str, mpath), **framing,
        quantization=m.get("quantization", "none"),
        family_options=MappingProxyType(dict(_require(m, "family_options", dict, mpath) if "family_options" in m
                                             else {})),
        submodels=tuple(subs), manifest=MappingProxyType(m), sha256=sha256_bytes(raw),
        arrays=MappingProxyType(arrays), batched=_batched(path, m, mpath, tuple(subs)))
    from .families import family_class  # families import bundle

    family_class(bundle)  # unknown family, or a manifest the family cannot run -> BundleError
    check_runtime(bundle)
    for sm in subs + list(bundle.batched.submodels if bundle.batched else ()):
        check_interpreter(bundle, sm)
    return bundle


def _batched(path: str, m: Mapping[str, Any], mpath: str, subs: tuple[SubmodelSpec, ...]) -> Any:
    from .tblock import parse_batched  # tblock imports bundle

    return parse_batched(path, m, mpath, subs)


def _version(text: str) -> tuple[int, ...] | None:
    """The leading numeric release of a version string ("2.21.0rc1" -> (2, 21, 0)); None without one."""
    m = re.match(r"\d+(?:\.\d+)*", text.strip())
    return tuple(int(p) for p in m.group().split(".")) if m else None


def runtime_listed(runtimes: list[str], name: str, version: str) -> bool:
    """Whether ``name`` ``version`` is among a manifest's ``runtimes`` (``"pkg"`` or ``"pkg>=X.Y"`` entries).

    An unreadable version counts as listed: only a known mismatch refuses.
    """
    for entry in runtimes:
        pkg, _, least = str(entry).partition(">=")
        if pkg.strip() != name:
            continue
        have, need = _version(version), _version(least.strip()) if least else None
        if need is None or have is None or have >= need:
            return True
    return False


def check_runtime(bundle: Bundle) -> None:
    """Refuse a bundle whose manifest does not list the interpreter package in use.

    Loading is not enough: tflite-runtime 2.14 loads an int16x8 PoCoNet graph and computes it wrongly
    (5 dB SNR against float), so the converter's list of checked runtimes is binding.
    """
    needs = bundle.manifest.get("runtimes")
    if not needs:
        return
    from .interpreter import interpreter_package  # lazy: no interpreter import at edge import

    pkg = interpreter_package()
    if not runtime_listed(list(needs), pkg.name, pkg.version):
        raise BundleError(f"{bundle.path}/{MANIFEST}: {pkg.name} {pkg.version} is not a runtime this "
                          f"{bundle.quantization} bundle was checked on; the manifest says it runs on: "
                          f"{', '.join(needs)}")


def check_interpreter(bundle: Bundle, sm: SubmodelSpec, interp: Any = None) -> dict[str, int]:
    """Match every manifest tensor against the interpreter; return name -> tensor index."""
    from .interpreter import make_interpreter  # lazy: no interpreter import at edge import

    fpath = os.path.join(bundle.path, sm.file)
    if interp is None:
        try:
            interp = make_interpreter(sm.content)
        except (ValueError, RuntimeError) as exc:
            from .interpreter import interpreter_package

            pkg = interpreter_package()
            needs = bundle.manifest.get("runtimes")
            hint = f"; the manifest says it runs on: {', '.join(needs)}" if needs else ""
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
            raise BundleError(f"{fpath}: {pkg.name} {pkg.version} cannot load it ({first}){hint}") from None
    found = {d["name"]: d for d in interp.get_input_details()}
    inputs = set(found)
    found.update({d["name"]: d for d in interp.get_output_details()})
    index = {}
    for spec in sm.inputs + sm.outputs:
        d = found.get(spec.tensor)
        if d is None:
            raise BundleError(f"{fpath}: tensor {spec.tensor!r} ({spec.name}) not in the model; it has "
                              f"{sorted(found)}")
        shape = tuple(int(s) for s in d["shape"])
        dtype = np.dtype(d["dtype"]).name
        scale, zp = d["quantization"]
        if shape != spec.shape or dtype != spec.dtype:
            raise BundleError(f"{fpath}: tensor {spec.name!r} is {dtype}{list(shape)} in the model, "
                              f"manifest says {spec.dtype}{list(spec.shape)}")
        if not np.isclose(scale, spec.scale, rtol=1e-6, atol=0) or int(zp) != spec.zero_point:
            raise BundleError(f"{fpath}: tensor {spec.name!r} quantisation is scale={scale} zero_point={zp} in "
                              f"the model, manifest says scale={spec.scale} zero_point={spec.zero_point}")
        index[spec.name] = int(d["index"])
    unfed = sorted(inputs - {sm.input(sm.data_input).tensor} - {sm.input(s_in).tensor for s_in, _ in sm.states})
    if unfed:
        raise BundleError(f"{fpath}: model inputs {unfed} are neither the manifest's data input nor in a state pair "
                          "(they would stay zero)")
    return index
