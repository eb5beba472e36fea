"""The PoCoNet bottleneck: our GRU step against cached causal attention of the same width, per hop.

    python bench/bottleneck.py [--frames 16 64 125] [--rounds 11] [--hops 2000]

Issue 7 leaves the temporal bottleneck open: a GRU, or causal attention over a cache of the last N
frames. Both take what the shipped model's bottleneck takes, the flattened 16 x 32 = 512 features of
one hop, and return 512 to be added back (``gru_proj`` in ``convert.families.poconet``):

- gru: ``GRUStep(256)`` (Keras' GRU maths, state (1, 256)) then Dense(512): the shipped design;
- attn-N: q, k, v = Dense(256)(x) as 4 heads of 64; k and v are appended to an N-frame cache (state
  (1, N, 256) each, oldest dropped); softmax(q K^T / 8) V over the N cached frames; Dense(512).
  Positional encoding is left out: it would add work, not remove it.

Each graph is built in Keras with random weights (seeded), converted by ``convert.export.to_tflite``
(float32 and dynamic-range int8) with its states as named inputs and outputs, and driven by the
runtime's ``edge.submodel.TFLiteSubmodel`` one hop per invoke with its states fed back, one thread,
interleaved by round in one process. Writes
bench/results/bottleneck.json: ms per invoke (median/min/max over rounds), the ratio to the GRU of the
same mode within each round, parameters, MACs per hop and state bytes. The whole shipped model's time
per hop (bench/results/families.json) puts the figures in proportion. Speed and size only: quality
would need each variant trained (see docs/poconet.md).
"""

from __future__ import annotations

import argparse
from types import SimpleNamespace

import numpy as np
from common import interleaved, skip, summary, write_result

WIDTH, UNITS, HEADS = 512, 256, 4


def gru_graph():
    import keras

    from convert.layers import GRUStep
    x = keras.Input(batch_shape=(1, WIDTH), name="x")
    h = keras.Input(batch_shape=(1, UNITS), name="h")
    new_h = GRUStep(UNITS, name="gru")([x, h])
    y = keras.layers.Dense(WIDTH, name="proj")(new_h)
    return keras.Model({"x": x, "h": h}, {"y": y, "h_out": new_h}), [("x", (1, WIDTH)), ("h", (1, UNITS))]


def attention_graph(frames: int):
    import keras

    ops = keras.ops
    L = keras.layers
    dh = UNITS // HEADS
    x = keras.Input(batch_shape=(1, WIDTH), name="x")
    kc = keras.Input(batch_shape=(1, frames, UNITS), name="k_cache")
    vc = keras.Input(batch_shape=(1, frames, UNITS), name="v_cache")
    q, k, v = (L.Dense(UNITS, name=n)(x) for n in ("q", "k", "v"))
    keys = ops.concatenate([kc[:, 1:], k[:, None]], axis=1)  # (1, N, 256): the last N frames, this one included
    vals = ops.concatenate([vc[:, 1:], v[:, None]], axis=1)
    qh = ops.reshape(q, (HEADS, 1, dh))
    kh = ops.transpose(ops.reshape(keys, (frames, HEADS, dh)), (1, 2, 0))  # (H, dh, N)
    vh = ops.transpose(ops.reshape(vals, (frames, HEADS, dh)), (1, 0, 2))  # (H, N, dh)
    w = ops.softmax(ops.matmul(qh, kh) / np.sqrt(dh).astype(np.float32), axis=-1)  # (H, 1, N)
    att = ops.reshape(ops.matmul(w, vh), (1, UNITS))
    y = L.Dense(WIDTH, name="proj")(att)
    model = keras.Model({"x": x, "k_cache": kc, "v_cache": vc}, {"y": y, "k_cache_out": keys, "v_cache_out": vals})
    return model, [("x", (1, WIDTH)), ("k_cache", (1, frames, UNITS)), ("v_cache", (1, frames, UNITS))]


