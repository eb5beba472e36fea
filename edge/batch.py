"""Many streams per invoke: B streams' ready hops through one interpreter per submodel, states [B, ...].

A bundle may offer batch-axis submodels in its manifest's ``streams`` section (written by
``python -m convert.streams``): the per-block submodels with ``batch`` rows instead of one, each row an
independent stream with its own state rows. ``BatchEngine`` owns one interpreter per submodel (one
copy of the packed weights) for up to ``batch`` streams; each stream keeps only its framing buffers and
its state rows. Every call of ``process`` runs the hops that are ready, one batch per round: round r
takes the r-th ready hop of every stream that has one. A stream's output equals running it alone
(``edge.StreamingDenoiser``) within the mode's tolerance.

Not thread-safe: one engine per thread (or per event loop), like an interpreter.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Mapping

import numpy as np

from .bundle import MANIFEST, Bundle, SubmodelSpec, check_interpreter, parse_submodel
from .errors import BundleError, EdgeError
from .families import family_class
from .interpreter import make_interpreter
from .options import Options
from .stream import check_audio, windows
from .submodel import _quantizer
from .tblock import _same_tensor

SECTION = "streams"


@dataclass(frozen=True)
class StreamsSpec:
    """The manifest's ``streams`` section: submodels taking ``batch`` independent streams per call."""

    batch: int
    submodels: tuple[SubmodelSpec, ...]
    verification: Mapping[str, Any]


def _check_rows(pb: SubmodelSpec, bs: SubmodelSpec, batch: int, where: str) -> None:
    """Every tensor of the batch graph is the per-block one with ``batch`` rows on axis 0."""
    if bs.states != pb.states or (bs.data_input, bs.data_output) != (pb.data_input, pb.data_output):
        raise BundleError(f"{where}: tensors {dict(bs.states)}, {bs.data_input} -> {bs.data_output} differ from "
                          f"the per-block submodel's {dict(pb.states)}, {pb.data_input} -> {pb.data_output}")
    for got, want in [(bs.input(t.name), t) for t in pb.inputs] + [(bs.output(t.name), t) for t in pb.outputs]:
        expect = (batch, *want.shape[1:])
        if want.shape[:1] != (1,) or not _same_tensor(got, replace(want, shape=expect)):
            raise BundleError(f"{where}: {got.name} is {got.dtype}{list(got.shape)}; with batch {batch} the "
                              f"per-block {want.dtype}{list(want.shape)} needs {want.dtype}{list(expect)}")


def parse_streams(bundle: Bundle) -> StreamsSpec:
    """The bundle's ``streams`` section, files and tensors checked; BundleError when it has none."""
    mpath = f"{bundle.path}/{MANIFEST}"
    sec = bundle.manifest.get(SECTION)
    if not isinstance(sec, Mapping):
        raise BundleError(f"{mpath}: no '{SECTION}' section (add one with python -m convert.streams)")
    batch = sec.get("batch")
    if not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
        raise BundleError(f"{mpath} {SECTION}: 'batch' should be an int >= 1, got {batch!r}")
    entries = sec.get("submodels")
    if not isinstance(entries, list):
        raise BundleError(f"{mpath} {SECTION}: 'submodels' should be a list, got {entries!r}")
    subs = tuple(parse_submodel(bundle.path, sd, f"{mpath} {SECTION} submodels[{i}]")
                 for i, sd in enumerate(entries))
    if [s.name for s in subs] != [s.name for s in bundle.submodels]:
        raise BundleError(f"{mpath} {SECTION}: submodels {[s.name for s in subs]} should be the per-block ones "
                          f"{[s.name for s in bundle.submodels]}, in that order")
    for pb, bs in zip(bundle.submodels, subs, strict=True):
        _check_rows(pb, bs, batch, f"{bundle.path}/{bs.file}")
    return StreamsSpec(batch=batch, submodels=subs, verification=dict(sec.get("verification", {})))


class _BatchRunner:
    """One batch-axis submodel: the state rows of every slot; ``frames`` runs the rows in ``ready``."""

    def __init__(self, bundle: Bundle, spec: SubmodelSpec, options: Options):
        self._it = make_interpreter(spec.content, options.num_threads, options.xnnpack)
        index = check_interpreter(bundle, spec, self._it)
        self._in, self._out = index[spec.data_input], index[spec.data_output]
        self._q_in, _ = _quantizer(spec.input(spec.data_input))
        _, self._dq_out = _quantizer(spec.output(spec.data_output))
        self._x = np.zeros(spec.input(spec.data_input).shape, np.float32)
        self._pairs = []
        self.states = []
        for s_in, s_out in spec.states:
            tin, tout = spec.input(s_in), spec.output(s_out)
            if (tin.dtype, tin.scale, tin.zero_point) != (tout.dtype, tout.scale, tout.zero_point):
                raise BundleError(f"{bundle.path}/{spec.file}: state {s_in} -> {s_out} changes quantisation; "
                                  "batch graphs are made for float-activation modes only")
            self._pairs.append((index[s_in], index[s_out]))
            self.states.append(_quantizer(tin)[0](np.zeros(tin.shape, np.float32)))
        self.ready: np.ndarray = np.zeros(0, np.intp)
        """Slots whose rows the next ``frames`` call carries, in row order."""

    def reset_slot(self, slot: int) -> None:
        for s in self.states:
            s[slot] = 0

    def frames(self, x: np.ndarray) -> np.ndarray:
        """``x``: (1, rows, ...) for the slots in ``ready``; returns the outputs likewise."""
        rows = self.ready
        it = self._it
        self._x[rows] = x.reshape(len(rows), *self._x.shape[1:])
        it.set_tensor(self._in, self._q_in(self._x))
        for k, (i, _) in enumerate(self._pairs):
            it.set_tensor(i, self.states[k])
        it.invoke()
        for k, (_, o) in enumerate(self._pairs):
            self.states[k][rows] = it.get_tensor(o)[rows]  # idle slots keep their state
        out = self._dq_out(it.get_tensor(self._out))[rows]
        return out.reshape(1, len(rows), *out.shape[2:])


