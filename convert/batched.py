"""T-block submodels: each family's streaming graph over T hops per call, added to a bundle and verified.

The recurrence runs inside the graph over T steps (unrolled: plain ops, no WHILE); states go in and out
once per call, as the same tensors the per-block submodels use, so a stream can switch between the two
at any hop. The runtime's T-block path (``edge.tblock``) is checked against the bundle's own per-block
path through the same ``edge`` loop and the figures go into the manifest's ``batched`` section.

    python -m convert.batched BUNDLE --weights WEIGHTS.h5 [--frames 64]

adds ``NAME_tT.tflite`` files and the ``batched`` section to an existing bundle (re-runnable: it
replaces an earlier ``batched`` section; the per-block files and their output stay untouched).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import fields, replace

import numpy as np

import edge
from edge.bundle import MANIFEST, load_bundle, sha256_bytes

from .errors import ConvertError, VerificationError, WeightsError

MODES = ("none", "float16", "dynamic")
"""Modes with T-block graphs: their activations are float, so no calibration can differ from the
per-block graphs' (integer-activation modes would need their own, and would no longer match)."""
MAX_ABS = {"none": 1e-5}
"""T-block vs per-block output of the same bundle, max abs sample difference, by mode."""
SNR_DB = {"float16": 60.0, "dynamic": 30.0}
"""...or SNR (dB) of the T-block output against the per-block output, for the other modes."""
DEFAULT_FRAMES = 32


def _dtln_step_layer():
    """An LSTM layer over a whole (T, n_in) sequence with explicit state: the input product for all T
    rows in one matmul, then T unrolled steps; same weights and sum order as ``LSTMStep``."""
    from .dtln import _keras

    keras = _keras()
    ops = keras.ops

    class SeqLSTM(keras.layers.Layer):
        def __init__(self, units, steps, clip_cell=None, clip_gates=None, **kw):
            super().__init__(**kw)
            self.units, self.steps = units, steps
            self.clip_cell, self.clip_gates = clip_cell, clip_gates

        def build(self, shapes):
            n_in = shapes[0][-1]
            self.kernel = self.add_weight(shape=(n_in, 4 * self.units), name="kernel")
            self.recurrent_kernel = self.add_weight(shape=(self.units, 4 * self.units), name="recurrent_kernel")
            self.bias = self.add_weight(shape=(4 * self.units,), name="bias")

        def call(self, inputs):
            x, h, c = inputs
            zxs = ops.matmul(x, self.kernel)
            hs = []
            for t in range(self.steps):
                zx = zxs[t:t + 1]  # a static slice per row: XNNPACK takes it (a 64-way SPLIT it does not)
                z = zx + ops.matmul(h, self.recurrent_kernel) + self.bias
                if self.clip_gates is not None:
                    z = ops.clip(z, -self.clip_gates, self.clip_gates)
                i, f, g, o = ops.split(z, 4, axis=-1)
                c = ops.sigmoid(f) * c + ops.sigmoid(i) * ops.tanh(g)
                if self.clip_cell is not None:
                    c = ops.clip(c, -self.clip_cell, self.clip_cell)
                h = ops.sigmoid(o) * ops.tanh(c)
                hs.append(h)
            return _concat_tree(ops, hs), h, c

    return SeqLSTM


def _concat_tree(ops, parts: list):
    """Concatenate rows in groups of at most four (the widest CONCATENATION XNNPACK delegates)."""
    while len(parts) > 1:
        parts = [p[0] if len(p) == 1 else ops.concatenate(p, axis=0) for p in
                 (parts[i:i + 4] for i in range(0, len(parts), 4))]
    return parts[0]


