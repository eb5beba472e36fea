"""The quantisation modes: one table, the only place a mode's rules are written.

A mode names how the TFLite converter quantises (optimisation, float16 weights, integer op set and
calibration), the SNR its bundle must reach against the float Keras reference, the interpreter
packages its files were checked on, the folder a release ships it in, and the graph changes every
family makes for it (see ``GRAPH_CHANGES``).
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import ConvertError

GRAPH_CHANGES = {
    "split_states": "one (1, units) state tensor per h and per c instead of one packed tensor",
    "bounded_cell": "recurrent cell state clipped (integer activations need a bounded range)",
    "runtime_frame_norm": "the runtime divides a frame by its RMS before a submodel sees it",
    "runtime_log": "the runtime feeds log-magnitudes, so no LOG op is in the graph",
    "runtime_bases": "learned analysis/synthesis bases run in the runtime in float32, outside the graph",
}
"""Graph changes a mode may ask for; a family applies those its architecture has and ignores the rest."""

LOG_RUNTIMES = ("ai-edge-litert", "tensorflow>=2.16")
"""Runtimes of an integer graph that still holds a LOG op (LOG v2 kernels)."""


@dataclass(frozen=True)
class Mode:
    """One quantisation mode."""

    name: str
    """``--quantize`` value and the manifest's ``quantization``."""
    folder: str
    """Folder of this mode's bundle in a release (``pretrained_model/NAME/FOLDER``)."""
    tolerance_db: float
    """Minimum SNR (dB) of the bundle's output against the float Keras reference."""
    runtimes: tuple[str, ...]
    """Interpreter packages that load and compute this mode's files correctly (checked: ai-edge-litert 2.3,
    tflite-runtime 2.14)."""
    optimize: bool = False
    """``tf.lite.Optimize.DEFAULT``: weights quantised."""
    float16: bool = False
    """Weights stored as float16."""
    integer_ops: str | None = None
    """``tf.lite.OpsSet`` member for integer activations; set, the mode needs calibration data."""
    graph_changes: frozenset[str] = frozenset()
    """Names from ``GRAPH_CHANGES``."""

    @property
    def calibrated(self) -> bool:
        """Integer activations: ranges come from closed-loop calibration."""
        return self.integer_ops is not None

    def runtimes_for(self, ops: set[str]) -> list[str]:
        """The manifest's ``runtimes`` for a bundle holding ``ops``."""
        if self.calibrated and "LOG" in ops:
            return list(LOG_RUNTIMES)
        return list(self.runtimes)


_INTEGER = frozenset({"split_states", "bounded_cell", "runtime_frame_norm", "runtime_log"})
_EVERYWHERE = ("ai-edge-litert", "tflite-runtime>=2.14", "tensorflow>=2.14")

MODES: dict[str, Mode] = {m.name: m for m in (
    Mode("none", "float32", 80.0, _EVERYWHERE),
    Mode("float16", "float16", 60.0, _EVERYWHERE, optimize=True, float16=True),
    Mode("dynamic", "dynamic", 30.0, ("ai-edge-litert", "tensorflow>=2.16"),  # per-channel FULLY_CONNECTED v12
         optimize=True),
    Mode("int8", "int8", 25.0, _EVERYWHERE, optimize=True, integer_ops="TFLITE_BUILTINS_INT8",
         graph_changes=_INTEGER | {"runtime_bases"}),
    Mode("int16x8", "int16x8", 30.0, ("ai-edge-litert", "tensorflow>=2.16"),  # int16 RSQRT
         optimize=True, integer_ops="EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8",
         graph_changes=_INTEGER),
)}
NAMES = tuple(MODES)
"""Mode names in the order the CLI lists them."""


def mode(name: str | Mode) -> Mode:
    """The mode called ``name`` (a ``Mode`` passes through); ConvertError for any other value."""
    if isinstance(name, Mode):
        return name
    try:
        return MODES[name]
    except (KeyError, TypeError):
        raise ConvertError(f"unknown quantisation mode {name!r}; choose one of {', '.join(NAMES)}") from None
