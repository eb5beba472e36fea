"""Many streams per invoke: the ready hops of B streams through one interpreter per submodel, states [B, ...].

A bundle may offer batch-axis submodels in its manifest's ``streams`` section (written by
``python -m convert.streams``): the per-block submodels with a batch of independent streams instead of
one, each row a stream with its own state rows. Two kinds:

- ``"resizable": true``: the graphs' batch axis is dynamic; the manifest lists them at batch 1 and
  ``batch`` is the most streams one engine takes. The engine resizes a copy of each graph to the
  batch a call needs (1, 2, 4, 8, 16, 24 or 32 rows: more ready streams run as several calls of at most
  ``CALL_ROWS``), made on first use and dropped when unused for ``IDLE_SIZE_S``, so a call costs about what
  its ready streams cost and the memory follows the load, up to seven sizes whatever the load.
- fixed: the graphs take exactly ``batch`` rows; idle rows are padding.

``BatchEngine`` owns those interpreters (one copy of the packed weights per size) for up to its
capacity of streams; each stream keeps only its framing buffers and its state rows. Every ``process``
call runs the hops that are ready, one batch per round: round r takes the r-th ready hop of every stream
that has one. Output is delay compensated like ``edge.stream.AlignedStream``: sample k of a stream's
output is its input sample k, and ``flush`` returns the rest (total out == total in). A stream's output
equals running it alone (``edge.denoise``) within the mode's tolerance.

Not thread-safe: one engine per thread, like an interpreter.
"""

from __future__ import annotations

import ctypes
import time
from collections import deque
from dataclasses import dataclass, replace
from typing import Any, Collection, Mapping, Sequence

import numpy as np

from .bundle import MANIFEST, Bundle, SubmodelSpec, check_interpreter, parse_submodel
from .errors import BundleError, EdgeError
from .families import family_class
from .interpreter import make_interpreter
from .level import AutoLevel
from .options import Options
from .stream import Aligner, check_audio, windows
from .submodel import _quantizer
from .tblock import _same_tensor

SECTION = "streams"
RECENT_CALLS = 4096
"""Batch calls whose row counts an engine keeps (``BatchEngine.ticks``)."""
CALL_ROWS = 32
"""The most rows of one interpreter call of resizable graphs; more ready streams run as several calls. XNNPACK's
time per row is flat from 24-32 rows up (published DTLN, dynamic, one thread: 20.5 us per row at 32, 19.3 at
48, 21.3 at 96, 21.6 at 128; the PoCoNet-style U-Net 184-204 us at 24-128), so pieces of 32 cost what one large
call does, while every size is an interpreter of its own: for DTLN ~1.8 MB of packed weights plus ~28 KB per
row of activations. With sizes up to 32 an engine holds at most seven (~15 MB); with one per size up to 112 it
held 14 (~43 MB) at 100 streams (session 17, ``/proc`` RSS)."""
IDLE_SIZE_S = 30.0
"""An interpreter of a batch size no call has used for this long is dropped (~2 MB each for DTLN): a
daemon's memory follows the load it serves now, not the highest it ever saw."""


@dataclass(frozen=True)
class StreamsSpec:
    """The manifest's ``streams`` section: submodels taking up to ``batch`` independent streams per call."""

    batch: int
    resizable: bool
    submodels: tuple[SubmodelSpec, ...]
    verification: Mapping[str, Any]


