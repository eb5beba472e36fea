"""The one place that picks a tflite interpreter: ai-edge-litert, then tflite-runtime, then TF."""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import os
import sys
import tempfile
from dataclasses import dataclass
from typing import Any, Callable

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


@contextlib.contextmanager
def captured_stderr():
    """File descriptor 2 (where native libraries write) sent to a temporary file for the block.

    Yields a list that receives the captured lines (bytes) when the block ends, however it ends;
    the caller decides what to pass on. Without a usable descriptor 2 nothing is captured.
    """
    lines: list[bytes] = []
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
