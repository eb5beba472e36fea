"""The DTLN family: weights (published h5 layout), the Keras training model and the family's entry; its
streaming submodels and the graph changes each quantisation mode asks of them are in ``dtln_graphs``."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import h5py
import numpy as np

from ..errors import ConvertError, WeightsError
from ..modes import Mode
from .base import PRETRAINED, SAMPLE_RATE, DefaultWeights, Family, Plan, manifest_model
from .dtln_graphs import StreamOptions, batch_models, build_streaming_models, stream_options_for, tblock_models

NAME = "dtln"

# Canonical order of weighted layers; the published h5 files store them in exactly this order.
# "mag_norm" exists only in the norm variant (log-magnitude + instant layer norm before the first LSTM).


@dataclass(frozen=True)
class DTLNConfig:
    """Architecture of one DTLN; the published models are the defaults."""

    block_len: int = 512
    """Samples per frame."""
    block_shift: int = 128
    """Samples per hop."""
    units: int = 128
    """LSTM units per layer."""
    layers: int = 2
    """LSTM layers per separation core."""
    encoder_size: int = 256
    """Filters of the learned analysis basis of stage 2."""
    norm_mag: bool = False
    """True: log(|X| + 1e-7) and an instant layer norm before the first LSTM (the ``norm`` files)."""
    dropout: float = 0.25
    eps: float = 1e-7
    """Instant layer norm epsilon."""
    gate_clip: float | None = None
    """Trained with LSTM gate pre-activations clipped to +-this (part of the model: every graph clips)."""
    cell_clip: float | None = None
    """Trained with the LSTM cell state clipped to +-this."""
    qat: bool = False
    """Trained (fine-tuned) with int8 fake quantisation of gate pre-activations, cell and hidden state."""

    @property
    def bins(self) -> int:
        return self.block_len // 2 + 1

    @property
    def latency_samples(self) -> int:
        return self.block_len - self.block_shift

    @property
    def sample_rate(self) -> int:
        """Hertz."""
        return SAMPLE_RATE


def layer_shapes(cfg: DTLNConfig) -> list[tuple[str, list[tuple[int, ...]]]]:
    """(layer name, weight shapes) in canonical order."""
    u4 = 4 * cfg.units
    out: list[tuple[str, list[tuple[int, ...]]]] = []
    if cfg.norm_mag:
        out.append(("mag_norm", [(cfg.bins,), (cfg.bins,)]))
    for stage, n_in, n_out in ((1, cfg.bins, cfg.bins), (2, cfg.encoder_size, cfg.encoder_size)):
        if stage == 2:
            out.append(("encoder", [(1, cfg.block_len, cfg.encoder_size)]))
            out.append(("enc_norm", [(cfg.encoder_size,), (cfg.encoder_size,)]))
        for k in range(cfg.layers):
            out.append((f"lstm{stage}_{k}", [(n_in if k == 0 else cfg.units, u4), (cfg.units, u4), (u4,)]))
        out.append((f"dense{stage}", [(cfg.units, n_out), (n_out,)]))
    out.append(("decoder", [(1, cfg.encoder_size, cfg.block_len)]))
    return out


def budget(cfg: DTLNConfig) -> dict[str, float]:
    """Parameters and multiply-accumulates per frame: one MAC per weight of every matrix (LSTM kernels,
    dense layers, the stage-2 encoder/decoder bases); norms, biases and gates are left out (< 1 %)."""
    shapes = [s for _, ws in layer_shapes(cfg) for s in ws]
    macs = sum(int(np.prod(s)) for s in shapes if len(s) >= 2)
    return {"parameters": sum(int(np.prod(s)) for s in shapes), "macs_per_frame": macs,
            "macs_per_second": macs * cfg.sample_rate // cfg.block_shift}


@dataclass(frozen=True)
class DTLNWeights:
    """All weights of one DTLN by canonical layer name, plus its config."""

    config: DTLNConfig
    arrays: dict[str, list[np.ndarray]] = field(repr=False)

    @classmethod
    def random(cls, cfg: DTLNConfig, seed: int = 0) -> "DTLNWeights":
        rng = np.random.default_rng(seed)
        arrays = {}
        for name, shapes in layer_shapes(cfg):
            ws = []
            for i, s in enumerate(shapes):
                if name.endswith("norm"):
                    ws.append(np.full(s, 1.0 if i == 0 else 0.0, np.float32))
                elif len(s) == 1:
                    ws.append((0.1 * rng.standard_normal(s)).astype(np.float32))
                else:
                    fan_in = s[-2]
                    ws.append((rng.standard_normal(s) / np.sqrt(fan_in)).astype(np.float32))
            arrays[name] = ws
        return cls(cfg, arrays)


def _read_h5_layers(path: str) -> list[tuple[str, list[np.ndarray]]]:
    """Weighted layers of a Keras (2.x legacy) h5 file in file order: [(layer, [arrays])]."""
    try:
        f = h5py.File(path, "r")
    except FileNotFoundError:
        raise WeightsError(f"{path}: no such weights file") from None
    except OSError as exc:
        raise WeightsError(f"{path}: not a readable HDF5 weights file ({exc})") from None
    with f:
        g = f["model_weights"] if "model_weights" in f else f
        if "layer_names" not in g.attrs:
            raise WeightsError(f"{path}: no 'layer_names' attribute; expected a Keras h5 weights file")
        layers = []
        for ln in g.attrs["layer_names"]:
            ln = ln.decode() if isinstance(ln, bytes) else str(ln)
            wn = [w.decode() if isinstance(w, bytes) else str(w) for w in g[ln].attrs.get("weight_names", [])]
            if wn:
                layers.append((ln, [np.asarray(g[ln][w], dtype=np.float32) for w in wn]))
        return layers


def load_weights(path: str, block_shift: int | None = None) -> DTLNWeights:
    """Load a DTLN h5 (published or ours); the architecture is read from the arrays' shapes.

    The norm variant is told apart by content: its first weighted layer is a (bins,) norm, not an LSTM.
    The hop is not in the file: ``block_shift`` (default 128 = 8 ms) sets it.
    """
    block_shift = DTLNConfig.block_shift if block_shift is None else block_shift
    layers = _read_h5_layers(path)
    if not layers:
        raise WeightsError(f"{path}: holds no weights")
    first = layers[0][1]
    norm_mag = len(first) == 2 and first[0].ndim == 1
    try:
        lstm = layers[1 if norm_mag else 0]
        units = lstm[1][1].shape[0]
        n_lstm = 0
        for _, ws in layers[(1 if norm_mag else 0):]:
            if len(ws) == 3:
                n_lstm += 1
            else:
                break
        enc = next(ws[0] for _, ws in layers if len(ws) == 1 and ws[0].ndim == 3)
        cfg = DTLNConfig(block_len=enc.shape[1], block_shift=block_shift, units=units, layers=n_lstm,
                         encoder_size=enc.shape[2], norm_mag=norm_mag)
    except (IndexError, StopIteration):
        raise WeightsError(f"{path}: layer layout {[ln for ln, _ in layers]} is not a DTLN") from None
    extra = _read_h5_config(path)
    if extra:
        cfg = replace(cfg, **{k: v for k, v in extra.items() if k in ("gate_clip", "cell_clip", "qat", "eps")})
    expected = layer_shapes(cfg)
    if len(expected) != len(layers):
        raise WeightsError(f"{path}: {len(layers)} weighted layers, a DTLN with {n_lstm} LSTM layers per stage "
                           f"{'(norm variant) ' if norm_mag else ''}has {len(expected)}")
    arrays = {}
    for (name, shapes), (ln, ws) in zip(expected, layers, strict=True):
        got = [tuple(w.shape) for w in ws]
        if got != shapes:
            raise WeightsError(f"{path}: layer {ln!r} (DTLN {name}) has weight shapes {got}, expected {shapes}")
        arrays[name] = ws
    return DTLNWeights(cfg, arrays)


def _read_h5_config(path: str) -> dict:
    with h5py.File(path, "r") as f:
        raw = f.attrs.get("dtln_config")
    if raw is None:
        return {}
    return json.loads(raw.decode() if isinstance(raw, bytes) else str(raw))


def save_weights(weights: DTLNWeights, path: str) -> None:
    """Write weights in the published h5 layout (readable by ``load_weights`` and by the DTLN code)."""
    with h5py.File(path, "w") as f:
        f.attrs["dtln_config"] = json.dumps(asdict(weights.config)).encode()
        names = [n for n, _ in layer_shapes(weights.config)]
        f.attrs["layer_names"] = np.array([n.encode() for n in names])
        f.attrs["backend"] = b"tensorflow"
        for n in names:
            g = f.create_group(n)
            ws = weights.arrays[n]
            wn = [f"{n}/w{i}:0" for i in range(len(ws))]
            g.attrs["weight_names"] = np.array([w.encode() for w in wn])
            for w, a in zip(wn, ws, strict=True):
                g.create_dataset(w, data=a)


# ---------------------------------------------------------------------------------------------
# Keras models (TensorFlow backend)

def build_training_model(cfg: DTLNConfig, weights: DTLNWeights | None = None):
    """Whole-utterance DTLN: (batch, samples) -> (batch, samples'), samples' = framed length."""
    from ..layers import (
        QATLSTM,
        STFT,
        InstantLayerNorm,
        ISTFTFrames,
        Log,
        OverlapAdd,
        QATDense,
        QLSTMCell,
        TrackedFakeQuant,
        keras,
    )

    L = keras.layers
    x = keras.Input(shape=(None,), name="audio")
    mag, phase = STFT(cfg.block_len, cfg.block_shift, name="stft")(x)
    h = mag
    if cfg.norm_mag:
        h = Log(name="log_mag")(mag)
        if cfg.qat:  # the full-int8 graph's input: the runtime feeds log-magnitudes
            h = TrackedFakeQuant(name="log_mag_int8")(h)
        h = InstantLayerNorm(cfg.eps, name="mag_norm")(h)

    def core(h, stage, n_out):
        for k in range(cfg.layers):
            name = f"lstm{stage}_{k}"
            if cfg.qat:
                h = QATLSTM(cfg.units, cfg.gate_clip or 1e4, cfg.cell_clip or 1e4, name=name)(h)
            elif cfg.gate_clip is not None:
                cell = QLSTMCell(cfg.units, cfg.gate_clip, cfg.cell_clip or 1e4)
                h = L.RNN(cell, return_sequences=True, name=name)(h)
            else:
                h = L.LSTM(cfg.units, return_sequences=True, name=name)(h)
            if k < cfg.layers - 1:
                h = L.Dropout(cfg.dropout, name=f"dropout{stage}_{k}")(h)
        if cfg.qat:
            return QATDense(n_out, name=f"dense{stage}")(h)
        return L.Dense(n_out, activation="sigmoid", name=f"dense{stage}")(h)

    mask1 = core(h, 1, cfg.bins)
    frames = ISTFTFrames(cfg.block_len, name="istft")([L.Multiply(name="apply_mask1")([mag, mask1]), phase])
    enc = L.Conv1D(cfg.encoder_size, 1, use_bias=False, name="encoder")(frames)
    mask2 = core(InstantLayerNorm(cfg.eps, name="enc_norm")(enc), 2, cfg.encoder_size)
    dec = L.Conv1D(cfg.block_len, 1, use_bias=False, name="decoder")(L.Multiply(name="apply_mask2")([enc, mask2]))
    y = OverlapAdd(cfg.block_shift, name="overlap_add")(dec)
    model = keras.Model(x, y, name="dtln")
    if weights is not None:
        set_model_weights(model, weights)
    return model


def set_model_weights(model, weights: DTLNWeights) -> None:
    for name, ws in weights.arrays.items():
        model.get_layer(name).set_weights(ws)


def get_model_weights(model, cfg: DTLNConfig) -> DTLNWeights:
    return DTLNWeights(cfg, {n: [np.asarray(w, np.float32) for w in model.get_layer(n).get_weights()]
                             for n, _ in layer_shapes(cfg)})


def runtime_bases(weights: DTLNWeights) -> dict[str, np.ndarray]:
    """Stage 2's encoder (block_len, encoder_size) and decoder (encoder_size, block_len) for a bundle
    built with ``bases_outside``, stored as float16 (the runtime computes in float32)."""
    return {"encoder": weights.arrays["encoder"][0][0].astype(np.float16),
            "decoder": weights.arrays["decoder"][0][0].astype(np.float16)}


# ---------------------------------------------------------------------------------------------
# The family's entry for the converter, the trainer and the release


def plan(weights: DTLNWeights, quantize: Mode, source: str, opts: StreamOptions | None = None) -> Plan:
    """The two submodels with ``quantize``'s graph changes (or ``opts``), against the float graphs as trained."""
    cfg = weights.config
    opts = stream_options_for(quantize, cfg, opts)
    family_options = {"frame_rms_norm": opts.frame_rms_norm, "log_mag": bool(opts.log_mag_outside and cfg.norm_mag)}
    arrays = {}
    if opts.bases_outside:
        family_options["stage2_bases"] = "runtime"
        arrays = runtime_bases(weights)
    if opts.mask_logits:
        family_options["mask_sigmoid"] = "runtime"
    if cfg.qat:
        hint = (" This model was fine-tuned with --qat and still misses: continue with --qat --consistency 1 (its "
                "int8 simulation held to the same weights in float, what this gate measures; docs/generalisation.md). "
                "The shipped pretrained_model/dtln-finetuned-int8 is fine-tuned for it")
    else:
        hint = (f" Full int8 needs a model fine-tuned for it: python -m convert.train --init {source or 'WEIGHTS.h5'}"
                " --qat --out runs/qat, then convert runs/qat/best.h5")
    return Plan(
        window="none", family_options=family_options, pairs=build_streaming_models(weights, opts),
        reference=build_streaming_models(weights, stream_options_for("none", cfg)), reference_options={},
        model=manifest_model(cfg, budget(cfg), source), converter_options=asdict(opts), arrays=arrays,
        int8_hint=hint + "; for this checkpoint use --quantize dynamic (int8 weights) or --quantize int16x8.")


def default_weights(quantize: str) -> DefaultWeights:
    """The default model's weights (``dtln-finetuned``: the best DTLN we have); for full int8 the one
    fine-tuned for it (the default's full int8 is refused, its model card says why)."""
    if quantize == "int8":
        return DefaultWeights(PRETRAINED / "dtln-finetuned-int8" / "dtln_weights.h5",
                              "the published DTLN (norm variant) fine-tuned for full int8 with --qat --consistency; "
                              "the other modes convert the default model's "
                              "pretrained_model/dtln-finetuned/dtln_weights.h5")
    return DefaultWeights(PRETRAINED / "dtln-finetuned" / "dtln_weights.h5",
                          "the default model's weights: the published DTLN fine-tuned on our data, averaged with it")


def owns_file(path: str) -> bool:
    """A Keras h5 without a ``family`` attribute (the published layout and ours) or with ``family = dtln``."""
    try:
        with h5py.File(path, "r") as f:
            return f.attrs.get("family", NAME) == NAME
    except OSError:
        return False


def train_architecture(tc, last: Path | None) -> tuple[DTLNConfig, DTLNWeights | None]:
    """The run's own architecture on resume (not its --init's), else --init's, else --units/--plain; --qat on top."""
    if last is not None:
        init, cfg = None, load_weights(str(last)).config
    else:
        init = load_weights(tc.init) if tc.init else None
        cfg = init.config if init else DTLNConfig(units=tc.units, norm_mag=not tc.plain)
    if tc.model_config:
        raise ConvertError("--model-config is poconet-only; a DTLN's architecture comes from --units/--plain/--init")
    if tc.qat:
        cfg = replace(cfg, qat=True, gate_clip=tc.gate_clip, cell_clip=tc.cell_clip)
    if tc.consistency:  # the simulation and its float twin must see the same network, not two dropout masks
        cfg = replace(cfg, dropout=0.0)
    return cfg, DTLNWeights(cfg, init.arrays) if init else None


LEVEL_TOLERANCE_DB = 0.5
"""Output level errors below this are left alone."""


def leveled(weights: DTLNWeights, dev_count: int = 128) -> tuple[DTLNWeights, dict | None]:
    """(weights, {gain_db, inverted} or None): the decoder scaled by the least-squares output gain on the dev mixes.

    SI-SDR is blind to scale and sign, and a magnitude loss to sign, so a model trained on them may come
    out louder or quieter than the speech it estimates, or with its polarity inverted (seen: x -0.5).
    The decoder is linear and last, so scaling its weights scales the output exactly. Returns the
    weights unchanged and None when the gain is positive and within ``LEVEL_TOLERANCE_DB`` of 0 dB,
    or when the dev data is absent.
    """
    from ..data import dev_set

    dev = dev_set(count=dev_count)
    if dev is None:
        return weights, None
    noisy, clean = dev
    model = build_training_model(weights.config, weights)
    est = np.concatenate([np.asarray(model(noisy[i:i + 16], training=False)) for i in range(0, len(noisy), 16)])
    n = min(est.shape[1], clean.shape[1])
    gain = float(np.sum(clean[:, :n] * est[:, :n]) / np.sum(np.square(est[:, :n], dtype=np.float64)))
    gain_db = 20 * np.log10(abs(gain))
    if gain > 0 and abs(gain_db) < LEVEL_TOLERANCE_DB:
        return weights, None
    arrays = dict(weights.arrays)
    arrays["decoder"] = [a * np.float32(gain) for a in arrays["decoder"]]
    return DTLNWeights(weights.config, arrays), {"gain_db": round(float(gain_db), 2), "inverted": gain < 0}


FLOAT_LAYERS = ("encoder", "decoder")
"""Stage 2's learned analysis and synthesis bases stay float32 in the dynamic mode. They map the waveform
to features and back, so their int8 error lands straight in the output: with them int8, clean speech came
out at PESQ-WB 3.91 / SI-SDR 32.8 dB (the fine-tuned model, 43 unseen utterances), with them float at 4.43 /
35.7 dB. They are a quarter of the weights, and in T-block and batch graphs run as one matrix product per
call, so they cost little there (T-block calls +18 %, per-block +46 %; docs/generalisation.md)."""

FAMILY = Family(
    name=NAME, weights_type=DTLNWeights, load_weights=load_weights, save_weights=save_weights, owns_file=owns_file,
    default_weights=default_weights, plan=plan, training_model=build_training_model,
    get_model_weights=get_model_weights, set_model_weights=set_model_weights,
    train_architecture=train_architecture, release_fix=leveled, tblock_models=tblock_models,
    batch_models=batch_models, float_layers=FLOAT_LAYERS)
