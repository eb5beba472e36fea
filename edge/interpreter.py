"""The one place that picks a tflite interpreter: ai-edge-litert, then tflite-runtime, then TF."""

from __future__ import annotations

import contextlib
import ctypes
import importlib
import importlib.metadata
import os
import re
import sys
import tempfile
import threading
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from .errors import RuntimeMissingError

# (distribution name, module holding Interpreter, attribute path)
_CANDIDATES = (
    ("ai-edge-litert", "ai_edge_litert.interpreter", "Interpreter"),
    ("tflite-runtime", "tflite_runtime.interpreter", "Interpreter"),
    ("tensorflow", "tensorflow", "lite.Interpreter"),
)


@dataclass(frozen=True)
class InterpreterPackage:
    """The interpreter package in use."""

    name: str
    """Distribution name, e.g. ``ai-edge-litert``."""
    version: str
    factory: Callable[..., Any]


_cached: InterpreterPackage | None = None


def _resolve(preferred: str | None = None) -> InterpreterPackage:
    tried = []
    for dist, module, attr in _CANDIDATES:
        if preferred is not None and dist != preferred:
            continue
        try:
            mod = importlib.import_module(module)
        except ImportError as exc:
            tried.append(f"{dist} ({exc.__class__.__name__}: {exc})")
            continue
        obj: Any = mod
        for part in attr.split("."):
            obj = getattr(obj, part)
        try:
            version = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            version = getattr(mod, "__version__", "unknown")
        return InterpreterPackage(dist, version, obj)
    raise RuntimeMissingError(
        "no tflite interpreter found; tried "
        + "; ".join(tried)
        + ". Install one: pip install ai-edge-litert  (or: pip install tflite-runtime 'numpy<2', "
        "or: pip install tensorflow)"
    )


def interpreter_package(preferred: str | None = None) -> InterpreterPackage:
    """Return the interpreter package, importing it on first use only.

    ``preferred`` (or the ``EDGE_INTERPRETER`` environment variable) forces one distribution.
    """
    global _cached
    import os

    preferred = preferred or os.environ.get("EDGE_INTERPRETER") or None
    if _cached is None or (preferred and _cached.name != preferred):
        _cached = _resolve(preferred)
    return _cached


_BANNER = b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU."
_first = True
_first_output: list[bytes] = []


def first_native_output() -> list[str]:
    """What the native library wrote on descriptor 2 while this process created its first interpreter
    (where XNNPACK starts: its banner, or "Error in cpuinfo" when CPU detection fails); [] before that."""
    return [line.decode("utf-8", "replace").rstrip() for line in _first_output]


def _flush_c_streams() -> None:
    """``fflush(NULL)``: write out what the C library buffers for every open stdio stream."""
    try:
        ctypes.CDLL(None).fflush(None)
    except (OSError, AttributeError):  # no C library to ask (not seen on Linux or macOS)
        pass


_capture_lock = threading.RLock()


@contextlib.contextmanager
def captured_stderr():
    """File descriptor 2 (where native libraries write) sent to a temporary file for the block.

    Yields a list that receives the captured lines (bytes) when the block ends, however it ends;
    the caller decides what to pass on. Without a usable descriptor 2 nothing is captured. One block
    at a time per process (threads wait): two overlapping ones would each restore the other's file.
    """
    lines: list[bytes] = []
    with _capture_lock:
        try:
            sys.stderr.flush()
            saved = os.dup(2)
        except (OSError, ValueError):  # embedded, or descriptor 2 closed
            yield lines
            return
        with tempfile.TemporaryFile() as tmp:
            os.dup2(tmp.fileno(), 2)
            try:
                yield lines
            finally:
                _flush_c_streams()  # what a native library left in a stdio buffer belongs to the block
                os.dup2(saved, 2)
                os.close(saved)
                tmp.seek(0)
                lines.extend(tmp.readlines())


