"""Model bundles: a folder with ``manifest.json`` beside the ``.tflite`` (and ``.npy``) files it names."""

from __future__ import annotations

import hashlib
import json
import os
import re
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


def _require(obj: Mapping[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if key not in obj:
        raise BundleError(f"{where}: missing key {key!r}")
    value = obj[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise BundleError(f"{where}: {key!r} should be {getattr(kind, '__name__', kind)}, got {value!r}")
    return value


def _tensor(d: Mapping[str, Any], where: str) -> TensorSpec:
    name = _require(d, "name", str, where)
    where = f"{where} tensor {name!r}"
    dtype = _require(d, "dtype", str, where)
    if dtype not in DTYPES:
        raise BundleError(f"{where}: unknown dtype {dtype!r}")
    shape = _require(d, "shape", list, where)
    return TensorSpec(name=name, tensor=_require(d, "tensor", str, where), shape=tuple(int(s) for s in shape),
                      dtype=dtype, scale=float(d.get("scale", 0.0)), zero_point=int(d.get("zero_point", 0)))


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _read_checked(path: str, fname: str, want: str, where: str) -> bytes:
    fpath = os.path.join(path, fname)
    if os.path.basename(fname) != fname:
        raise BundleError(f"{where}: file {fname!r} must be a plain name inside the bundle folder")
    try:
        with open(fpath, "rb") as f:
            content = f.read()
    except OSError as exc:
        raise BundleError(f"{fpath}: cannot read ({exc.strerror})") from None
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
    shape = tuple(int(s) for s in _require(ad, "shape", list, where))
    dtype = _require(ad, "dtype", str, where)
    if a.shape != shape or a.dtype.name != dtype:
        raise BundleError(f"{os.path.join(path, fname)}: holds {a.dtype.name}{list(a.shape)}, manifest says "
                          f"{dtype}{list(shape)}")
    a = a.astype(np.float32)
    a.flags.writeable = False
    return a


def parse_submodel(path: str, sd: Mapping[str, Any], where: str) -> SubmodelSpec:
    """One ``submodels`` entry of a manifest, its file read and checksum checked."""
    if not isinstance(sd, dict):
        raise BundleError(f"{where}: should be an object, got {sd!r}")
    fname = _require(sd, "file", str, where)
    want = _require(sd, "sha256", str, where)
    content = _read_checked(path, fname, want, where)
    inputs = tuple(_tensor(t, f"{where} input") for t in _require(sd, "inputs", list, where))
    outputs = tuple(_tensor(t, f"{where} output") for t in _require(sd, "outputs", list, where))
    in_names = {t.name for t in inputs}
    out_names = {t.name for t in outputs}
    states = tuple((str(k), str(v)) for k, v in _require(sd, "states", dict, where).items())
    for s_in, s_out in states:
        if s_in not in in_names or s_out not in out_names:
            raise BundleError(f"{where}: state pair {s_in} -> {s_out} names a tensor that is not listed")
    data_in = _require(sd, "data_input", str, where)
    data_out = _require(sd, "data_output", str, where)
    if data_in not in in_names or data_out not in out_names:
        raise BundleError(f"{where}: data_input/data_output {data_in!r}/{data_out!r} not among the tensors")
    return SubmodelSpec(name=_require(sd, "name", str, where), file=fname, sha256=want, inputs=inputs,
                        outputs=outputs, data_input=data_in, data_output=data_out, states=states, content=content)


def load_bundle(path: str | os.PathLike[str]) -> Bundle:
    """Read and verify a bundle folder: manifest, files, checksums, and every tensor.

    Raises BundleError naming the file and the mismatch.
    """
    path = os.fspath(path)
    mpath = os.path.join(path, MANIFEST)
    if not os.path.isdir(path):
        raise BundleError(f"{path}: no such bundle folder (expected a folder holding {MANIFEST})")
    try:
        with open(mpath, "rb") as f:
            raw = f.read()
        m = json.loads(raw)
    except FileNotFoundError:
        raise BundleError(f"{mpath}: missing; a bundle folder needs its manifest") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{mpath}: not valid JSON ({exc})") from None
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        raise BundleError(f"{mpath}: not an edge-denoise manifest (expected \"format\": \"{FORMAT}\")")
    if m.get("format_version") != FORMAT_VERSION:
        raise BundleError(f"{mpath}: format_version {m.get('format_version')!r}, this runtime reads {FORMAT_VERSION}")
    window = _require(m, "window", str, mpath)
    if window not in WINDOWS:
        raise BundleError(f"{mpath}: unknown window {window!r} (known: {', '.join(WINDOWS)})")
    block_len = _require(m, "block_len", int, mpath)
    block_shift = _require(m, "block_shift", int, mpath)
    if not 0 < block_shift <= block_len:
        raise BundleError(f"{mpath}: block_shift {block_shift} must be in 1..block_len ({block_len})")
    subs = [parse_submodel(path, sd, f"{mpath} submodels[{i}]")
            for i, sd in enumerate(_require(m, "submodels", list, mpath))]
    if not subs:
        raise BundleError(f"{mpath}: no submodels")
    arrays = {}
    for i, ad in enumerate(_require(m, "arrays", list, mpath) if "arrays" in m else []):
        where = f"{mpath} arrays[{i}]"
        arrays[_require(ad, "name", str, where)] = _array(path, ad, where)
    bundle = Bundle(
        path=path, name=str(m.get("name", os.path.basename(os.path.abspath(path)))),
        family=_require(m, "family", str, mpath), sample_rate=_require(m, "sample_rate", int, mpath),
        block_len=block_len, block_shift=block_shift, window=window,
        latency_samples=_require(m, "latency_samples", int, mpath),
        quantization=str(m.get("quantization", "none")),
        family_options=MappingProxyType(dict(m.get("family_options", {}))),
        submodels=tuple(subs), manifest=MappingProxyType(m), sha256=sha256_bytes(raw),
        arrays=MappingProxyType(arrays), batched=_batched(path, m, mpath, tuple(subs)))
    from .families import family_class  # noqa: PLC0415 (families import bundle)

    family_class(bundle)  # unknown family -> BundleError
    check_runtime(bundle)
    for sm in subs + list(bundle.batched.submodels if bundle.batched else ()):
        check_interpreter(bundle, sm)
    return bundle


def _batched(path: str, m: Mapping[str, Any], mpath: str, subs: tuple[SubmodelSpec, ...]) -> Any:
    from .tblock import parse_batched  # noqa: PLC0415 (tblock imports bundle)

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
    from .interpreter import interpreter_package  # noqa: PLC0415 (lazy: no interpreter import at edge import)

    pkg = interpreter_package()
    if not runtime_listed(list(needs), pkg.name, pkg.version):
        raise BundleError(f"{bundle.path}/{MANIFEST}: {pkg.name} {pkg.version} is not a runtime this "
                          f"{bundle.quantization} bundle was checked on; the manifest says it runs on: "
                          f"{', '.join(needs)}")


def check_interpreter(bundle: Bundle, sm: SubmodelSpec, interp: Any = None) -> dict[str, int]:
    """Match every manifest tensor against the interpreter; return name -> tensor index."""
    from .interpreter import make_interpreter  # noqa: PLC0415 (lazy: no interpreter import at edge import)

    fpath = os.path.join(bundle.path, sm.file)
    if interp is None:
        try:
            interp = make_interpreter(sm.content)
        except (ValueError, RuntimeError) as exc:
            from .interpreter import interpreter_package  # noqa: PLC0415

            pkg = interpreter_package()
            needs = bundle.manifest.get("runtimes")
            hint = f"; the manifest says it runs on: {', '.join(needs)}" if needs else ""
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
            raise BundleError(f"{fpath}: {pkg.name} {pkg.version} cannot load it ({first}){hint}") from None
    found = {d["name"]: d for d in interp.get_input_details()}
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
    return index
