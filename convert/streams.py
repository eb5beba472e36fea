"""Batch-axis submodels: the per-block graphs with B independent streams per call (states [B, ...]).

    python -m convert.streams BUNDLE --weights WEIGHTS.h5 [--batch 16]

adds ``NAME_b{B}.tflite`` files and a ``streams`` section to an existing DTLN bundle (float32, float16,
dynamic), verified: B streams of different audio through ``edge.batch.BatchEngine`` against each one run
alone through ``edge.StreamingDenoiser`` (float32: max abs <= 1e-5; other modes: SNR >= their
tolerance). Re-runnable; on failure the bundle stays as it was.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

import numpy as np

import edge
from edge.bundle import MANIFEST, load_bundle

from .batched import MAX_ABS, MODES, SNR_DB, _dtln_weights, _dump, _entry, _example_audio, _write_atomic
from .errors import ConvertError, VerificationError, WeightsError

DEFAULT_BATCH = 16


def dtln_batch_models(weights, opts, batch: int):
    """DTLN's two per-block submodels with ``batch`` rows: [(keras model, IOSpec)], per-block names."""
    from .dtln import IOSpec, _keras, _layers

    if opts.split_states or opts.bases_outside:
        raise ConvertError("batch graphs are made for packed-state float-activation DTLN bundles only")
    keras = _keras()
    ops = keras.ops
    cfg = weights.config
    InstantLayerNorm, LSTMStep, _, _, _, Log, _ = _layers()
    out = []
    for stage, prefix, n_in, n_mask in ((1, "mask", cfg.bins, cfg.bins),
                                        (2, "frame", cfg.block_len, cfg.encoder_size)):
        data_name = "mag" if stage == 1 else "frame"
        x_in = keras.Input(batch_shape=(batch, 1, n_in), name=data_name)
        sname = f"{prefix}_state"
        s_in = keras.Input(batch_shape=(batch, cfg.layers, cfg.units, 2), name=sname)
        x = ops.reshape(x_in, (batch, n_in))
        if stage == 1:
            h = x
            if cfg.norm_mag:
                if not opts.log_mag_outside:
                    h = Log(name="log_mag")(h)
                h = InstantLayerNorm(cfg.eps, name="mag_norm")(h)
        else:
            enc = keras.layers.Dense(cfg.encoder_size, use_bias=False, name="encoder")(x)
            h = InstantLayerNorm(cfg.eps, name="enc_norm")(enc)
        hcs = []
        for k in range(cfg.layers):
            h, c = LSTMStep(cfg.units, opts.clip_cell, opts.clip_gates, name=f"lstm{stage}_{k}")(
                [h, s_in[:, k, :, 0], s_in[:, k, :, 1]])
            hcs.append((h, c))
        mask = keras.layers.Dense(n_mask, activation="sigmoid", name=f"dense{stage}")(h)
        if stage == 1:
            y, out_name = ops.reshape(mask, (batch, 1, n_mask)), "mask"
        else:
            dec = keras.layers.Dense(cfg.block_len, use_bias=False, name="decoder")(enc * mask)
            y, out_name = ops.reshape(dec, (batch, 1, cfg.block_len)), "frame_out"
        state_out = ops.stack([ops.stack([h, c], axis=-1) for h, c in hcs], axis=1)
        outputs = {out_name: y, f"{sname}_out": state_out}
        model = keras.Model(inputs={data_name: x_in, sname: s_in}, outputs=outputs, name=f"dtln_{prefix}_b{batch}")
        for name, ws in weights.arrays.items():
            try:
                layer = model.get_layer(name)
            except ValueError:
                continue
            layer.set_weights([ws[0][0]] if name in ("encoder", "decoder") else ws)
        io = IOSpec(name=prefix, inputs=((data_name, tuple(x_in.shape)), (sname, tuple(s_in.shape))),
                    outputs=tuple((n, tuple(v.shape)) for n, v in outputs.items()),
                    data_input=data_name, data_output=out_name, states=((sname, f"{sname}_out"),))
        out.append((model, io))
    return out


def verify(bundle: edge.Bundle, audio: list[np.ndarray], chunk: int = 1000) -> dict:
    """Every stream through one engine (different audio and lengths, fed in chunks, all at once) against
    each stream alone."""
    from edge.batch import BatchEngine

    from .verify import compare

    eng = BatchEngine(bundle)
    signals = [np.roll(audio[k % len(audio)], 977 * k)[: len(audio[k % len(audio)]) - 131 * k]
               for k in range(eng.capacity)]
    slots = [eng.open() for _ in signals]
    got = {k: [] for k in slots}
    for pos in range(0, max(map(len, signals)), chunk):
        feed = {k: x[pos:pos + chunk] for k, x in zip(slots, signals, strict=True) if pos < len(x)}
        for k, y in eng.process(feed).items():
            got[k].append(y)
    lat = bundle.latency_samples
    tests, refs = [], []
    for k, x in zip(slots, signals, strict=True):
        y = np.concatenate(got[k] + [eng.flush(k)])
        tests.append(y[lat:lat + len(x)])
        refs.append(edge.denoise(x, bundle))
    fig = compare(refs, tests)
    mode = bundle.quantization
    passed = fig["max_abs_error"] <= MAX_ABS[mode] if mode in MAX_ABS else fig["snr_db"] >= SNR_DB[mode]
    tol = {"tolerance_max_abs_error": MAX_ABS[mode]} if mode in MAX_ABS else {"tolerance_snr_db": SNR_DB[mode]}
    return {"reference": "each stream alone through edge.StreamingDenoiser (per-block submodels)",
            "streams": len(signals), **fig, **tol, "passed": bool(passed)}