@contextlib.contextmanager
def _without_banner():
    """Drop the XNNPACK banner the native library prints once per process on descriptor 2.

    Everything else written there meanwhile (other threads included) is passed on afterwards.
    """
    global _first
    if not _first:
        yield
        return
    _first = False
    lines: list[bytes] = []
    try:
        with captured_stderr() as lines:
            yield
    finally:
        _first_output.extend(lines)
        rest = b"".join(line for line in lines if not line.startswith(_BANNER))
        if rest:
            os.write(2, rest)


def make_interpreter(model_content: bytes, num_threads: int = 1, xnnpack: bool = True) -> Any:
    """Create an interpreter for one ``.tflite`` flatbuffer, tensors allocated."""
    pkg = interpreter_package()
    kwargs: dict[str, Any] = {"model_content": model_content, "num_threads": num_threads}
    if not xnnpack:
        # Builtin kernels only: the resolver without default delegates.
        resolver = getattr(importlib.import_module(pkg.factory.__module__), "OpResolverType", None)
        if resolver is not None:
            kwargs["experimental_op_resolver_type"] = resolver.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    with _without_banner():
        interp = pkg.factory(**kwargs)
        interp.allocate_tensors()
    return interp


class SharedWeightsModel:
    """One ``.tflite`` run through ai-edge-litert's ``CompiledModel`` with XNNPACK's in-memory weight cache,
    so that every op reading the same constant shares one packed copy of it.

    The plain ``Interpreter`` packs a weight once per op that uses it. A T-block graph unrolls its
    recurrence, so the recurrent weights of every LSTM are packed once per hop: 32 copies at T = 32,
    megabytes that no longer fit a core's L2 and stream from L3 or DRAM at every hop. With the cache they
    are packed once. Same kernels, same results; only ai-edge-litert has it (``make_shared_weights_model``
    returns None elsewhere).
    """

    def __init__(self, model: Any, signature: str):
        self._m, self._sig = model, signature
        self.inputs: dict[str, dict] = dict(model.get_input_tensor_details(signature))
        """Signature name -> {"name": tensor name, "shape", "dtype"}."""
        self.outputs: dict[str, dict] = dict(model.get_output_tensor_details(signature))
        self._in = {k: model.create_input_buffer_by_name(signature, k) for k in self.inputs}
        self._out = {k: model.create_output_buffer_by_name(signature, k) for k in self.outputs}
        self._size = {k: (int(np.prod(d["shape"])), tuple(d["shape"]), np.dtype(d["dtype"]))
                      for k, d in self.outputs.items()}

    def set(self, name: str, value: np.ndarray) -> None:
        self._in[name].write(value)

    def invoke(self) -> None:
        self._m.run_by_name(self._sig, self._in, self._out)

    def get(self, name: str) -> np.ndarray:
        n, shape, dtype = self._size[name]
        return self._out[name].read(n, dtype).reshape(shape)


_environment: Any = None
_shared_failed: list[str] = []

# What ai-edge-litert 2.3's compiled-model environment needs of the CPU: it loads its GPU accelerator
# library, which is built for these features and ends the process (SIGILL, "go/sigill-fail-fast") on a CPU
# without them -- on aarch64 a Raspberry Pi 5 (Cortex-A76) has them, a Pi 4 (Cortex-A72) does not. Names as
# /proc/cpuinfo prints them.
COMPILED_MODEL_NEEDS = {
    "aarch64": frozenset({"aes", "atomics", "crc32", "asimddp", "fphp", "asimdhp", "asimdrdm", "lrcpc", "sha2"}),
    "x86_64": frozenset({"aes", "avx", "mmx", "pclmulqdq", "popcnt", "sse", "sse2", "pni", "ssse3", "sse4_1",
                         "sse4_2", "cx16"}),
}


def cpu_missing_for_compiled_model(cpuinfo: str | None = None, machine: str | None = None) -> list[str]:
    """The CPU features the compiled-model runtime needs that this CPU lacks ([] when none), from
    ``/proc/cpuinfo`` (or the ``cpuinfo`` text) and ``machine`` (default: this one's). Where there is no
    cpuinfo to read, or the architecture is not in ``COMPILED_MODEL_NEEDS``, it says so in the one entry:
    the runtime is then not tried."""
    import platform

    machine = machine or platform.machine().lower()
    machine = {"arm64": "aarch64", "amd64": "x86_64"}.get(machine, machine)
    needs = COMPILED_MODEL_NEEDS.get(machine)
    if needs is None:
        return [f"a known CPU ({machine})"]
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
                cpuinfo = f.read()
        except OSError:
            return ["/proc/cpuinfo"]
    have: set[str] | None = None
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            feats = set(value.split())
            have = feats if have is None else have & feats  # every core must have it
    if have is None:
        return ["/proc/cpuinfo"]
    return sorted(needs - have)


