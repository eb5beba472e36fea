"""User options for a stream (threads, kernels); kept apart from the frozen bundle parameters."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Options:
    """How to run a bundle on this device. Built by the CLI or by the caller; never by argparse here."""

    num_threads: int = 1
    """Interpreter threads per submodel. One is usually best for a single stream on a small CPU."""
    xnnpack: bool = True
    """Use the XNNPACK delegate (the interpreter default). Off = builtin kernels only."""
    shared_weights: bool = True
    """Run T-block graphs with one packed copy of each weight (ai-edge-litert's compiled model with
    XNNPACK's in-memory weight cache, ``edge.interpreter.SharedWeightsModel``) instead of one copy per
    unrolled hop. Same output; off only to compare the two."""
    auto_level: bool = False
    """Bring quiet input up to the level the models were trained at with a slow gain before the model, undone on
    its output (``edge.level``). Input at or above that level is untouched; off = the model sees the input as
    it comes (what a bundle's verification figures describe)."""

    def __post_init__(self) -> None:
        if not isinstance(self.num_threads, int) or self.num_threads < 1:
            raise ValueError(f"num_threads must be an int >= 1, got {self.num_threads!r}")
