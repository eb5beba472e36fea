"""Batched streams (``edge.batch.BatchEngine``): B streams per invoke, each equal to running it alone."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

import edge
from edge.batch import CALL_ROWS, BatchEngine, batch_size, pieces
from edge.errors import BundleError, EdgeError

from .conftest import noise_audio, small_weights

pytest.importorskip("tensorflow", reason="the converter needs TensorFlow (pip install .[convert])")

from convert.errors import ConvertError
from convert.families.dtln import save_weights
from convert.streams import add_to_bundle, main

BATCH = 4
TOL = 1e-5


@pytest.fixture(scope="module")
def streams_bundle(small_bundle, tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("streams")
    save_weights(small_weights(), str(folder / "w.h5"))
    shutil.copytree(small_bundle, folder / "b")
    add_to_bundle(str(folder / "b"), str(folder / "w.h5"), BATCH, [noise_audio(1.3, seed=3)], fixed=True)
    return str(folder / "b")


@pytest.fixture(scope="module")
def resizable_bundle(small_bundle, tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("resizable")
    save_weights(small_weights(), str(folder / "w.h5"))
    shutil.copytree(small_bundle, folder / "b")
    add_to_bundle(str(folder / "b"), str(folder / "w.h5"), 64, [noise_audio(1.3, seed=3)])
    return str(folder / "b")


def alone(bundle, x: np.ndarray) -> np.ndarray:
    return edge.denoise(x, bundle)


def test_each_stream_matches_running_alone(streams_bundle):
    """Streams start at different ticks, feed different chunk sizes, and finish at different times."""
    b = edge.load_bundle(streams_bundle)
    eng = BatchEngine(b)
    xs = [noise_audio(0.6 + 0.2 * k, seed=20 + k) for k in range(BATCH)]
    chunks = (128, 1000, 37, 4096)
    got: dict[int, list] = {}
    slot_of = {}
    pos = [0] * BATCH
    tick = 0
    while tick < 3 * BATCH or any(p < len(x) for p, x in zip(pos, xs, strict=True)):
        tick += 1
        feed = {}
        for k in range(BATCH):
            if tick < 3 * k:  # stream k joins at tick 3k
                continue
            if k not in slot_of:
                slot_of[k] = eng.open()
                got[k] = []
            if pos[k] < len(xs[k]):
                feed[slot_of[k]] = xs[k][pos[k]:pos[k] + chunks[k]]
                pos[k] += chunks[k]
        for slot, y in eng.process(feed).items():
            got[next(k for k, s in slot_of.items() if s == slot)].append(y)
    for k in range(BATCH):
        y = np.concatenate(got[k] + [eng.flush(slot_of[k])])
        want = alone(b, xs[k])
        assert y.shape == want.shape
        assert float(np.max(np.abs(y - want))) <= TOL
    assert max(eng.ticks) == BATCH and min(eng.ticks) >= 1


def test_a_reopened_slot_starts_fresh(streams_bundle):
    b = edge.load_bundle(streams_bundle)
    eng = BatchEngine(b)
    first = eng.open()
    eng.process({first: noise_audio(0.3, seed=1)})
    eng.close(first)
    again = eng.open()
    assert again == first
    x = noise_audio(0.5, seed=2)
    y = np.concatenate([eng.process({again: x})[again], eng.flush(again)])
    assert float(np.max(np.abs(y - alone(b, x)))) <= TOL


def test_capacity_and_unknown_streams(streams_bundle):
    eng = BatchEngine(edge.load_bundle(streams_bundle))
    slots = [eng.open() for _ in range(BATCH)]
    assert sorted(slots) == list(range(BATCH)) and eng.capacity == BATCH
    with pytest.raises(EdgeError, match=f"all {BATCH} streams"):
        eng.open()
    eng.close(slots[0])
    with pytest.raises(EdgeError, match="stream 0 is not open"):
        eng.process({0: np.zeros(128, np.float32)})
    with pytest.raises(edge.AudioError, match="dtype int16"):
        eng.process({slots[1]: np.zeros(128, np.int16)})


def test_bundles_without_or_with_bad_sections(small_bundle, streams_bundle, tmp_path):
    with pytest.raises(BundleError, match="no 'streams' section"):
        BatchEngine(edge.load_bundle(small_bundle))
    path = tmp_path / "bad"
    shutil.copytree(streams_bundle, path)
    m = json.loads((path / "manifest.json").read_text())
    m["streams"]["batch"] = BATCH + 1
    (path / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match=f"with batch {BATCH + 1}"):
        BatchEngine(edge.load_bundle(path))


def test_cli_and_refusals(streams_bundle, small_bundle, tmp_path, capsys):
    w = tmp_path / "w.h5"
    save_weights(small_weights(), str(w))
    path = tmp_path / "b"
    shutil.copytree(small_bundle, path)
    m = json.loads((path / "manifest.json").read_text())
    m["quantization"] = "int16x8"
    (path / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ConvertError, match="not dtln int16x8"):
        add_to_bundle(str(path), str(w), 2, [noise_audio(0.4)])
    path2 = tmp_path / "b2"
    shutil.copytree(streams_bundle, path2)
    assert main([str(path2), "--weights", str(w), "--batch", "2", "-q"]) == 0
    assert capsys.readouterr().out.strip() == str(path2)
    b = edge.load_bundle(path2)
    assert b.manifest["streams"]["batch"] == 2 and not (path2 / f"mask_b{BATCH}.tflite").exists()
    assert b.manifest["streams"]["resizable"] and (path2 / "mask_bn.tflite").exists()
    assert BatchEngine(b).capacity == 2


def test_resizable_graphs_run_every_batch_size_and_match_each_stream_alone(resizable_bundle):
    """34 streams of different lengths joining at different ticks: calls of 34 down to 1 rows, each at the
    smallest graph batch that holds them (34 as 32 + 2); every stream equals running it alone."""
    b = edge.load_bundle(resizable_bundle)
    assert b.manifest["streams"]["resizable"] and b.manifest["streams"]["batch"] == 64
    eng = BatchEngine(b, capacity=48)
    n = 34
    xs = [noise_audio(0.3 + 0.02 * k, seed=100 + k) for k in range(n)]
    slots = {}
    got = {k: [] for k in range(n)}
    pos = [0] * n
    chunk = 256
    tick = 0
    while any(p < len(x) for p, x in zip(pos, xs, strict=True)):
        feed = {}
        for k in range(n):
            if k >= 4 * tick:  # four streams join per tick
                continue
            if k not in slots:
                slots[k] = eng.open()
            if pos[k] < len(xs[k]):
                feed[slots[k]] = xs[k][pos[k]:pos[k] + chunk]
                pos[k] += chunk
        for slot, y in eng.process(feed).items():
            got[next(k for k, s in slots.items() if s == slot)].append(y)
        tick += 1
    for k in range(n):
        y = np.concatenate(got[k] + [eng.flush(slots[k])])
        assert y.shape == xs[k].shape
        assert float(np.max(np.abs(y - alone(b, xs[k])))) <= TOL, f"stream {k}"
    assert max(eng.ticks) == n and min(eng.ticks) == 1
    assert eng.sizes == [1, 2, 4, 8, 16, 24, 32]
    assert eng.open_streams == 0


def test_batch_sizes_and_capacity(resizable_bundle, streams_bundle):
    sizes = [batch_size(k, 256) for k in range(1, CALL_ROWS + 1)]
    assert sizes[:17] == [1, 2, 4, 4, 8, 8, 8, 8] + [16] * 8 + [24]
    assert all(k <= z for k, z in zip(range(1, CALL_ROWS + 1), sizes, strict=True))
    assert sorted(set(sizes)) == [1, 2, 4, 8, 16, 24, 32]
    assert batch_size(20, 20) == 20
    # More ready streams than one call takes: whole calls of CALL_ROWS, then the rest; every row once.
    for rows in (1, 31, 32, 33, 100, 256):
        calls = pieces(rows, 256)
        assert [a for a, _, _ in calls] == list(range(0, rows, CALL_ROWS)) and calls[-1][1] == rows
        assert all(b - a <= size <= CALL_ROWS for a, b, size in calls)
    assert pieces(100, 256) == [(0, 32, 32), (32, 64, 32), (64, 96, 32), (96, 100, 4)]
    assert pieces(50, 20) == [(0, 20, 20), (20, 40, 20), (40, 50, 16)]
    with pytest.raises(EdgeError, match="1 to 64 streams"):
        BatchEngine(edge.load_bundle(resizable_bundle), capacity=65)
    with pytest.raises(EdgeError, match=f"exactly {BATCH} streams"):
        BatchEngine(edge.load_bundle(streams_bundle), capacity=2)


def _signature(it) -> tuple[dict[str, int], dict[str, int]]:
    """Signature name -> tensor index, for inputs and outputs."""
    r = it.get_signature_runner()
    return ({n: d["index"] for n, d in r.get_input_details().items()},
            {n: d["index"] for n, d in r.get_output_details().items()})


def test_poconet_streams_match_alone_and_a_dynamic_batch_resizes(tmp_path):
    """The U-Net's caches and GRU state per row: B streams in one engine equal each alone; a graph whose batch
    axis is sized at load gives, row by row, the per-block graph's outputs at every size."""
    from convert.build import convert
    from convert.export import to_tflite
    from convert.families.poconet import FAMILY, build_streaming_model
    from convert.families.poconet import save_weights as save_poconet
    from edge.interpreter import make_interpreter

    from .test_poconet import small_weights as poconet_weights
    from .test_poconet import speechlike

    w = poconet_weights(seed=1)
    save_poconet(w, str(tmp_path / "p.h5"))
    path = tmp_path / "p"
    convert(w, "none", str(path), verify_audio=[speechlike(1.0, 5)], verify_names=["speechlike"])
    b = add_to_bundle(str(path), str(tmp_path / "p.h5"), BATCH, [speechlike(0.9, 6)])
    assert b.manifest["streams"]["verification"]["passed"] is True
    eng = BatchEngine(b)
    xs = [speechlike(0.5 + 0.2 * k, 10 + k) for k in range(BATCH)]
    slots = [eng.open() for _ in xs]
    got = {s: [] for s in slots}
    for pos in range(0, max(map(len, xs)), 700):
        for s, y in eng.process({s: x[pos:pos + 700] for s, x in zip(slots, xs, strict=True) if pos < len(x)}).items():
            got[s].append(y)
    for s, x in zip(slots, xs, strict=True):
        y = np.concatenate(got[s] + [eng.flush(s)])
        assert float(np.max(np.abs(y - alone(b, x)))) <= TOL
    assert max(eng.ticks) == BATCH

    (model, io), = FAMILY.batch_models(w, b.manifest, None)
    assert model.name == "poconet_stream_bn" and all(s[0] is None for _, s in io.inputs + io.outputs)
    it = make_interpreter(to_tflite(model, io.inputs, "none"))
    per = make_interpreter((path / "unet.tflite").read_bytes())
    (ins, outs), (pin, pout) = _signature(it), _signature(per)
    shapes = dict(build_streaming_model(w)[1].inputs)
    rng = np.random.default_rng(0)
    for rows in (1, 3, 8):
        for n, i in ins.items():
            it.resize_tensor_input(i, (rows, *shapes[n][1:]))
        it.allocate_tensors()
        x = {n: rng.standard_normal((rows, *shapes[n][1:])).astype(np.float32) for n in ins}
        for n, i in ins.items():
            it.set_tensor(i, x[n])
        it.invoke()
        for r in range(rows):
            for n, i in pin.items():
                per.set_tensor(i, x[n][r:r + 1])
            per.invoke()
            for n, i in pout.items():
                assert float(np.max(np.abs(it.get_tensor(outs[n])[r:r + 1] - per.get_tensor(i)))) <= TOL, (rows, n)
    with pytest.raises(ConvertError, match="rows must be an int >= 1 or None"):
        build_streaming_model(w, rows=0)
