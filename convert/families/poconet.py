"""PoCoNet-style causal U-Net in Keras 3: config, budget figures, weights file, offline and streaming models.

Our edge design after the idea of PoCoNet (frequency-positional embeddings, a U-Net of dense conv
blocks, a temporal bottleneck), made causal and small:

- framing: 512-sample sqrt-Hann frames every 128 samples (the runtime's ``edge.stream`` framing);
- input per frame: the power-law compressed complex spectrum of bins 0..255 (``X * |X| ** (c - 1)``,
  real and imaginary as 2 channels), computed outside the graph; the Nyquist bin is zeroed;
- frequency-positional embedding channels ``cos(pi * k * f / bins)``, k = 1..pos_channels;
- a U-Net over frequency: per level a dense block of causal (time x frequency) convs whose time
  kernel only looks back, then a stride-2 frequency downsampling; a GRU over time on the flattened
  bottleneck (residual); transposed-conv upsampling, skip concatenation and a dense block per level;
- out: a complex mask per bin, its magnitude bounded by tanh (applied outside the graph too).

The streaming form runs ``frames`` hops per call of ``rows`` independent streams (or a batch axis sized
at load); each dense block keeps one cache of its last ``time_kernel - 1`` input frames (all channels its
layers read), the GRU keeps its hidden state.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Mapping

import h5py
import numpy as np

from ..errors import ConvertError, WeightsError
from ..modes import Mode
from .base import PRETRAINED, SAMPLE_RATE, DefaultWeights, Family, IOSpec, Plan, manifest_model

NAME = "poconet"
SUBMODEL = "unet"
MASK_EPS = 1e-12
"""Added to |m|^2 before the square root in the mask bound (keeps tanh(a)/a finite and smooth at 0)."""


@dataclass(frozen=True)
class PoCoNetConfig:
    """Architecture of one PoCoNet-style U-Net; the defaults are the edge model."""

    block_len: int = 512
    """Samples per frame."""
    block_shift: int = 128
    """Samples per hop."""
    window: str = "sqrt_hann"
    """Analysis/synthesis window of the shared framing (``edge.stream``)."""
    bins: int = 256
    """Frequency bins fed to the network (0 .. bins-1); higher bins are zeroed. Divisible by 2**levels."""
    channels: tuple[int, ...] = (8, 12, 16, 24, 32)
    """Channels per U-Net level (frequency halves from one to the next); the last is the bottleneck's."""
    depth: int = 2
    """Conv layers per dense block."""
    time_kernel: int = 2
    """Frames each conv sees (the current one and time_kernel - 1 before it)."""
    freq_kernel: int = 3
    """Bins each conv sees (odd, centred)."""
    pos_channels: int = 4
    """Frequency-positional embedding channels."""
    activation: str = "leaky_relu"
    """After every conv: ``leaky_relu`` (slope 0.2; every quantisation mode has a kernel) or ``elu``."""
    gru_units: int = 256
    """Hidden units of the bottleneck GRU."""
    compress: float = 0.3
    """Power-law exponent c of the input features X * |X| ** (c - 1)."""
    compress_eps: float = 1e-6
    """Added to |X| before the power (features stay finite at |X| = 0)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "channels", tuple(int(c) for c in self.channels))
        levels = len(self.channels) - 1
        if levels < 1:
            raise ValueError(f"channels needs at least two entries (a level and the bottleneck), got {self.channels}")
        if self.bins % (2 ** levels) or not 0 < self.bins <= self.block_len // 2 + 1:
            raise ValueError(f"bins {self.bins} must divide by 2**{levels} and be <= block_len // 2 + 1")
        if self.activation not in ("leaky_relu", "elu"):
            raise ValueError(f"activation must be leaky_relu or elu, got {self.activation!r}")
        if self.time_kernel < 1 or self.freq_kernel < 1 or self.freq_kernel % 2 == 0 or self.depth < 1:
            raise ValueError("time_kernel >= 1, depth >= 1 and an odd freq_kernel >= 1 are needed")

    @property
    def levels(self) -> int:
        return len(self.channels) - 1

    @property
    def latency_samples(self) -> int:
        return self.block_len - self.block_shift

    @property
    def sample_rate(self) -> int:
        """Hertz."""
        return SAMPLE_RATE

    @property
    def frames_per_second(self) -> float:
        return self.sample_rate / self.block_shift

    def freqs(self, level: int) -> int:
        return self.bins >> level

    @classmethod
    def from_dict(cls, d: dict) -> "PoCoNetConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown PoCoNet config keys {unknown} (known: {sorted(known)})")
        return cls(**d)


def cache_widths(cfg: PoCoNetConfig) -> dict[str, tuple[int, int]]:
    """Dense block name -> (bins, channels) of its cache: the block input plus all but its last layer output."""
    out = {}
    in_ch = 2 + cfg.pos_channels
    for lv in range(cfg.levels):
        c = cfg.channels[lv]
        out[f"enc{lv}"] = (cfg.freqs(lv), in_ch + (cfg.depth - 1) * c)
        in_ch = cfg.channels[lv + 1]
    for lv in range(cfg.levels):
        c = cfg.channels[lv]
        out[f"dec{lv}"] = (cfg.freqs(lv), c + (cfg.depth - 1) * c)
    return out


def budget(cfg: PoCoNetConfig) -> dict[str, float]:
    """Parameters and multiply-accumulates, counted analytically layer by layer.

    MACs count the weight multiplies of convs, dense layers and the GRU matmuls per frame; element-wise
    work (ELU, gates, features, mask) adds well under 1 % and is left out.
    """
    kt, kf, d = cfg.time_kernel, cfg.freq_kernel, cfg.depth
    params = macs = 0

    def dense_block(f, cin, c):
        nonlocal params, macs
        for i in range(d):
            k = kt * kf * (cin + i * c)
            params += k * c + c
            macs += f * k * c

    cin = 2 + cfg.pos_channels
    for lv in range(cfg.levels):
        f, c, c_next = cfg.freqs(lv), cfg.channels[lv], cfg.channels[lv + 1]
        dense_block(f, cin, c)
        params += 2 * c * c_next + c_next  # down: (1, 2) stride 2
        macs += (f // 2) * 2 * c * c_next
        cin = c_next
    flat = cfg.freqs(cfg.levels) * cfg.channels[-1]
    h = cfg.gru_units
    params += 3 * h * (flat + h) + 2 * 3 * h + h * flat + flat  # GRU + projection back
    macs += 3 * h * (flat + h) + h * flat
    for lv in range(cfg.levels):
        f, c, c_next = cfg.freqs(lv), cfg.channels[lv], cfg.channels[lv + 1]
        params += 2 * c_next * c + c  # up: transposed (1, 2) stride 2
        macs += (f // 2) * 2 * c_next * c
        params += 2 * c * c + c  # merge: 1x1 over [skip, up]
        macs += f * 2 * c * c
        dense_block(f, c, c)
    params += 2 * cfg.channels[0] + 2  # head
    macs += cfg.bins * cfg.channels[0] * 2
    return {"parameters": params, "macs_per_frame": macs, "macs_per_second": macs * cfg.frames_per_second}


# ---------------------------------------------------------------------------------------------
# Weights: our own h5 layout (config JSON + one group per layer)

@dataclass(frozen=True)
class PoCoNetWeights:
    """All weights by layer name (Keras weight order per layer), plus the config."""

    config: PoCoNetConfig
    arrays: dict[str, list[np.ndarray]] = field(repr=False)

    @classmethod
    def random(cls, cfg: PoCoNetConfig, seed: int = 0) -> "PoCoNetWeights":
        """Keras' default initialisers (seeded), head biased towards a pass-through mask."""
        from ..layers import keras

        keras.utils.set_random_seed(seed)
        return get_model_weights(build_training_model(cfg), cfg)

    @property
    def parameters(self) -> int:
        return int(sum(a.size for ws in self.arrays.values() for a in ws))


