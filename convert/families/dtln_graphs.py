"""DTLN's streaming graphs: the graph options a mode asks for, and the two FFT-free submodels with
explicit named state, per block, over T hops per call (``convert.batched``) or with B independent
streams per call (``convert.streams``): one builder, so the three stay the same network."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Mapping

from ..errors import ConvertError
from ..modes import Mode, mode
from .base import IOSpec

if TYPE_CHECKING:
    from .dtln import DTLNConfig, DTLNWeights


@dataclass(frozen=True)
class StreamOptions:
    """Graph changes for the streaming submodels (all exact or inaudible in float)."""

    split_states: bool = False
    """One (1, units) tensor per h and per c instead of one packed (1, layers, units, 2) tensor."""
    clip_cell: float | None = None
    """Clip the LSTM cell state to +-this value (integer modes need a bounded c)."""
    clip_gates: float | None = None
    """Clip the gate pre-activations to +-this value (a model trained with ``gate_clip`` needs it)."""
    frame_rms_norm: bool = False
    """Stage 2 gets its frame divided by its RMS (done by the runtime); the graph is unchanged."""
    log_mag_outside: bool = False
    """Norm variant: the runtime feeds log(|X| + 1e-7), so no LOG op is in the graph."""
    bases_outside: bool = False
    """Stage 2's learned analysis and synthesis bases (encoder, decoder) run in the runtime in float32,
    like the FFT of stage 1: the submodel takes the encoded frame and returns its mask. Full int8 needs
    it: an int8 synthesis output is rounded on the scale of the loudest frames, which leaves an audible
    floor under suppressed ones."""
    mask_logits: bool = False
    """Both submodels return their mask's logits; the runtime applies the sigmoid in float32 (needs
    ``bases_outside``: with the bases in the graph, stage 2 applies its mask itself). Full int8 uses it: an
    int8 sigmoid output is rounded to steps of 1/256, which cost ``DTLN_norm_500h.h5``'s stage 1 8 dB of its
    SNR against float (docs/generalisation.md); logits keep their own calibrated range."""
    bias_first: bool = False
    """Each LSTM adds its bias to ``x @ W`` (inside that FULLY_CONNECTED) before ``h @ U``. Full int8 uses it:
    with Keras' order the int8 graph rounds ``x @ W + h @ U`` on that sum's own wide range (+-24, steps of
    0.19, in the first LSTM of a QAT model) before the bias and the clip; with the bias first the one ADD
    writes straight onto the clip's +-8 range (steps of 1/16)."""


def stream_options_for(quantize: str | Mode, cfg: DTLNConfig, opts: StreamOptions | None = None) -> StreamOptions:
    """The graph changes the mode's table entry asks for (``convert.modes``), unless the caller overrides them.

    A model trained with clipping keeps it in every mode (it is part of the model).
    """
    if opts is not None:
        return opts
    changes = mode(quantize).graph_changes
    return StreamOptions(split_states="split_states" in changes,
                         clip_cell=(cfg.cell_clip or 8.0) if "bounded_cell" in changes else cfg.cell_clip,
                         clip_gates=cfg.gate_clip, frame_rms_norm="runtime_frame_norm" in changes,
                         log_mag_outside=cfg.norm_mag and "runtime_log" in changes,
                         bases_outside="runtime_bases" in changes, mask_logits="runtime_sigmoid" in changes,
                         bias_first="gate_bias_first" in changes)


def _state_io(keras, prefix: str, cfg: DTLNConfig, opts: StreamOptions, rows: int = 1):
    """Named state inputs and a function that packs the per-layer (h, c) back into outputs; ``rows``
    independent streams (packed states only)."""
    if opts.split_states:
        if rows != 1:
            raise ConvertError(f"split states hold one stream; {rows} rows need packed states")
        ins = {}
        for k in range(cfg.layers):
            for hc in "hc":
                n = f"{prefix}_{hc}{k}"
                ins[n] = keras.Input(batch_shape=(1, cfg.units), name=n)
        per_layer = [(ins[f"{prefix}_h{k}"], ins[f"{prefix}_c{k}"]) for k in range(cfg.layers)]

        def pack(hcs):
            return {f"{prefix}_{hc}{k}_out": t for k, (h, c) in enumerate(hcs) for hc, t in (("h", h), ("c", c))}
    else:
        n = f"{prefix}_state"
        s = keras.Input(batch_shape=(rows, cfg.layers, cfg.units, 2), name=n)
        ins = {n: s}
        ops = keras.ops
        # SPLIT, RESHAPE and CONCATENATION, not STRIDED_SLICE with shrunk axes and PACK: XNNPACK takes these, so
        # the whole graph is one delegate partition (the same values either way: only data movement).
        flat = (-1 if rows is None else rows, cfg.units)
        hs, cs = ops.split(s, 2, axis=-1)
        per_layer = list(zip(_rows_of(ops, hs, cfg.layers, flat), _rows_of(ops, cs, cfg.layers, flat), strict=True))

        def pack(hcs):
            grid = (-1 if rows is None else rows, 1, cfg.units, 1)
            layers = [ops.concatenate([ops.reshape(h, grid), ops.reshape(c, grid)], axis=-1) for h, c in hcs]
            return {f"{n}_out": layers[0] if len(layers) == 1 else ops.concatenate(layers, axis=1)}
    return ins, per_layer, pack


def _rows_of(ops, x, layers: int, flat: tuple):
    """(rows, layers, units, 1) -> one (rows, units) tensor per layer."""
    parts = ops.split(x, layers, axis=1) if layers > 1 else [x]
    return [ops.reshape(p, flat) for p in parts]