def submodel(flatbuffer: bytes, inputs, states):
    """The runtime's own per-block driver (``edge.submodel.TFLiteSubmodel``) on one converted graph:
    data input ``x``, data output ``y``, every state ``NAME`` fed back from ``NAME_out``."""
    from convert.build import tensor_specs
    from convert.export import tensor_table
    from edge.bundle import SubmodelSpec
    from edge.options import Options
    from edge.submodel import TFLiteSubmodel

    ins, outs = tensor_table(flatbuffer)
    spec = SubmodelSpec(name="bottleneck", file="", sha256="", inputs=tensor_specs(ins, [n for n, _ in inputs]),
                        outputs=tensor_specs(outs, ["y", *(f"{n}_out" for n in states)]), data_input="x",
                        data_output="y", states=tuple((n, f"{n}_out") for n in states), content=flatbuffer)
    return TFLiteSubmodel(SimpleNamespace(path="<bench>"), spec, Options(num_threads=1))


def macs(frames: int | None) -> int:
    """Per hop: the GRU's (frames None), or attention's over a cache of ``frames`` hops."""
    if frames is None:
        return 3 * UNITS * (WIDTH + UNITS) + UNITS * WIDTH
    return 3 * WIDTH * UNITS + UNITS * WIDTH + 2 * frames * UNITS  # projections, then q K^T and w V


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, nargs="+", default=[16, 64, 125],
                   help="attention cache lengths in hops (125 = 1 s at 8 ms)")
    p.add_argument("--modes", nargs="+", default=["none", "dynamic"])
    p.add_argument("--rounds", type=int, default=11)
    p.add_argument("--hops", type=int, default=2000, help="invokes per variant per round")
    args = p.parse_args()
    try:
        from convert.export import to_tflite
        from convert.quiet import import_tensorflow
    except ImportError as exc:
        skip(f"building the graphs needs the convert extra (TensorFlow): {exc}")
    import_tensorflow()
    import keras

    keras.utils.set_random_seed(0)
    graphs = {"gru": (None, gru_graph()), **{f"attn-{n}": (n, attention_graph(n)) for n in args.frames}}
    steppers, facts = {}, {}
    for name, (frames, (model, inputs)) in graphs.items():
        states = [(n, s) for n, s in inputs if n != "x"]
        for mode in args.modes:
            sub = submodel(to_tflite(model, inputs, mode), inputs, [n for n, _ in states])
            steppers[f"{name} {mode}"] = SimpleNamespace(process=sub, reset=sub.reset)  # what interleaved drives
        facts[name] = {"parameters": int(model.count_params()), "macs_per_hop": macs(frames),
                       "state_bytes": sum(4 * int(np.prod(s)) for _, s in states)}
    rng = np.random.default_rng(0)
    xs = [rng.standard_normal((1, WIDTH)).astype(np.float32) for _ in range(args.hops)]
    times, _ = interleaved(steppers, xs, args.rounds, f"gru {args.modes[0]}")
    ratios = {k: [t / g for t, g in zip(times[k], times[f"gru {k.split()[1]}"], strict=True)] for k in steppers}
    rows = []
    for k in steppers:
        rows.append({"what": k, "unit": "ms/block", **summary(times[k], 5)})
        if not k.startswith("gru "):
            rows.append({"what": f"{k} / gru {k.split()[1]}", "unit": "ratio", **summary(ratios[k], 3)})
    write_result("bottleneck", {
        "title": "PoCoNet bottleneck: GRU step against cached causal attention, ms per hop (one thread)",
        "rows": rows, "variants": facts,
        "notes": ["Bottleneck alone, 512 features in and out per 8 ms hop, random weights; each row is one "
                  "invoke with its states fed back. Ratios are to the GRU of the same quantisation mode, taken "
                  "within each round. attn-N keeps the last N hops of keys and values (N x 8 ms of context); "
                  "the GRU's context is unbounded in one (1, 256) state."]})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