def dtln_models(weights, opts, frames: int):
    """DTLN's two submodels over ``frames`` hops: [(keras model, IOSpec)], names as the per-block ones."""
    from .dtln import IOSpec, _keras, _layers, _state_io

    keras = _keras()
    ops = keras.ops
    cfg = weights.config
    InstantLayerNorm, _, _, _, _, Log, _ = _layers()
    SeqLSTM = _dtln_step_layer()
    t = frames
    out = []
    for stage, prefix, n_in, n_mask in ((1, "mask", cfg.bins, cfg.bins),
                                        (2, "frame", cfg.block_len, cfg.encoder_size)):
        outside = stage == 2 and opts.bases_outside
        data_name = "mag" if stage == 1 else "enc" if outside else "frame"
        if outside:
            n_in = cfg.encoder_size
        x_in = keras.Input(batch_shape=(1, t, n_in), name=data_name)
        state_in, per_layer, pack = _state_io(keras, prefix, cfg, opts)
        x = ops.reshape(x_in, (t, n_in))  # rows = hops: every matmul is one FULLY_CONNECTED over T rows
        if stage == 1:
            h = x
            if cfg.norm_mag:
                if not opts.log_mag_outside:
                    h = Log(name="log_mag")(h)
                h = InstantLayerNorm(cfg.eps, name="mag_norm")(h)
        else:
            enc = x if outside else keras.layers.Dense(cfg.encoder_size, use_bias=False, name="encoder")(x)
            h = InstantLayerNorm(cfg.eps, name="enc_norm")(enc)
        hcs = []
        for k in range(cfg.layers):
            h, hk, ck = SeqLSTM(cfg.units, t, opts.clip_cell, opts.clip_gates,
                                name=f"lstm{stage}_{k}")([h, *per_layer[k]])
            hcs.append((hk, ck))
        mask = keras.layers.Dense(n_mask, activation="sigmoid", name=f"dense{stage}")(h)
        if stage == 1 or outside:
            y = ops.reshape(mask, (1, t, n_mask))
            out_name = "mask" if stage == 1 else "enc_mask"
        else:
            dec = keras.layers.Dense(cfg.block_len, use_bias=False, name="decoder")(enc * mask)
            y = ops.reshape(dec, (1, t, cfg.block_len))
            out_name = "frame_out"
        outputs = {out_name: y, **pack(hcs)}
        model = keras.Model(inputs={data_name: x_in, **state_in}, outputs=outputs, name=f"dtln_{prefix}_t{t}")
        for name, ws in weights.arrays.items():
            try:
                layer = model.get_layer(name)
            except ValueError:
                continue
            layer.set_weights([ws[0][0]] if name in ("encoder", "decoder") else ws)
        io = IOSpec(name=prefix, inputs=tuple((n, tuple(v.shape)) for n, v in {data_name: x_in, **state_in}.items()),
                    outputs=tuple((n, tuple(v.shape)) for n, v in outputs.items()),
                    data_input=data_name, data_output=out_name, states=tuple((n, f"{n}_out") for n in state_in))
        out.append((model, io))
    return out


def _dtln_weights(path: str, m: dict):
    from .dtln import StreamOptions, load_weights, stream_options_for, with_block_shift

    weights = with_block_shift(load_weights(path), m["block_shift"])
    known = {f.name for f in fields(StreamOptions)}
    saved = {k: v for k, v in m.get("converter_options", {}).items() if k in known}
    opts = StreamOptions(**saved) if saved else stream_options_for(m["quantization"], weights.config)
    return weights, opts


def models_for(m: dict, weights_path: str, frames: int):
    """The T-block Keras models for the bundle described by manifest ``m``, from its weights file."""
    from dataclasses import asdict

    family = m.get("family")
    if family == "dtln":
        weights, opts = _dtln_weights(weights_path, m)
        pairs = dtln_models(weights, opts, frames)
    elif family == "poconet":
        from . import poconet

        weights = poconet.load_weights(weights_path)
        pairs = [poconet.build_streaming_model(weights, frames=frames)]
    else:
        raise ConvertError(f"family {family!r} has no T-block graphs (known: dtln, poconet)")
    want = m.get("model", {}).get("config")
    have = json.loads(json.dumps(asdict(weights.config)))  # as the manifest holds it (tuples as lists)
    if want is not None and have != want:
        diff = {k: (v, want.get(k)) for k, v in have.items() if want.get(k) != v}
        raise WeightsError(f"{weights_path}: its config differs from the bundle's model.config "
                           f"(weights vs bundle: {diff}); pass the weights this bundle was converted from")
    return pairs


def _entry(io, content: bytes, fname: str) -> dict:
    from .export import op_names, tensor_table

    ops = op_names(content)
    bad = {"WHILE", "TensorListReserve", "FlexTensorListReserve", "RFFT2D", "FFT"} & set(ops)
    if bad:
        raise ConvertError(f"{io.name} (T-block): converted graph holds {sorted(bad)}; the streaming form must not")
    ins, outs = tensor_table(content)
    return {"name": io.name, "file": fname, "sha256": sha256_bytes(content), "bytes": len(content),
            "inputs": [{"name": n, **ins[n]} for n, _ in io.inputs],
            "outputs": [{"name": n, **outs[n]} for n, _ in io.outputs],
            "data_input": io.data_input, "data_output": io.data_output, "states": dict(io.states), "ops": ops}


def verify(bundle: edge.Bundle, audio: list[np.ndarray]) -> dict:
    """The bundle's T-block path against its per-block path, same ``edge`` loop, each signal whole."""
    from .verify import compare

    per_block = replace(bundle, batched=None)
    refs = [edge.denoise(x, per_block) for x in audio]
    tests = [edge.denoise(x, bundle) for x in audio]
    fig = compare(refs, tests)
    mode = bundle.quantization
    if mode in MAX_ABS:
        passed = fig["max_abs_error"] <= MAX_ABS[mode]
        tol = {"tolerance_max_abs_error": MAX_ABS[mode]}
    else:
        passed = fig["snr_db"] >= SNR_DB[mode]
        tol = {"tolerance_snr_db": SNR_DB[mode]}
    return {"reference": "this bundle's per-block submodels, same edge loop", **fig, **tol, "passed": bool(passed)}