def _stage_input(stage: int, x, cfg: DTLNConfig, opts: StreamOptions):
    """(input of the first LSTM, the encoded frame or None) for a stage's data rows ``x``."""
    from ..layers import InstantLayerNorm, Log, keras

    if stage == 1:
        h = x
        if cfg.norm_mag:
            if not opts.log_mag_outside:
                h = Log(name="log_mag")(h)
            h = InstantLayerNorm(cfg.eps, name="mag_norm")(h)
        return h, None
    enc = x if opts.bases_outside else keras.layers.Dense(cfg.encoder_size, use_bias=False, name="encoder")(x)
    return InstantLayerNorm(cfg.eps, name="enc_norm")(enc), enc


def _set_stream_weights(model, weights: DTLNWeights) -> None:
    """The weights into a streaming graph's layers (those it has; its bases as dense kernels)."""
    for name, ws in weights.arrays.items():
        try:
            layer = model.get_layer(name)
        except ValueError:
            continue
        if name in ("encoder", "decoder"):
            ws = [ws[0][0]]  # (1, n, m) conv kernel -> (n, m) dense kernel
        layer.set_weights(ws)


def build_streaming_models(weights: DTLNWeights, opts: StreamOptions = StreamOptions(), rows: int | None = 1,
                           frames: int = 1):
    """The two submodels with explicit named state: [(keras model, IOSpec)], names ``mask`` and ``frame``.

    Per block by default; ``frames`` > 1: T hops per call, the recurrence unrolled inside the graph
    (``SeqLSTM``), states in and out once per call; ``rows`` > 1: that many independent streams per
    call, states ``[rows, ...]``; ``rows`` None: a dynamic batch axis (resized at load). Every matmul takes
    all rows x hops at once.
    """
    from ..layers import LSTMStep, SeqLSTM, keras

    ops = keras.ops
    cfg = weights.config
    if opts.mask_logits and not opts.bases_outside:
        raise ConvertError("mask_logits needs bases_outside: with stage 2's bases in the graph, the graph applies "
                           "its mask itself")
    suffix = f"_t{frames}" if frames > 1 else "_bn" if rows is None else f"_b{rows}" if rows > 1 else ""
    out = []
    for stage, prefix, n_in, n_mask in ((1, "mask", cfg.bins, cfg.bins),
                                        (2, "frame", cfg.block_len, cfg.encoder_size)):
        outside = stage == 2 and opts.bases_outside
        data_name = "mag" if stage == 1 else "enc" if outside else "frame"
        if outside:
            n_in = cfg.encoder_size
        x_in = keras.Input(batch_shape=(rows, frames, n_in), name=data_name)
        state_in, per_layer, pack = _state_io(keras, prefix, cfg, opts, rows)
        flat = -1 if rows is None else rows * frames  # None: the batch is resized at load
        h, enc = _stage_input(stage, ops.reshape(x_in, (flat, n_in)), cfg, opts)
        hcs = []
        for k in range(cfg.layers):
            if frames > 1:
                h, hk, ck = SeqLSTM(cfg.units, frames, opts.clip_cell, opts.clip_gates, opts.bias_first,
                                    name=f"lstm{stage}_{k}")([h, *per_layer[k]])
            else:
                hk, ck = LSTMStep(cfg.units, opts.clip_cell, opts.clip_gates, opts.bias_first,
                                  name=f"lstm{stage}_{k}")(
                    [h, *per_layer[k]])
                h = hk
            hcs.append((hk, ck))
        mask = keras.layers.Dense(n_mask, activation=None if opts.mask_logits else "sigmoid", name=f"dense{stage}")(h)
        if stage == 1 or outside:
            y = ops.reshape(mask, (-1 if rows is None else rows, frames, n_mask))
            out_name = "mask" if stage == 1 else "enc_mask"
        else:
            dec = keras.layers.Dense(cfg.block_len, use_bias=False, name="decoder")(enc * mask)
            y = ops.reshape(dec, (-1 if rows is None else rows, frames, cfg.block_len))
            out_name = "frame_out"
        outputs = {out_name: y, **pack(hcs)}
        model = keras.Model(inputs={data_name: x_in, **state_in}, outputs=outputs, name=f"dtln_{prefix}{suffix}")
        _set_stream_weights(model, weights)
        io = IOSpec(
            name=prefix,
            inputs=tuple((n, tuple(t.shape)) for n, t in {data_name: x_in, **state_in}.items()),
            outputs=tuple((n, tuple(t.shape)) for n, t in outputs.items()),
            data_input=data_name, data_output=out_name,
            states=tuple((n, f"{n}_out") for n in state_in))
        out.append((model, io))
    return out


def bundle_options(manifest: Mapping, cfg: DTLNConfig) -> StreamOptions:
    """The graph options a bundle was converted with (its ``converter_options``), else its mode's."""
    known = {f.name for f in fields(StreamOptions)}
    saved = {k: v for k, v in manifest.get("converter_options", {}).items() if k in known}
    return StreamOptions(**saved) if saved else stream_options_for(manifest["quantization"], cfg)


def tblock_models(weights: DTLNWeights, manifest: Mapping, frames: int):
    """The bundle's two submodels over ``frames`` hops per call (``Family.tblock_models``)."""
    return build_streaming_models(weights, bundle_options(manifest, weights.config), frames=frames)


def batch_models(weights: DTLNWeights, manifest: Mapping, batch: int | None):
    """The bundle's two per-block submodels with ``batch`` independent streams, None: a dynamic batch the
    runtime resizes (``Family.batch_models``)."""
    opts = bundle_options(manifest, weights.config)
    if opts.split_states or opts.bases_outside:
        raise ConvertError("batch graphs are made for packed-state DTLN bundles whose stage 2 bases are in the "
                           "graph only (float-activation modes)")
    return build_streaming_models(weights, opts, rows=batch)
