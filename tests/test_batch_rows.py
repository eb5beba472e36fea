"""``BatchEngine.process_steady``: the daemon's array path (streams past their first chunks, whole hops) gives
what running each stream alone gives, mixed in one call with streams that start, feed odd lengths or end.

Runtime only (the committed ``small-batched`` bundle): runs on every install, emulated ARM included.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

import edge
from edge.batch import IDLE_SIZE_S, RECENT_CALLS, BatchEngine
from edge.errors import EdgeError

from .conftest import noise_audio

TOL = 1e-5


def test_steady_rows_and_other_streams_in_one_call_match_each_alone(batched_bundle):
    b = edge.load_bundle(batched_bundle)
    eng = BatchEngine(b)
    s = b.block_shift
    chunk = 2 * s
    # Stream k joins at tick 2k and ends (lengths differ) with its tail zeros in a call with the others;
    # stream 3 sends odd lengths, so it is never steady.
    xs = [noise_audio(0.5 + 0.15 * k, seed=40 + k) for k in range(6)]
    lengths = [chunk, chunk, chunk, 301, chunk, chunk]
    slot_of: dict[int, int] = {}
    got: dict[int, list[np.ndarray]] = {k: [] for k in range(6)}
    pos = [0] * 6
    steady_rows = 0
    tick = 0
    ended: set[int] = set()
    while len(ended) < 6:
        tick += 1
        steady, rows, others, tails = [], [], {}, set()
        for k in range(6):
            if tick < 2 * k or k in ended:
                continue
            if k not in slot_of:
                slot_of[k] = eng.open()
            slot = slot_of[k]
            piece = xs[k][pos[k]:pos[k] + lengths[k]]
            if pos[k] >= len(xs[k]):  # its end: the zeros that push out the rest, in the same call
                others[slot] = np.zeros(eng.tail_samples(slot), np.float32)
                tails.add(slot)
                ended.add(k)
            elif len(piece) == chunk and eng.steady(slot):
                steady.append(k)
                rows.append(piece)
            else:
                others[slot] = piece
            pos[k] += lengths[k]
        x = np.stack(rows) if rows else np.zeros((0, chunk), np.float32)
        y, outs = eng.process_steady([slot_of[k] for k in steady], x, others, tails)
        assert y.shape == x.shape
        steady_rows += len(rows)
        for j, k in enumerate(steady):
            got[k].append(y[j])
        for k, slot in slot_of.items():
            if slot in outs:
                got[k].append(outs[slot])
        for slot in tails:
            eng.close(slot)
    assert steady_rows > 20 and not eng.open_streams
    for k in range(6):
        y, want = np.concatenate(got[k]), edge.denoise(xs[k], b)
        assert y.shape == want.shape, k
        assert float(np.max(np.abs(y - want))) <= TOL, k


def test_steady_rows_refuse_streams_that_are_not(batched_bundle):
    b = edge.load_bundle(batched_bundle)
    eng = BatchEngine(b)
    s = b.block_shift
    a, c = eng.open(), eng.open()
    assert not eng.steady(a)  # its delay is still to drop
    with pytest.raises(EdgeError, match=f"stream {a} is not steady"):
        eng.process_steady([a], np.zeros((1, s), np.float32))
    for _ in range(4):
        eng.process({a: noise_audio(s / b.sample_rate, seed=1), c: noise_audio(s / b.sample_rate, seed=2)})
    assert eng.steady(a) and eng.steady(c)
    with pytest.raises(EdgeError, match=r"expected \(2, k \* 128\) samples"):
        eng.process_steady([a, c], np.zeros((2, s + 1), np.float32))
    with pytest.raises(EdgeError, match="each stream at most once"):
        eng.process_steady([a, a], np.zeros((2, s), np.float32))
    with pytest.raises(EdgeError, match="each stream at most once"):
        eng.process_steady([a], np.zeros((1, s), np.float32), {a: np.zeros(5, np.float32)})
    eng.process({a: np.zeros(5, np.float32)})
    assert not eng.steady(a)  # 5 samples wait for a hop


def test_recent_batch_calls_are_bounded(batched_bundle):
    """A daemon runs for months: the engine keeps the row counts of its recent calls only."""
    b = edge.load_bundle(batched_bundle)
    eng = BatchEngine(b)
    slot = eng.open()
    eng.process({slot: np.zeros(b.block_shift * (RECENT_CALLS + 10), np.float32)})
    assert len(eng.ticks) == RECENT_CALLS and set(eng.ticks) == {1}


def test_interpreters_of_sizes_no_call_used_for_a_while_are_dropped(batched_bundle):
    """The memory follows the load: a size unused for IDLE_SIZE_S goes, and is made again when needed."""
    b = edge.load_bundle(batched_bundle)
    eng = BatchEngine(b)
    xs = [noise_audio(0.3, seed=60 + k) for k in range(20)]
    slots = [eng.open() for _ in xs]
    first = eng.process({s: x[:1000] for s, x in zip(slots, xs, strict=True)})
    assert 24 in eng.sizes
    eng.drop_idle_sizes(time.monotonic() + IDLE_SIZE_S / 2)
    assert 24 in eng.sizes  # used recently
    eng.drop_idle_sizes(time.monotonic() + IDLE_SIZE_S + 1)
    assert eng.sizes == [1]  # the first interpreter (made and checked at load) stays
    rest = eng.process({s: x[1000:] for s, x in zip(slots, xs, strict=True)})
    assert 24 in eng.sizes
    for s, x in zip(slots, xs, strict=True):
        y = np.concatenate([first[s], rest[s], eng.flush(s)])
        assert float(np.max(np.abs(y - edge.denoise(x, b)))) <= TOL
