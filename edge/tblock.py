"""T-block submodels: the same network over ``frames`` hops per call, states in and out once per call.

A bundle may offer them in its manifest's ``batched`` section (written by ``python -m convert.batched``).
Where the input is known ahead (a file, or any ``process`` call holding >= ``frames`` ready hops) the
stream runs them instead of ``frames`` per-block calls: one interpreter call, one batched rfft and one
batched irfft per ``frames`` hops. The recurrence still runs hop by hop inside the graph, so the result
is the per-block result (verified at conversion, figures in the manifest).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from .bundle import Bundle, SubmodelSpec, TensorSpec, check_interpreter, parse_submodel
from .errors import BundleError
from .interpreter import SharedWeightsModel, make_interpreter, make_shared_weights_model
from .options import Options
from .submodel import TFLiteSubmodel, _quantizer

SECTION = "batched"


@dataclass(frozen=True)
class BatchedSpec:
    """The manifest's ``batched`` section: submodels taking ``frames`` hops per call."""

    frames: int
    """Hops per call (T)."""
    submodels: tuple[SubmodelSpec, ...]
    """Same names, order, state names and state tensors as the bundle's per-block submodels."""
    verification: Mapping[str, Any]

    def submodel(self, name: str) -> SubmodelSpec:
        return next(sm for sm in self.submodels if sm.name == name)


def _same_tensor(a: TensorSpec, b: TensorSpec) -> bool:
    return (a.shape, a.dtype, a.scale, a.zero_point) == (b.shape, b.dtype, b.scale, b.zero_point)


def _check_pair(per_block: SubmodelSpec, tb: SubmodelSpec, frames: int, where: str) -> None:
    """The T-block graph must take the per-block data with a time axis of ``frames`` and the same states."""
    if tb.states != per_block.states:
        raise BundleError(f"{where}: states {dict(tb.states)} differ from the per-block submodel's "
                          f"{dict(per_block.states)}")
    for s_in, s_out in tb.states:
        for got, want in ((tb.input(s_in), per_block.input(s_in)), (tb.output(s_out), per_block.output(s_out))):
            if not _same_tensor(got, want):
                raise BundleError(f"{where}: state {got.name} is {got.dtype}{list(got.shape)} scale {got.scale}, "
                                  f"the per-block submodel's is {want.dtype}{list(want.shape)} scale {want.scale}")
    for got, want in ((tb.input(tb.data_input), per_block.input(per_block.data_input)),
                      (tb.output(tb.data_output), per_block.output(per_block.data_output))):
        expect = (want.shape[0], frames, *want.shape[2:])
        if len(want.shape) < 2 or want.shape[1] != 1 or got.shape != expect or got.dtype != want.dtype:
            raise BundleError(f"{where}: {got.name} is {got.dtype}{list(got.shape)}; with frames {frames} the "
                              f"per-block {want.dtype}{list(want.shape)} needs {want.dtype}{list(expect)}")


def parse_batched(path: str, m: Mapping[str, Any], mpath: str,
                  per_block: tuple[SubmodelSpec, ...]) -> BatchedSpec | None:
    """The ``batched`` section of a manifest, files checked; None when the bundle has none."""
    sec = m.get(SECTION)
    if sec is None:
        return None
    where = f"{mpath} {SECTION}"
    if not isinstance(sec, dict):
        raise BundleError(f"{where}: should be an object, got {sec!r}")
    frames = sec.get("frames")
    if not isinstance(frames, int) or isinstance(frames, bool) or frames < 2:
        raise BundleError(f"{where}: 'frames' should be an int >= 2, got {frames!r}")
    entries = sec.get("submodels")
    if not isinstance(entries, list):
        raise BundleError(f"{where}: 'submodels' should be a list, got {entries!r}")
    subs = tuple(parse_submodel(path, sd, f"{where} submodels[{i}]") for i, sd in enumerate(entries))
    if [s.name for s in subs] != [s.name for s in per_block]:
        raise BundleError(f"{where}: submodels {[s.name for s in subs]} should be the per-block ones "
                          f"{[s.name for s in per_block]}, in that order")
    for pb, tb in zip(per_block, subs, strict=True):
        _check_pair(pb, tb, frames, f"{path}/{tb.file}")
    return BatchedSpec(frames=frames, submodels=subs, verification=dict(sec.get("verification", {})))


class _ViaInterpreter:
    """A T-block graph through the plain interpreter, addressed by manifest tensor name."""

    def __init__(self, it: Any, index: Mapping[str, int]):
        self._it, self._index = it, index

    def set(self, name: str, value: np.ndarray) -> None:
        self._it.set_tensor(self._index[name], value)

    def invoke(self) -> None:
        self._it.invoke()

    def get(self, name: str) -> np.ndarray:
        return self._it.get_tensor(self._index[name])