def add_to_bundle(folder: str, weights_path: str, batch: int = DEFAULT_BATCH, verify_audio=None,
                  say=lambda msg: None) -> edge.Bundle:
    """Convert and verify batch-axis submodels in a scratch copy, then install them beside the bundle's files."""
    from .export import to_tflite

    if batch < 1:
        raise ConvertError(f"--batch must be >= 1, got {batch}")
    bundle = load_bundle(folder)
    m = json.loads(open(os.path.join(folder, MANIFEST)).read())
    if m.get("family") != "dtln" or m.get("quantization") not in MODES:
        raise ConvertError(f"{folder}: batch graphs are made for dtln bundles in {', '.join(MODES)}, not "
                           f"{m.get('family')} {m.get('quantization')}")
    weights, opts = _dtln_weights(weights_path, m)
    want, have = m.get("model", {}).get("config"), json.loads(json.dumps(_asdict(weights.config)))
    if want is not None and want != have:
        raise WeightsError(f"{weights_path}: its config differs from the bundle's model.config; pass the weights "
                           "this bundle was converted from")
    t0 = time.perf_counter()
    old = {e["file"] for e in m.get("streams", {}).get("submodels", [])}
    keep = [sm.file for sm in bundle.submodels] + [e["file"] for e in m.get("batched", {}).get("submodels", [])]
    with tempfile.TemporaryDirectory(prefix=".streams-", dir=os.path.dirname(os.path.abspath(folder))) as work:
        for fname in keep:
            shutil.copyfile(os.path.join(folder, fname), os.path.join(work, fname))
        entries = []
        for model, io in dtln_batch_models(weights, opts, batch):
            say(f"converting {io.name} for {batch} streams ({m['quantization']})")
            content = to_tflite(model, io.inputs, m["quantization"])
            fname = f"{io.name}_b{batch}.tflite"
            with open(os.path.join(work, fname), "wb") as f:
                f.write(content)
            entries.append(_entry(io, content, fname))
        m["streams"] = {"batch": batch, "submodels": entries}
        _write_atomic(os.path.join(work, MANIFEST), _dump(m))
        say(f"verifying {batch} streams in one engine against each alone")
        v = verify(load_bundle(work), verify_audio if verify_audio is not None else _example_audio())
        v["seconds_to_convert"] = round(time.perf_counter() - t0, 1)
        m["streams"]["verification"] = v
        if not v["passed"]:
            raise VerificationError(f"batched streams differ from the streams alone: max abs {v['max_abs_error']:.3g}"
                                    f", SNR {v['snr_db']:.1f} dB; {folder} left as it was")
        for e in entries:
            with open(os.path.join(work, e["file"]), "rb") as f:
                _write_atomic(os.path.join(folder, e["file"]), f.read())
        _write_atomic(os.path.join(folder, MANIFEST), _dump(m))
    for stale in old - {e["file"] for e in entries}:
        os.remove(os.path.join(folder, stale))
    return load_bundle(folder)


def _asdict(cfg) -> dict:
    from dataclasses import asdict

    return asdict(cfg)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m convert.streams",
                                description="Add batch-axis submodels (B streams per call) to a DTLN bundle, "
                                            "verified against each stream run alone.")
    p.add_argument("bundle", metavar="BUNDLE")
    p.add_argument("--weights", metavar="FILE", required=True, help="the weights the bundle was converted from")
    p.add_argument("--batch", type=int, default=DEFAULT_BATCH, help=f"streams per call (default: {DEFAULT_BATCH})")
    p.add_argument("--quiet", "-q", action="store_true", help="print only the bundle path")
    args = p.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from .quiet import import_tensorflow

    import_tensorflow()
    say = (lambda msg: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    try:
        b = add_to_bundle(args.bundle, args.weights, args.batch, None, say)
    except VerificationError as exc:
        print(f"python -m convert.streams: verification failed: {exc}", file=sys.stderr)
        return 1
    except (ConvertError, edge.EdgeError) as exc:
        print(f"python -m convert.streams: error: {exc}", file=sys.stderr)
        return 2
    v = b.manifest["streams"]["verification"]
    print(b.path if args.quiet else f"{b.path}: {args.batch}-stream submodels added; vs each stream alone: max abs "
          f"{v['max_abs_error']:.3g}, SNR {v['snr_db']:.1f} dB ({v['seconds_to_convert']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