def expected_shapes(cfg: PoCoNetConfig) -> dict[str, list[tuple[int, ...]]]:
    """Layer name -> weight shapes, read from a freshly built offline model."""
    model = build_training_model(cfg)
    return {layer.name: [tuple(w.shape) for w in layer.weights] for layer in model.layers if layer.weights}


def save_weights(weights: PoCoNetWeights, path: str) -> None:
    """h5: attrs ``family`` and ``config`` (JSON); group per layer with datasets ``0``, ``1``, ... ."""
    with h5py.File(path, "w") as f:
        f.attrs["family"] = NAME
        f.attrs["config"] = json.dumps(asdict(weights.config))
        for name, ws in weights.arrays.items():
            g = f.create_group(name)
            for i, a in enumerate(ws):
                g.create_dataset(str(i), data=np.asarray(a, np.float32))


def load_weights(path: str, block_shift: int | None = None) -> PoCoNetWeights:
    """Load our h5; the config is read from the file, every layer and shape checked against it.

    ``block_shift``, when given, must be the hop the model was trained with (ConvertError otherwise).
    """
    try:
        f = h5py.File(path, "r")
    except FileNotFoundError:
        raise WeightsError(f"{path}: no such weights file") from None
    except OSError as exc:
        raise WeightsError(f"{path}: not a readable HDF5 weights file ({exc})") from None
    with f:
        if f.attrs.get("family") != NAME or "config" not in f.attrs:
            raise WeightsError(f"{path}: not a PoCoNet weights file (expected attrs family='{NAME}' and config; "
                               "a DTLN .h5 converts with --family dtln)")
        try:
            cfg = PoCoNetConfig.from_dict(json.loads(f.attrs["config"]))
        except (ValueError, TypeError) as exc:
            raise WeightsError(f"{path}: bad config attribute ({exc})") from None
        stored = {name: [np.asarray(f[name][k], np.float32) for k in sorted(f[name], key=int)] for name in f}
    want = expected_shapes(cfg)
    missing = sorted(set(want) - set(stored))
    extra = sorted(set(stored) - set(want))
    if missing or extra:
        raise WeightsError(f"{path}: layers do not match its config: missing {missing}, unexpected {extra}")
    for name, shapes in want.items():
        got = [tuple(a.shape) for a in stored[name]]
        if got != shapes:
            raise WeightsError(f"{path}: layer {name!r} has weight shapes {got}, expected {shapes}")
    if block_shift is not None and block_shift != cfg.block_shift:
        raise ConvertError(f"--block-shift {block_shift}: a poconet model runs at the hop it was trained "
                           f"with ({cfg.block_shift} in {path})")
    return PoCoNetWeights(cfg, {name: stored[name] for name in want})