def add_to_bundle(folder: str, weights_path: str, frames: int = DEFAULT_FRAMES, verify_audio=None,
                  verify_names=None, say=lambda msg: None) -> edge.Bundle:
    """Convert and verify T-block submodels in a scratch copy of a bundle, then install them beside its
    per-block files; on any failure the folder stays as it was."""
    import shutil

    from .export import to_tflite

    if frames < 2:
        raise ConvertError(f"--frames must be >= 2 (hops per call), got {frames}")
    mpath = os.path.join(folder, MANIFEST)
    bundle = load_bundle(folder)  # a bundle that does not load is not upgraded
    with open(mpath) as f:
        m = json.load(f)
    mode = m.get("quantization")
    if mode not in MODES:
        raise ConvertError(f"{folder}: a {mode} bundle gets no T-block graphs (only {', '.join(MODES)}: float "
                           "activations, so the T-block output can match the per-block output)")
    t0 = time.perf_counter()
    old_files = {sm.file for sm in bundle.batched.submodels} if bundle.batched else set()
    keep = [sm.file for sm in bundle.submodels] + [a["file"] for a in m.get("arrays", [])]
    with tempfile.TemporaryDirectory(prefix=".batched-", dir=os.path.dirname(os.path.abspath(folder))) as work:
        for fname in keep:
            shutil.copyfile(os.path.join(folder, fname), os.path.join(work, fname))
        entries = []
        for model, io in models_for(m, weights_path, frames):
            say(f"converting {io.name} over {frames} hops ({mode})")
            content = to_tflite(model, io.inputs, mode)
            fname = f"{io.name}_t{frames}.tflite"
            with open(os.path.join(work, fname), "wb") as f:
                f.write(content)
            entries.append(_entry(io, content, fname))
        m["batched"] = {"frames": frames, "submodels": entries}
        _write_atomic(os.path.join(work, MANIFEST), _dump(m))
        say("verifying the T-block path against the per-block path")
        v = verify(load_bundle(work), verify_audio if verify_audio is not None else _example_audio())
        v.update(audio=list(verify_names or ["examples"]), seconds_to_convert=round(time.perf_counter() - t0, 1))
        m["batched"]["verification"] = v
        if not v["passed"]:
            raise VerificationError(f"T-block output differs from the per-block output: max abs "
                                    f"{v['max_abs_error']:.3g}, SNR {v['snr_db']:.1f} dB (tolerance "
                                    f"{v.get('tolerance_max_abs_error', v.get('tolerance_snr_db'))}); "
                                    f"{folder} left as it was")
        for e in entries:  # the files first, the manifest naming them last
            with open(os.path.join(work, e["file"]), "rb") as f:
                _write_atomic(os.path.join(folder, e["file"]), f.read())
        _write_atomic(mpath, _dump(m))
    for stale in old_files - {e["file"] for e in entries}:
        os.remove(os.path.join(folder, stale))
    return load_bundle(folder)


def _dump(m: dict) -> bytes:
    return (json.dumps(m, indent=1) + "\n").encode()


def _write_atomic(path: str, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=os.path.dirname(path))
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _example_audio() -> list[np.ndarray]:
    from . import build, data

    files = build.example_files()
    if not files:
        raise ConvertError("no verification audio: pass --verify-audio FILE (speech at any rate)")
    return data.load_files(files)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m convert.batched",
                                description="Add T-block submodels (T hops per call) to an existing bundle, "
                                            "verified against its per-block submodels.")
    p.add_argument("bundle", metavar="BUNDLE", help="bundle folder to upgrade in place (float32, float16, dynamic)")
    p.add_argument("--weights", metavar="FILE", required=True,
                   help="the weights (.h5) the bundle was converted from (checked against its model.config)")
    p.add_argument("--frames", type=int, default=DEFAULT_FRAMES,
                   help=f"hops per T-block call (default: {DEFAULT_FRAMES} = 0.256 s at 128-sample hops, the fastest "
                        "of 16, 32 and 64 measured on x86)")
    p.add_argument("--verify-audio", metavar="FILE", nargs="+", default=None,
                   help="speech to verify on (default: the example recordings in examples/)")
    p.add_argument("--quiet", "-q", action="store_true", help="print only the bundle path")
    args = p.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from .quiet import import_tensorflow

    import_tensorflow()
    from . import data

    say = (lambda msg: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    try:
        audio = data.load_files(args.verify_audio) if args.verify_audio else None
        names = [os.path.basename(f) for f in args.verify_audio] if args.verify_audio else None
        b = add_to_bundle(args.bundle, args.weights, args.frames, audio, names, say)
    except VerificationError as exc:
        print(f"python -m convert.batched: verification failed: {exc}", file=sys.stderr)
        return 1
    except (ConvertError, edge.EdgeError) as exc:
        print(f"python -m convert.batched: error: {exc}", file=sys.stderr)
        return 2
    v = b.manifest["batched"]["verification"]
    print(b.path if args.quiet else f"{b.path}: T-block submodels over {args.frames} hops added; vs per-block: "
          f"max abs {v['max_abs_error']:.3g}, SNR {v['snr_db']:.1f} dB ({v['seconds_to_convert']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
