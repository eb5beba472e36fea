"""Model families: each supplies only its per-block step; framing lives in ``edge.stream``."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Protocol

import numpy as np

from ..bundle import MANIFEST, Bundle
from ..errors import BundleError


@dataclass(frozen=True)
class Opt:
    """What one ``family_options`` entry may hold."""

    kind: str
    """``bool``, ``int``, ``number`` (int or float) or ``str``."""
    required: bool = False
    choices: tuple[str, ...] = ()
    """Allowed strings (``str`` options)."""
    low: float | None = None
    """Smallest allowed value (numbers), inclusive unless ``low_open``."""
    low_open: bool = False
    high: float | None = None
    """Largest allowed value (numbers), inclusive."""

    def problem(self, v: Any) -> str | None:
        """Why ``v`` does not fit, or None."""
        is_num = isinstance(v, (int, float)) and not isinstance(v, bool)
        ok = {"bool": isinstance(v, bool), "int": isinstance(v, int) and not isinstance(v, bool),
              "number": is_num and math.isfinite(v), "str": isinstance(v, str)}[self.kind]
        if not ok:
            return "should be " + {"bool": "a bool", "int": "an integer", "number": "a finite number",
                                   "str": "a string"}[self.kind]
        if self.choices and v not in self.choices:
            return f"should be one of {', '.join(map(repr, self.choices))}"
        if self.low is not None and (v < self.low or (self.low_open and v == self.low)):
            return f"should be {'>' if self.low_open else '>='} {self.low:g}"
        if self.high is not None and v > self.high:
            return f"should be <= {self.high:g}"
        return None


def check_manifest(bundle: Bundle, framing: Mapping[str, tuple], options: Mapping[str, Opt]) -> None:
    """What a family needs of the manifest: its framing (rate, block, shift, window) and its option values.

    A family states the framing it was built and verified for; a model trained with another one is a
    new entry there, not something the runtime guesses.
    """
    where = f"{bundle.path}/{MANIFEST}"
    for key, allowed in framing.items():
        got = getattr(bundle, key)
        if got not in allowed:
            raise BundleError(f"{where}: {key} {got!r} does not fit family {bundle.family!r}, which runs with "
                              f"{key} {' or '.join(map(repr, allowed))}")
    opts = bundle.family_options
    for key in opts:
        if key not in options:
            raise BundleError(f"{where}: unknown family_options key {key!r} for family {bundle.family!r} "
                              f"(known: {', '.join(sorted(options)) or 'none'})")
    for key, opt in options.items():
        if key not in opts:
            if opt.required:
                raise BundleError(f"{where}: family {bundle.family!r} needs family_options[{key!r}]")
            continue
        why = opt.problem(opts[key])
        if why:
            raise BundleError(f"{where}: family_options {key} {opts[key]!r:.40} {why}")


class Runner(Protocol):
    """A submodel driven block by block (tflite, or the Keras reference in ``convert``)."""

    def __call__(self, x: np.ndarray) -> np.ndarray: ...

    def reset(self) -> None: ...


class Family(Protocol):
    """Per-block step of a model family.

    ``step(spec)`` takes the rfft of one analysis frame (complex, ``block_len // 2 + 1`` bins) and
    returns the time-domain frame (``block_len`` float samples) that framing overlap-adds. A family may
    also define ``steps(spec)``: the same over T hops at once, (T, bins) -> (T, block_len), through its
    runners' ``frames`` calls (``edge.tblock``); framing uses it when the bundle offers T-block graphs.
    """

    def __init__(self, bundle: Bundle, runners: dict[str, Runner], irfft: Callable[[np.ndarray], np.ndarray]): ...

    def step(self, spec: np.ndarray) -> np.ndarray: ...

    def reset(self) -> None: ...


def family_class(bundle: Bundle) -> type:
    from .dtln import DTLN
    from .poconet import PoCoNet

    families: dict[str, type] = {"dtln": DTLN, "poconet": PoCoNet}
    try:
        cls = families[bundle.family]
    except KeyError:
        raise BundleError(f"{bundle.path}/{MANIFEST}: unknown family {bundle.family!r} "
                          f"(this runtime knows {', '.join(sorted(families))})") from None
    cls.check(bundle)
    return cls