# ---------------------------------------------------------------------------------------------
# Keras layers and models (TensorFlow backend)

def windows(cfg: PoCoNetConfig) -> tuple[np.ndarray, np.ndarray]:
    """(analysis, synthesis) float32 windows exactly as the runtime framing uses them."""
    from edge.stream import windows as edge_windows

    ana, syn = edge_windows(cfg.window, cfg.block_len, cfg.block_shift)
    ones = np.ones(cfg.block_len)
    return (ones if ana is None else ana).astype(np.float32), (ones if syn is None else syn).astype(np.float32)


def pos_table(cfg: PoCoNetConfig) -> np.ndarray:
    """(bins, pos_channels) float32: cos(pi * k * f / bins), k = 1..pos_channels."""
    f = np.arange(cfg.bins)[:, None]
    k = np.arange(1, cfg.pos_channels + 1)[None, :]
    return np.cos(np.pi * k * f / cfg.bins).astype(np.float32)


def _unet(cfg: PoCoNetConfig, feat, caches: dict | None, gru_state=None, frames: int | None = None,
          dynamic_rows: bool = False):
    """The network on features (batch, frames, bins, 2) -> raw mask (batch, frames, bins, 2).

    ``caches is None``: whole utterance, causal zero padding in time. Otherwise streaming: ``caches``
    maps block name -> (rows, time_kernel - 1, bins_l, width) input, ``gru_state`` is (rows, gru_units);
    returns the new caches and GRU state too. ``dynamic_rows``: the batch axis is unknown until load, so the
    reshapes give it as -1 (``frames`` is known) rather than reading it from the tensor's shape at run time.
    """
    from ..layers import FreqEmbedding, GRUStep, keras

    ops = keras.ops
    L = keras.layers
    kt, kf, act = cfg.time_kernel, cfg.freq_kernel, cfg.activation
    pf = (kf - 1) // 2
    new_caches = {}

    def dense_block(name, x, c):
        hist = None if caches is None else caches.get(name)
        z = x
        y = x
        for i in range(cfg.depth):
            cin = z.shape[-1]
            if kt == 1:
                win = z
            elif hist is None:
                win = ops.pad(z, [[0, 0], [kt - 1, 0], [0, 0], [0, 0]])
            else:
                win = ops.concatenate([hist[..., :cin], z], axis=1)
            if pf:
                win = ops.pad(win, [[0, 0], [0, 0], [pf, pf], [0, 0]])
            y = L.Conv2D(c, (kt, kf), activation=act, name=f"{name}_conv{i}")(win)
            if i < cfg.depth - 1:
                z = ops.concatenate([z, y], axis=-1)
        if hist is not None:
            new_caches[name] = ops.concatenate([hist, z], axis=1)[:, -(kt - 1):]
        return y

    h = FreqEmbedding(pos_table(cfg), name="freq_embedding")(feat)
    skips = []
    for lv in range(cfg.levels):
        h = dense_block(f"enc{lv}", h, cfg.channels[lv])
        skips.append(h)
        h = L.Conv2D(cfg.channels[lv + 1], (1, 2), strides=(1, 2), activation=act, name=f"down{lv}")(h)
    fb, cb = cfg.freqs(cfg.levels), cfg.channels[-1]
    if dynamic_rows:
        flat = ops.reshape(h, (-1, frames, fb * cb))
    else:
        flat = L.Reshape((-1, fb * cb), name="flatten")(h)
    new_gru = None
    if caches is None:
        g = L.GRU(cfg.gru_units, return_sequences=True, name="gru")(flat)
    else:
        step = GRUStep(cfg.gru_units, name="gru")
        state = gru_state
        outs = []
        for t in range(frames):
            state = step([flat[:, t], state])
            outs.append(state)
        g = outs[0][:, None] if frames == 1 else ops.stack(outs, axis=1)
        new_gru = state
    if dynamic_rows:  # Dense on 2-D rows: on 3-D input it would read the batch size from the tensor at run time
        g = L.Dense(fb * cb, name="gru_proj")(ops.reshape(g, (-1, cfg.gru_units)))
        h = ops.reshape(flat + ops.reshape(g, (-1, frames, fb * cb)), (-1, frames, fb, cb))
    else:
        g = L.Dense(fb * cb, name="gru_proj")(g)
        h = L.Reshape((-1, fb, cb), name="unflatten")(flat + g)
    for lv in reversed(range(cfg.levels)):
        c = cfg.channels[lv]
        u = L.Conv2DTranspose(c, (1, 2), strides=(1, 2), activation=act, name=f"up{lv}")(h)
        m = L.Conv2D(c, 1, activation=act, name=f"dec{lv}_merge")(ops.concatenate([skips[lv], u], axis=-1))
        h = dense_block(f"dec{lv}", m, c)
    raw = L.Conv2D(2, 1, name="head")(h)
    return raw, new_caches, new_gru


