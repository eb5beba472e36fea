"""Model families: each supplies only its per-block step; framing lives in ``edge.stream``."""

from __future__ import annotations

from typing import Callable, Protocol

import numpy as np

from ..bundle import MANIFEST, Bundle
from ..errors import BundleError


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
    from .dtln import DTLN  # noqa: PLC0415
    from .poconet import PoCoNet  # noqa: PLC0415

    families: dict[str, type] = {"dtln": DTLN, "poconet": PoCoNet}
    try:
        cls = families[bundle.family]
    except KeyError:
        raise BundleError(f"{bundle.path}/{MANIFEST}: unknown family {bundle.family!r} "
                          f"(this runtime knows {', '.join(sorted(families))})") from None
    cls.check(bundle)
    return cls