def make_shared_weights_model(model_content: bytes, num_threads: int = 1) -> SharedWeightsModel | None:
    """A ``SharedWeightsModel`` for the flatbuffer, or None where the interpreter in use is not ai-edge-litert
    or its ``CompiledModel`` cannot take the model (the caller then uses ``make_interpreter``; why is kept in
    ``shared_weights_unavailable()``)."""
    global _environment
    if interpreter_package().name != "ai-edge-litert" or _shared_failed:
        return None
    missing = cpu_missing_for_compiled_model()
    if missing:
        _shared_failed.append(f"this CPU lacks {', '.join(missing)}, which ai-edge-litert's compiled-model runtime "
                              "is built for (loading it would end the process)")
        return None
    try:
        # Importing the compiled-model API, creating its environment and the first run log what they load
        # and that there is no NPU: not news for a CPU runtime. Those lines are dropped; anything else
        # written meanwhile (another thread's progress line, an error) is passed on.
        with captured_stderr() as lines:
            from ai_edge_litert.compiled_model import CompiledModel
            from ai_edge_litert.cpu_options import CpuOptions
            from ai_edge_litert.environment import Environment
            from ai_edge_litert.options import Options as LiteRtOptions

            if _environment is None:
                _environment = Environment.create()
                # One environment per process, never released: when it goes (at the latest as the process
                # ends, after anything could capture descriptor 2) the runtime logs a line per accelerator.
                ctypes.pythonapi.Py_IncRef(ctypes.py_object(_environment))
            options = LiteRtOptions(cpu_options=CpuOptions(num_threads=num_threads,
                                                           xnnpack_weight_cache_path=":memory:"))
            model = CompiledModel.from_buffer(model_content, environment=_environment, options=options)
            signatures = list(model.get_signature_list())
            if len(signatures) != 1:
                raise ValueError(f"{len(signatures)} signatures")
            shared = SharedWeightsModel(model, signatures[0])
            # The first run logs too (and lets out what the runtime's logger still held): run once on
            # zeros while the output is captured.
            for name, d in shared.inputs.items():
                shared.set(name, np.zeros(d["shape"], np.dtype(d["dtype"])))
            shared.invoke()
        _pass_on(lines)
        return shared
    except (ImportError, AttributeError, RuntimeError, ValueError, TypeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        _shared_failed.append(f"{exc.__class__.__name__}: {first}")
        return None


_RUNTIME_LOG = re.compile(rb"^(?:INFO|WARNING|VERBOSE|DEBUG): \[[\w./-]+:\d+\]|^\s*\xe2\x94\x94 ")
"""A LiteRT log line below ERROR (``INFO: [environment.cc:36] ...``) or its continuation (``└ ...``)."""


def _pass_on(lines: list[bytes]) -> None:
    rest = b"".join(line for line in lines if not _RUNTIME_LOG.match(line))
    if rest:
        os.write(2, rest)


def shared_weights_used() -> bool:
    """Whether this process made a ``SharedWeightsModel`` (and so holds a compiled-model environment)."""
    return _environment is not None


def silence_native_teardown() -> None:
    """Send descriptor 2 to /dev/null for the rest of the process, after flushing Python's streams.

    For a command whose work is done: ai-edge-litert's compiled-model environment logs an INFO line per
    accelerator from C++ destructors that run after Python has finished (nothing can capture them there).
    """
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        os.close(devnull)
    except OSError:
        pass


def shared_weights_unavailable() -> str | None:
    """Why ``make_shared_weights_model`` gave None the first time it did in this process, else None."""
    return _shared_failed[0] if _shared_failed else None