def build_training_model(cfg: PoCoNetConfig, weights: PoCoNetWeights | None = None):
    """Whole-utterance model: (batch, samples) -> (batch, samples), delay compensated, same framing as edge."""
    from ..layers import FramedAnalysis, MaskedSynthesis, PowerCompress, keras

    ana, syn = windows(cfg)
    audio = keras.Input(shape=(None,), name="audio")
    spec = FramedAnalysis(cfg.block_len, cfg.block_shift, ana, name="analysis")(audio)
    feat = PowerCompress(cfg.bins, cfg.compress, cfg.compress_eps, name="features")(spec)
    raw, _, _ = _unet(cfg, feat, None)
    y = MaskedSynthesis(cfg.block_len, cfg.block_shift, cfg.bins, syn, MASK_EPS, name="synthesis")([spec, raw, audio])
    model = keras.Model(audio, y, name="poconet")
    if weights is not None:
        set_model_weights(model, weights)
    else:
        head = model.get_layer("head")
        kernel, bias = head.get_weights()
        head.set_weights([kernel, np.array([1.5, 0.0], np.float32)])  # start near a pass-through mask
    return model


def set_model_weights(model, weights: PoCoNetWeights) -> None:
    for name, ws in weights.arrays.items():
        model.get_layer(name).set_weights(ws)