class _Slot:
    """One stream's framing: what ``StreamingDenoiser`` keeps per stream, less the interpreters."""

    def __init__(self, n: int, s: int):
        self.inbuf, self.outbuf = np.zeros(n), np.zeros(n)
        self.pending = np.zeros(0, np.float32)
        self.samples_in = self.samples_out = 0


class BatchEngine:
    """Up to ``batch`` streams through one interpreter per submodel (the bundle's ``streams`` graphs)."""

    def __init__(self, bundle: Bundle, options: Options | None = None):
        self.spec = parse_streams(bundle)
        self._bundle = bundle
        options = options or Options()
        self._runners = {sm.name: _BatchRunner(bundle, sm, options) for sm in self.spec.submodels}
        self._n, self._s = bundle.block_len, bundle.block_shift
        self._family = family_class(bundle)(bundle, self._runners, lambda spec: np.fft.irfft(spec, self._n))
        if not hasattr(self._family, "steps"):
            raise BundleError(f"{bundle.path}: family {bundle.family} has no multi-row step")
        self._ana, self._syn = windows(bundle.window, self._n, self._s)
        self._slots: dict[int, _Slot] = {}
        self.ticks: list[int] = []
        """Rows of every batch call so far (for status figures: batch sizes)."""

    @property
    def capacity(self) -> int:
        return self.spec.batch

    @property
    def latency_samples(self) -> int:
        return self._bundle.latency_samples

    def open(self) -> int:
        """A new stream: its slot number (zero states, empty buffers)."""
        free = next((k for k in range(self.spec.batch) if k not in self._slots), None)
        if free is None:
            raise EdgeError(f"all {self.spec.batch} streams of this engine are in use")
        for r in self._runners.values():
            r.reset_slot(free)
        self._slots[free] = _Slot(self._n, self._s)
        return free

    def close(self, slot: int) -> None:
        self._slot(slot)
        del self._slots[slot]

    def _slot(self, slot: int) -> _Slot:
        try:
            return self._slots[slot]
        except KeyError:
            raise EdgeError(f"stream {slot} is not open (open: {sorted(self._slots)})") from None

    def process(self, chunks: Mapping[int, np.ndarray]) -> dict[int, np.ndarray]:
        """Feed each open stream its audio (any length); return each one's float32 samples now ready."""
        n, s = self._n, self._s
        for slot, x in chunks.items():
            st = self._slot(slot)
            x = check_audio(x, self._bundle.sample_rate)
            st.pending = np.concatenate([st.pending, x.astype(np.float32, copy=False)])
            st.samples_in += len(x)
        outs = {slot: [] for slot in chunks}
        while True:
            ready = [k for k in chunks if len(self._slots[k].pending) >= s]
            if not ready:
                break
            rows = np.asarray(ready, np.intp)
            for r in self._runners.values():
                r.ready = rows
            frames = np.empty((len(ready), n))
            for j, k in enumerate(ready):
                st = self._slots[k]
                st.inbuf[n - s:] = st.pending[:s]
                st.pending = st.pending[s:]
                frames[j] = st.inbuf
            spec = np.fft.rfft(frames if self._ana is None else frames * self._ana, axis=-1)
            out = self._family.steps(spec)
            if self._syn is not None:
                out = out * self._syn
            self.ticks.append(len(ready))
            for j, k in enumerate(ready):
                st = self._slots[k]
                st.inbuf[:-s] = st.inbuf[s:]
                o = st.outbuf
                o[:-s] = o[s:]
                o[-s:] = 0.0
                o += out[j]
                outs[k].append(o[:s].astype(np.float32))
                st.samples_out += s
        return {k: np.concatenate(v) if v else np.zeros(0, np.float32) for k, v in outs.items()}

    def flush(self, slot: int) -> np.ndarray:
        """Push out the rest of one stream (input length + latency in all) and close it."""
        st = self._slot(slot)
        want = st.samples_in + self.latency_samples - st.samples_out
        parts, got = [], 0
        while got < want:
            y = self.process({slot: np.zeros(self._s - len(st.pending), np.float32)})[slot]
            parts.append(y)
            got += len(y)
        self.close(slot)
        return np.concatenate(parts)[:want] if parts else np.zeros(0, np.float32)