def _check_shared(bundle: Bundle, ts: SubmodelSpec, model: SharedWeightsModel) -> None:
    """Every manifest tensor of ``ts`` is in the compiled model's signature with its tensor name, shape and
    dtype, and every model input is fed (as ``check_interpreter`` does for an interpreter)."""
    fpath = f"{bundle.path}/{ts.file}"
    for spec, found in [(t, model.inputs) for t in ts.inputs] + [(t, model.outputs) for t in ts.outputs]:
        d = found.get(spec.name)
        if d is None or d["name"] != spec.tensor:
            raise BundleError(f"{fpath}: tensor {spec.tensor!r} ({spec.name}) not in the model's signature; it has "
                              f"{ {k: v['name'] for k, v in found.items()} }")
        shape, dtype = tuple(int(n) for n in d["shape"]), np.dtype(d["dtype"]).name
        if shape != spec.shape or dtype != spec.dtype:
            raise BundleError(f"{fpath}: tensor {spec.name!r} is {dtype}{list(shape)} in the model, "
                              f"manifest says {spec.dtype}{list(spec.shape)}")
    unfed = sorted(set(model.inputs) - {ts.data_input} - {s_in for s_in, _ in ts.states})
    if unfed:
        raise BundleError(f"{fpath}: model inputs {unfed} are neither the manifest's data input nor in a state pair "
                          "(they would stay zero)")


class _Idle:
    """T-block graphs no stream holds, by (manifest and flatbuffer sha256, threads, XNNPACK, shared weights): at most
    ``per_key`` each, for the next stream in this process (a folder's next file, the next ``denoise`` call)."""

    def __init__(self, per_key: int = 8):
        self._lock = threading.Lock()
        self._free: dict[tuple, list[Any]] = {}
        self._per_key = per_key

    def take(self, key: tuple) -> Any:
        with self._lock:
            free = self._free.get(key)
            return free.pop() if free else None

    def give(self, key: tuple, runner: Any) -> None:
        with self._lock:
            free = self._free.setdefault(key, [])
            if len(free) < self._per_key:
                free.append(runner)


_idle = _Idle()


class TBlockSubmodel(TFLiteSubmodel):
    """A per-block submodel that can also run ``frames`` hops in one call; both calls share the states.

    The T-block graph is loaded on the first ``frames`` call, so a live stream (one hop per call) never
    pays for it. With ai-edge-litert and XNNPACK on it runs as a ``SharedWeightsModel`` (each recurrent
    weight packed once, not once per unrolled hop); elsewhere through the plain interpreter.
    """

    def __init__(self, bundle: Bundle, spec: SubmodelSpec, tspec: SubmodelSpec, options: Options):
        super().__init__(bundle, spec, options)
        self._bundle, self._tspec, self._options = bundle, tspec, options
        self._t: tuple | None = None
        self.shared_weights: bool | None = None
        """Whether the T-block graph runs with shared packed weights; None until it is loaded."""

    def _load(self) -> tuple:
        ts, opts = self._tspec, self._options
        shared_ok = opts.xnnpack and opts.shared_weights and all(t.scale == 0.0 for t in ts.inputs + ts.outputs)
        self._key = (self._bundle.sha256, ts.sha256, opts.num_threads, opts.xnnpack, shared_ok)
        runner: Any = _idle.take(self._key)
        if runner is None and shared_ok:
            # Only float tensors: the compiled model's details carry no quantisation to check against.
            shared = make_shared_weights_model(ts.content, opts.num_threads)
            if shared is not None:
                _check_shared(self._bundle, ts, shared)
                runner = shared
        if runner is None:
            it = make_interpreter(ts.content, opts.num_threads, opts.xnnpack)
            runner = _ViaInterpreter(it, check_interpreter(self._bundle, ts, it))
        self.shared_weights = isinstance(runner, SharedWeightsModel)
        q_in, _ = _quantizer(ts.input(ts.data_input))
        _, dq_out = _quantizer(ts.output(ts.data_output))
        return runner, q_in, dq_out

    def __del__(self) -> None:
        # The graph holds no state (the states go in and out per call): the next stream of this bundle in
        # this process takes it instead of loading and packing it again (~15-30 ms a graph).
        t = getattr(self, "_t", None)
        if t is not None:
            try:
                _idle.give(self._key, t[0])
            except Exception:
                pass

    def frames(self, x: np.ndarray) -> np.ndarray:
        """``x``: the data input with ``frames`` hops on axis 1, float32; returns the data output likewise."""
        if self._t is None:
            self._t = self._load()
        runner, q_in, dq_out = self._t
        ts = self._tspec
        runner.set(ts.data_input, q_in(x))
        states = self._states
        for k, (s_in, _) in enumerate(ts.states):
            runner.set(s_in, states[k])
        runner.invoke()
        for k, (_, s_out) in enumerate(ts.states):
            s = runner.get(s_out)
            conv = self._pairs[k][2]
            states[k] = s if conv is None else conv(s)
        return dq_out(runner.get(ts.data_output))


def runners(bundle: Bundle, options: Options) -> dict[str, TFLiteSubmodel]:
    """One runner per submodel: T-block capable where the bundle offers it."""
    tb = bundle.batched
    if tb is None:
        return {sm.name: TFLiteSubmodel(bundle, sm, options) for sm in bundle.submodels}
    return {sm.name: TBlockSubmodel(bundle, sm, tb.submodel(sm.name), options) for sm in bundle.submodels}