def get_model_weights(model, cfg: PoCoNetConfig) -> PoCoNetWeights:
    return PoCoNetWeights(cfg, {layer.name: [np.asarray(w, np.float32) for w in layer.get_weights()]
                                for layer in model.layers if layer.weights})


def state_names(cfg: PoCoNetConfig) -> list[str]:
    """Signature names of the state inputs (outputs append ``_out``), in signature order."""
    names = [f"{b}_cache" for b in cache_widths(cfg)] if cfg.time_kernel > 1 else []
    return names + ["gru_state"]


def build_streaming_model(weights: PoCoNetWeights, frames: int = 1, rows: int | None = 1):
    """The FFT-free streaming submodel: ``frames`` hops per call, every cache and the GRU state named.

    Inputs ``feat`` (rows, frames, bins, 2) and ``NAME`` states (rows, ...); outputs ``mask``
    (rows, frames, bins, 2) (raw: bound it with tanh(|m|)/|m|) and ``NAME_out``. ``rows``: independent
    streams per call, each with its own state rows; None: a batch axis the runtime sizes at load
    (``resize_tensor_input`` on axis 0 of every input). Returns (keras model, IOSpec).
    """
    from ..layers import keras

    if rows is not None and (isinstance(rows, bool) or not isinstance(rows, int) or rows < 1):
        raise ConvertError(f"rows must be an int >= 1 or None (a batch axis sized at load), got {rows!r}")
    cfg = weights.config
    feat = keras.Input(batch_shape=(rows, frames, cfg.bins, 2), name="feat")
    caches = {}
    if cfg.time_kernel > 1:
        for name, (fl, width) in cache_widths(cfg).items():
            caches[name] = keras.Input(batch_shape=(rows, cfg.time_kernel - 1, fl, width), name=f"{name}_cache")
    gru = keras.Input(batch_shape=(rows, cfg.gru_units), name="gru_state")
    raw, new_caches, new_gru = _unet(cfg, feat, caches, gru, frames, dynamic_rows=rows is None)
    inputs = {"feat": feat, **{f"{n}_cache": t for n, t in caches.items()}, "gru_state": gru}
    outputs = {"mask": raw, **{f"{n}_cache_out": new_caches[n] for n in caches}, "gru_state_out": new_gru}
    suffix = "_bn" if rows is None else f"_b{rows}" if rows > 1 else ""
    model = keras.Model(inputs=inputs, outputs=outputs, name=f"poconet_stream{suffix}")
    for name, ws in weights.arrays.items():
        model.get_layer(name).set_weights(ws)
    io = IOSpec(name=SUBMODEL,
                inputs=tuple((n, tuple(t.shape)) for n, t in inputs.items()),
                outputs=tuple((n, tuple(t.shape)) for n, t in outputs.items()),
                data_input="feat", data_output="mask",
                states=tuple((n, f"{n}_out") for n in inputs if n != "feat"))
    return model, io