def _check_rows(pb: SubmodelSpec, bs: SubmodelSpec, rows: int, where: str) -> None:
    """Every tensor of the batch graph is the per-block one with ``rows`` rows on axis 0."""
    if bs.states != pb.states or (bs.data_input, bs.data_output) != (pb.data_input, pb.data_output):
        raise BundleError(f"{where}: tensors {dict(bs.states)}, {bs.data_input} -> {bs.data_output} differ from "
                          f"the per-block submodel's {dict(pb.states)}, {pb.data_input} -> {pb.data_output}")
    for got, want in [(bs.input(t.name), t) for t in pb.inputs] + [(bs.output(t.name), t) for t in pb.outputs]:
        expect = (rows, *want.shape[1:])
        if want.shape[:1] != (1,) or not _same_tensor(got, replace(want, shape=expect)):
            raise BundleError(f"{where}: {got.name} is {got.dtype}{list(got.shape)}; with batch {rows} the "
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
    resizable = sec.get("resizable", False)
    if not isinstance(resizable, bool):
        raise BundleError(f"{mpath} {SECTION}: 'resizable' should be true or false, got {resizable!r}")
    entries = sec.get("submodels")
    if not isinstance(entries, list):
        raise BundleError(f"{mpath} {SECTION}: 'submodels' should be a list, got {entries!r}")
    subs = tuple(parse_submodel(bundle.path, sd, f"{mpath} {SECTION} submodels[{i}]")
                 for i, sd in enumerate(entries))
    if [s.name for s in subs] != [s.name for s in bundle.submodels]:
        raise BundleError(f"{mpath} {SECTION}: submodels {[s.name for s in subs]} should be the per-block ones "
                          f"{[s.name for s in bundle.submodels]}, in that order")
    for pb, bs in zip(bundle.submodels, subs, strict=True):
        _check_rows(pb, bs, 1 if resizable else batch, f"{bundle.path}/{bs.file}")
    return StreamsSpec(batch=batch, resizable=resizable, submodels=subs,
                       verification=dict(sec.get("verification", {})))


def batch_size(rows: int, capacity: int) -> int:
    """The graph batch one call of ``rows`` ready streams (at most ``CALL_ROWS``) runs at, resizable graphs:
    1, 2, 4, 8, then multiples of 8, at most ``capacity``. Few sizes (each one an interpreter), little padding:
    a padded row costs what a stream does once calls are 16 rows or more."""
    if rows <= 8:
        size = 1 << max(0, rows - 1).bit_length()
    else:
        size = -(-rows // 8) * 8
    return min(size, capacity)


def pieces(rows: int, capacity: int) -> list[tuple[int, int, int]]:
    """The calls that run ``rows`` ready streams through resizable graphs: (first row, end row, graph batch)
    each; whole pieces of ``CALL_ROWS`` (or ``capacity`` if less), then the rest at ``batch_size``."""
    step = min(CALL_ROWS, capacity)
    return [(a, min(a + step, rows), batch_size(min(step, rows - a), capacity)) for a in range(0, rows, step)]


class _Sized:
    """One interpreter of a batch-axis submodel at one batch size, with its input buffers."""

    def __init__(self, it: Any, index: dict[str, int], spec: SubmodelSpec, size: int):
        self.it = it
        self.data_in, self.data_out = index[spec.data_input], index[spec.data_output]
        self.state_io = [(index[i], index[o]) for i, o in spec.states]
        self.x = np.zeros((size, *spec.input(spec.data_input).shape[1:]), np.float32)
        self.states = [np.zeros((size, *spec.input(i).shape[1:]), np.dtype(spec.input(i).dtype))
                       for i, _ in spec.states]


class _BatchRunner:
    """One batch-axis submodel: the state rows of every slot; ``frames`` runs the rows of the slots in
    ``ready`` through an interpreter of the batch size the call needs."""

    def __init__(self, bundle: Bundle, spec: SubmodelSpec, options: Options, capacity: int, resizable: bool):
        self._bundle, self._spec, self._options = bundle, spec, options
        self._capacity, self._resizable = capacity, resizable
        self._sized: dict[int, _Sized] = {}
        self._used: dict[int, float] = {}
        """Batch size -> when a call last ran at it (``time.monotonic``)."""
        self._in_shape = tuple(spec.input(spec.data_input).shape[1:])
        self._out_shape = tuple(spec.output(spec.data_output).shape[1:])
        self._q_in, _ = _quantizer(spec.input(spec.data_input))
        _, self._dq_out = _quantizer(spec.output(spec.data_output))
        self.states = []
        for s_in, s_out in spec.states:
            tin, tout = spec.input(s_in), spec.output(s_out)
            if (tin.dtype, tin.scale, tin.zero_point) != (tout.dtype, tout.scale, tout.zero_point):
                raise BundleError(f"{bundle.path}/{spec.file}: state {s_in} -> {s_out} changes quantisation; "
                                  "batch graphs are made for float-activation modes only")
            self.states.append(_quantizer(tin)[0](np.zeros((capacity, *tin.shape[1:]), np.float32)))
        self._first = 1 if resizable else capacity
        self._get(self._first)  # load and check the graph now, not at the first hop
        self.ready: np.ndarray = np.zeros(0, np.intp)
        """Slots whose rows the next ``frames`` call carries, in row order."""

    @property
    def sizes(self) -> list[int]:
        """The batch sizes with an interpreter now (made on first use, dropped after ``IDLE_SIZE_S`` unused)."""
        return sorted(self._sized)

    def _get(self, size: int) -> _Sized:
        sized = self._sized.get(size)
        if sized is not None:
            return sized
        spec = self._spec
        it = make_interpreter(spec.content, self._options.num_threads, self._options.xnnpack)
        index = check_interpreter(self._bundle, spec, it)
        if self._resizable and size != 1:
            for t in spec.inputs:
                it.resize_tensor_input(index[t.name], [size, *t.shape[1:]])
            try:
                it.allocate_tensors()
            except (RuntimeError, ValueError) as exc:
                raise BundleError(f"{self._bundle.path}/{spec.file}: cannot resize its batch to {size} "
                                  f"({str(exc).strip().splitlines()[0]}); is it really resizable?") from None
        sized = self._sized[size] = _Sized(it, index, spec, size)
        return sized

    def drop_idle(self, now: float) -> int:
        """Drop the interpreters of sizes unused for ``IDLE_SIZE_S`` (the first one made stays); how many went."""
        idle = [size for size, when in self._used.items() if now - when > IDLE_SIZE_S and size != self._first]
        for size in idle:
            del self._sized[size], self._used[size]
        return len(idle)

    def reset_slot(self, slot: int) -> None:
        for s in self.states:
            s[slot] = 0

    def frames(self, x: np.ndarray) -> np.ndarray:
        """``x``: (1, rows, ...) for the slots in ``ready``; returns the outputs likewise."""
        rows = self.ready
        k = len(rows)
        x = x.reshape(k, *self._in_shape)
        if not self._resizable:
            out = self._call(rows, x, self._capacity)
        elif k <= CALL_ROWS:
            out = self._call(rows, x, batch_size(k, self._capacity))
        else:
            out = np.empty((k, *self._out_shape), np.float32)
            for a, b, size in pieces(k, self._capacity):
                out[a:b] = self._call(rows[a:b], x[a:b], size)
        return out.reshape(1, k, *out.shape[2:])

    def _call(self, rows: np.ndarray, x: np.ndarray, size: int) -> np.ndarray:
        """One invoke at graph batch ``size`` for the slots ``rows`` (inputs ``x``, one row each): their outputs;
        their state rows are updated."""
        k = len(rows)
        sz = self._get(size)
        self._used[size] = time.monotonic()
        it = sz.it
        sz.x[:k] = x
        sz.x[k:] = 0.0
        it.set_tensor(sz.data_in, self._q_in(sz.x))
        for st, buf, (i, _) in zip(self.states, sz.states, sz.state_io, strict=True):
            buf[:k] = st[rows]
            it.set_tensor(i, buf)
        it.invoke()
        for st, (_, o) in zip(self.states, sz.state_io, strict=True):
            st[rows] = it.get_tensor(o)[:k]
        return self._dq_out(it.get_tensor(sz.data_out)[:k])


def _give_back_memory() -> None:
    """Hand freed heap pages back to the system (glibc keeps them, so RSS would not fall after interpreters
    go); elsewhere nothing to do."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (AttributeError, OSError, TypeError):
        pass


class _Slot:
    """One stream's framing and delay compensation: what ``AlignedStream`` keeps, less the interpreters."""

    def __init__(self, latency: int):
        self.pending = np.zeros(0, np.float32)
        """Input samples not yet in a hop."""
        self.align = Aligner(latency)


class BatchEngine:
    """Up to ``capacity`` streams through one interpreter per submodel and batch size (``streams`` graphs).

    ``capacity``: for resizable graphs, at most the manifest's ``batch`` (default: that); fixed graphs
    take exactly their batch.
    """

    def __init__(self, bundle: Bundle, options: Options | None = None, capacity: int | None = None):
        self.spec = parse_streams(bundle)
        self._bundle = bundle
        options = options or Options()
        cap = self.spec.batch if capacity is None else capacity
        if not 1 <= cap <= self.spec.batch or (cap != self.spec.batch and not self.spec.resizable):
            raise EdgeError(f"{bundle.path}: capacity {cap}: its {SECTION} graphs take "
                            + (f"1 to {self.spec.batch} streams" if self.spec.resizable
                               else f"exactly {self.spec.batch} streams"))
        self._cap = cap
        self._runners = {sm.name: _BatchRunner(bundle, sm, options, cap, self.spec.resizable)
                         for sm in self.spec.submodels}
        self._n, self._s = bundle.block_len, bundle.block_shift
        self._family = family_class(bundle)(bundle, self._runners, lambda spec: np.fft.irfft(spec, self._n))
        if not hasattr(self._family, "steps"):
            raise BundleError(f"{bundle.path}: family {bundle.family} has no multi-row step")
        self._ana, self._syn = windows(bundle.window, self._n, self._s)
        self._inbuf = np.zeros((cap, self._n))
        self._outbuf = np.zeros((cap, self._n))
        self._level = AutoLevel(cap, self._s, bundle.sample_rate) if options.auto_level else None
        self._slots: dict[int, _Slot] = {}
        self._swept = time.monotonic()
        self.ticks: deque[int] = deque(maxlen=RECENT_CALLS)
        """Rows of the recent batch calls (status figures; bounded: a daemon runs for months)."""

    @property
    def bundle(self) -> Bundle:
        return self._bundle

    @property
    def capacity(self) -> int:
        return self._cap

    @property
    def open_streams(self) -> int:
        return len(self._slots)

    @property
    def sizes(self) -> list[int]:
        """Batch sizes with an interpreter now (the first submodel's)."""
        return next(iter(self._runners.values())).sizes

    @property
    def latency_samples(self) -> int:
        return self._bundle.latency_samples

    def open(self) -> int:
        """A new stream: its slot number (zero states, empty buffers)."""
        free = next((k for k in range(self._cap) if k not in self._slots), None)
        if free is None:
            raise EdgeError(f"all {self._cap} streams of this engine are in use")
        for r in self._runners.values():
            r.reset_slot(free)
        self._inbuf[free] = 0.0
        self._outbuf[free] = 0.0
        if self._level is not None:
            self._level.reset(free)
        self._slots[free] = _Slot(self.latency_samples)
        return free

    def close(self, slot: int) -> None:
        self._slot(slot)
        del self._slots[slot]

    def _slot(self, slot: int) -> _Slot:
        try:
            return self._slots[slot]
        except KeyError:
            raise EdgeError(f"stream {slot} is not open (open: {sorted(self._slots)})") from None

    def process(self, chunks: Mapping[int, np.ndarray], checked: bool = False,
                tails: Collection[int] = ()) -> dict[int, np.ndarray]:
        """Feed each open stream its audio (any length, float in [-1, 1]); return each one's aligned float32
        samples now ready. ``checked``: the caller made the audio itself from int16 PCM (1-D float32, in range),
        so it is not scanned again. ``tails``: streams whose chunk is the ``tail_samples`` zeros that push
        out the rest of their output (not input: it adds no output of its own); several streams can end in
        one call this way, each then ``close``d."""
        if not checked:
            chunks = {slot: check_audio(x, self._bundle.sample_rate) if slot not in tails else x
                      for slot, x in chunks.items()}
        return self._feed(chunks, tails)

    def tail_samples(self, slot: int) -> int:
        """Zeros that push out every output sample of ``slot`` not returned yet."""
        st = self._slot(slot)
        hops = -(-(st.align.to_drop + st.align.owed) // self._s)
        return max(0, hops * self._s - len(st.pending))

    def steady(self, slot: int) -> bool:
        """Whether ``slot`` can take ``process_steady`` rows: no input samples wait for a hop and the model's
        delay is already dropped from its output (true for every stream after its first chunks when it is
        fed whole hops)."""
        st = self._slot(slot)
        return not len(st.pending) and not st.align.to_drop

    def process_steady(self, slots: Sequence[int], x: np.ndarray,
                       others: Mapping[int, np.ndarray] | None = None, tails: Collection[int] = (),
                       checked: bool = False) -> tuple[np.ndarray, dict[int, np.ndarray]]:
        """``process`` with the common case done as arrays: ``x`` (rows, k * block_shift) float32 in [-1, 1]
        is whole hops for the ``steady`` streams ``slots``, in that order; their output is the same shape,
        row for row, with no per-stream work. ``others`` (and ``tails``) go as in ``process`` (``checked``),
        in the same batch calls. Returns (the steady rows' output, the others' outputs). ``checked``: the caller
        has just asked ``steady`` of each of ``slots`` (the daemon's ticks), so it is not asked again."""
        s = self._s
        rows = np.asarray(slots, np.intp)
        if x.ndim != 2 or x.shape[0] != len(rows) or x.shape[1] % s:
            raise EdgeError(f"expected ({len(rows)}, k * {s}) samples for {len(rows)} steady streams, "
                            f"got shape {x.shape}")
        if len(set(slots)) != len(rows) or (others and not set(slots).isdisjoint(others)):
            raise EdgeError(f"each stream at most once per call: steady {list(slots)}, others {sorted(others or ())}")
        for k in () if checked else slots:  # whole hops in and out, nothing to drop: no per-stream bookkeeping
            if not self.steady(k):
                raise EdgeError(f"stream {k} is not steady (samples waiting for a hop, or its delay not yet "
                                "dropped): give it to process()")
        k = x.shape[1] // s
        hops = x.reshape(len(rows), k, s).astype(np.float32, copy=False)
        if not others:
            return self._rounds(rows, np.full(len(rows), k), hops).reshape(len(rows), k * s), {}
        o_slots, o_counts, o_hops = self._gather(others, tails)
        outs: dict[int, np.ndarray] = {slot: np.zeros(0, np.float32) for slot in others}
        t = max(k, o_hops.shape[1])
        allhops = np.zeros((len(rows) + len(o_slots), t, s), np.float32)
        allhops[:len(rows), :k] = hops
        allhops[len(rows):, :o_hops.shape[1]] = o_hops
        raw = self._rounds(np.concatenate([rows, o_slots]),
                           np.concatenate([np.full(len(rows), k), o_counts]), allhops)
        self._scatter(o_slots, o_counts, raw[len(rows):], outs)
        return raw[:len(rows), :k].reshape(len(rows), k * s), outs

    def _gather(self, chunks: Mapping[int, np.ndarray],
                tails: Collection[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Append each chunk to its stream's waiting samples; take the whole hops: (slots that have one,
        hops each, (slots, most hops, block_shift) samples)."""
        s = self._s
        for slot, x in chunks.items():
            st = self._slot(slot)
            x = x.astype(np.float32, copy=False)
            st.pending = np.concatenate([st.pending, x]) if len(st.pending) else x
            if slot not in tails:
                st.align.owed += len(x)
        slots = np.asarray([k for k in chunks if len(self._slots[k].pending) >= s], np.intp)
        counts = np.asarray([len(self._slots[k].pending) // s for k in slots], np.intp)
        hops = np.zeros((len(slots), int(counts.max()) if len(slots) else 0, s), np.float32)
        for j, k in enumerate(slots):
            st = self._slots[int(k)]
            c = counts[j]
            hops[j, :c] = st.pending[:c * s].reshape(c, s)
            st.pending = st.pending[c * s:]
        return slots, counts, hops

    def _scatter(self, slots: np.ndarray, counts: np.ndarray, raw: np.ndarray, outs: dict[int, np.ndarray]) -> None:
        """Each stream's aligned output from its rows of ``raw``."""
        for j, k in enumerate(slots):
            outs[int(k)] = self._slots[int(k)].align(raw[j, :counts[j]].reshape(-1))

    def _feed(self, chunks: Mapping[int, np.ndarray], tails: Collection[int] = ()) -> dict[int, np.ndarray]:
        slots, counts, hops = self._gather(chunks, tails)
        outs: dict[int, np.ndarray] = {k: np.zeros(0, np.float32) for k in chunks}
        if len(slots):
            self._scatter(slots, counts, self._rounds(slots, counts, hops), outs)
        return outs

    def _rounds(self, slots: np.ndarray, counts: np.ndarray, hops: np.ndarray) -> np.ndarray:
        """Round r: hop r of every stream that has one, as one batch. Returns the raw output hops likewise."""
        n, s = self._n, self._s
        raw = np.zeros(hops.shape, np.float32)
        every = int(counts.min()) if len(counts) else 0
        for r in range(hops.shape[1]):
            sel = slice(None) if r < every else np.flatnonzero(counts > r)  # every stream has hop r: no gather
            rows = slots[sel]
            if not len(rows):
                continue
            for runner in self._runners.values():
                runner.ready = rows
            frames = self._inbuf[rows]
            frames[:, n - s:] = hops[sel, r]
            spec = np.fft.rfft(frames if self._ana is None else frames * self._ana, axis=-1)
            if self._level is None:
                out = self._family.steps(spec)
            else:
                g = self._level.gains(rows, hops[sel, r])[:, None]
                out = self._family.steps(spec * g) / g
            if self._syn is not None:
                out = out * self._syn
            self._inbuf[rows, :n - s] = frames[:, s:]
            acc = self._outbuf[rows]
            acc[:, :-s] = acc[:, s:]
            acc[:, -s:] = 0.0
            acc += out
            self._outbuf[rows] = acc
            raw[sel, r] = acc[:, :s]
            self.ticks.append(len(rows))
        now = time.monotonic()
        if now - self._swept > 1.0:
            self.drop_idle_sizes(now)
        return raw

    def drop_idle_sizes(self, now: float | None = None) -> None:
        """Drop the interpreters of batch sizes no call used for ``IDLE_SIZE_S`` seconds before ``now``
        (default: now); calls do this themselves about once a second."""
        now = time.monotonic() if now is None else now
        self._swept = now
        if sum(runner.drop_idle(now) for runner in self._runners.values()):
            _give_back_memory()

    def flush(self, slot: int) -> np.ndarray:
        """The output of every input sample of one stream not yet returned (total out == total in); closes it."""
        y = self._feed({slot: np.zeros(self.tail_samples(slot), np.float32)}, tails=(slot,))[slot]
        self.close(slot)
        return y