def tblock_models(weights: PoCoNetWeights, manifest: Mapping, frames: int):
    """The bundle's submodel over ``frames`` hops per call (``Family.tblock_models``): the same graph in
    every mode, so the manifest adds nothing."""
    return [build_streaming_model(weights, frames=frames)]


def batch_models(weights: PoCoNetWeights, manifest: Mapping, batch: int | None):
    """The bundle's per-block submodel with ``batch`` independent streams per call, states ``[batch, ...]``
    (``Family.batch_models``); None: a batch axis sized at load. The same graph in every mode, like
    ``tblock_models``."""
    return [build_streaming_model(weights, rows=batch)]


def family_options(cfg: PoCoNetConfig) -> dict:
    """What the runtime's per-block step needs (``edge.families.poconet``)."""
    return {"bins": cfg.bins, "compress": cfg.compress, "compress_eps": cfg.compress_eps,
            "mask": "complex_tanh", "mask_eps": MASK_EPS}


# ---------------------------------------------------------------------------------------------
# The family's entry for the converter, the trainer and the release


def plan(weights: PoCoNetWeights, quantize: Mode, source: str, opts=None) -> Plan:
    """One submodel in every mode (none of the modes' graph changes applies to this architecture); verification
    also checks the float streaming graph against the whole-utterance model."""
    if opts is not None:
        raise ConvertError("poconet takes no stream options: its graph is the same in every mode")
    cfg = weights.config
    pair = build_streaming_model(weights, frames=1)
    model = build_training_model(cfg, weights)

    def offline(audio: list[np.ndarray]) -> list[np.ndarray]:
        return [np.asarray(model(x.astype(np.float32)[None], training=False))[0] for x in audio]

    return Plan(
        window=cfg.window, family_options=family_options(cfg), pairs=[pair], reference=[pair],
        reference_options=family_options(cfg), model=manifest_model(cfg, budget(cfg), source),
        converter_options={"frames_per_call": 1},
        int8_hint=" For this checkpoint use --quantize float16 or --quantize dynamic (int8 weights).",
        offline=offline)


def default_weights(quantize: str) -> DefaultWeights:
    return DefaultWeights(PRETRAINED / "poconet-16k" / "poconet_weights.h5")


def owns_file(path: str) -> bool:
    """Our h5 layout: attribute ``family = poconet``."""
    try:
        with h5py.File(path, "r") as f:
            return f.attrs.get("family") == NAME
    except OSError:
        return False


def train_architecture(tc, last: Path | None) -> tuple[PoCoNetConfig, PoCoNetWeights | None]:
    """(config, initial weights or None): the run's own on resume, --init's, else the default + --model-config."""
    if tc.qat:
        raise ConvertError("poconet: --qat is DTLN-only")
    if last is not None:
        return load_weights(str(last)).config, None
    if tc.model_config and tc.init:
        raise ConvertError("poconet: --model-config cannot change an --init model")
    if tc.init:
        init = load_weights(tc.init)
        return init.config, init
    cfg = PoCoNetConfig()
    if tc.model_config:
        try:
            cfg = PoCoNetConfig.from_dict(json.loads(Path(tc.model_config).read_text()))
        except (OSError, ValueError, TypeError) as exc:
            raise ConvertError(f"--model-config {tc.model_config}: {exc}") from None
    return cfg, None


FAMILY = Family(
    name=NAME, weights_type=PoCoNetWeights, load_weights=load_weights, save_weights=save_weights,
    owns_file=owns_file, default_weights=default_weights, plan=plan, training_model=build_training_model,
    get_model_weights=get_model_weights, set_model_weights=set_model_weights,
    train_architecture=train_architecture, tblock_models=tblock_models, batch_models=batch_models)
