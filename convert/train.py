"""``python -m convert.train``: train DTLN or PoCoNet on speech + noise folders mixed on the fly (Keras 3, CPU)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from .data import RATE, MixConfig, Mixer, corpus, dev_set, find_audio, load_files, shared_data, without_heldout
from .errors import ConvertError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m convert.train", description=__doc__.split(":", 1)[1].strip())
    p.add_argument("--out", metavar="DIR", required=True, help="run folder: checkpoints, log.jsonl, best weights")
    p.add_argument("--data", metavar="DIR", default=None,
                   help="data root with speech/{train,dev} and noise/{train,dev} (default: ../shared/data)")
    p.add_argument("--speech", metavar="DIR", nargs="*", default=[], help="extra clean speech folders")
    p.add_argument("--noise", metavar="DIR", nargs="*", default=[], help="extra noise folders")
    p.add_argument("--segment", type=float, default=2.0, help="seconds per training segment (default: 2.0)")
    p.add_argument("--batch", type=int, default=32, help="segments per step (default: 32)")
    p.add_argument("--steps-per-epoch", type=int, default=400, help="(default: 400)")
    p.add_argument("--epochs", type=int, default=200, help="maximum epochs (default: 200)")
    p.add_argument("--lr", type=float, default=1e-3,
                   help="initial Adam learning rate; with --resume, replaces the run's current one (default: 1e-3)")
    p.add_argument("--clipnorm", type=float, default=3.0, help="gradient norm clip (default: 3)")
    p.add_argument("--lr-patience", type=int, default=3, help="epochs without dev gain before halving the LR")
    p.add_argument("--patience", type=int, default=10, help="epochs without dev gain before stopping")
    p.add_argument("--min-lr", type=float, default=1e-5)
    p.add_argument("--family", choices=("dtln", "poconet"), default="dtln",
                   help="model to train: dtln, or poconet (our causal U-Net, docs/poconet.md) (default: dtln)")
    p.add_argument("--model-config", metavar="FILE", default=None,
                   help="poconet: a JSON object of PoCoNetConfig fields to change (default: the edge model)")
    p.add_argument("--plain", action="store_true", help="DTLN without the log-magnitude norm (default: norm)")
    p.add_argument("--units", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2, help="TensorFlow intra-op threads (default: 2)")
    p.add_argument("--resume", action="store_true", help="continue from the run folder's last checkpoint")
    p.add_argument("--dev-count", type=int, default=128, help="fixed dev mixes of 4 s (default: 128)")
    p.add_argument("--max-hours", type=float, default=None, help="stop after this much wall time")
    p.add_argument("--init", metavar="FILE", default=None,
                   help="start from these DTLN weights (fine-tuning); the architecture is read from the file")
    p.add_argument("--qat", action="store_true",
                   help="quantisation-aware fine-tuning for full int8: gate pre-activations clipped to "
                        "--gate-clip, cell state to --cell-clip, both and h int8 fake-quantised")
    p.add_argument("--gate-clip", type=float, default=8.0, help="with --qat (default: 8)")
    p.add_argument("--cell-clip", type=float, default=8.0, help="with --qat (default: 8)")
    p.add_argument("--speech-highpass", type=float, default=0.0, metavar="HZ",
                   help="high-pass the clean speech (train and dev) at HZ before mixing, zero-phase, so the model "
                        "learns to remove the rumble recorded under it; 50 suits 16 kHz speech (default: 0, off)")
    p.add_argument("--spectral", type=float, default=0.0, metavar="W",
                   help="add W x the spectral loss (negative SNR in dB of power-law compressed STFT magnitudes, "
                        "|X|**0.3) to the negative SI-SDR; dev selection then uses the same sum (default: 0)")
    p.add_argument("--babble", type=float, default=0.0, metavar="P",
                   help="share of training mixes whose noise is babble: 3-7 training utterances summed; "
                        "dev mixes are unchanged (default: 0)")
    p.add_argument("--noise-eq", type=float, default=0.0, metavar="DB",
                   help="recolour each training noise by a random smooth gain curve of up to +-DB dB; dev mixes "
                        "are unchanged (default: 0, off)")
    p.add_argument("--speed", type=float, default=0.0, metavar="R",
                   help="speed perturbation of the training speech by a factor in 1 +- R (default: 0, off)")
    p.add_argument("--snr", type=float, nargs=2, default=[-5.0, 25.0], metavar=("LOW", "HIGH"),
                   help="input SNR range of the training mixes in dB (default: -5 25)")
    p.add_argument("--dev-dir", metavar="DIR", default=None,
                   help="choose checkpoints on these clean/noisy WAV pairs (python -m convert.devset "
                        "--generalisation) instead of the fixed dev mixes, which are still scored and logged")
    return p


def load_pairs(folder: str) -> tuple[np.ndarray, np.ndarray]:
    """(noisy, clean) arrays [N, samples] from DIR/noisy/*.wav and the same-named DIR/clean/*.wav."""
    import soundfile as sf

    names = sorted(p.name for p in (Path(folder) / "noisy").glob("*.wav"))
    if not names:
        raise ConvertError(f"--dev-dir {folder}: no noisy/*.wav")
    pairs = [(sf.read(Path(folder) / "noisy" / n, dtype="float32")[0], sf.read(Path(folder) / "clean" / n,
                                                                         dtype="float32")[0]) for n in names]
    n = min(min(len(a), len(b)) for a, b in pairs)
    n = 512 + (n - 512) // 128 * 128  # whole hops, so the framed output has the input's length
    return np.stack([a[:n] for a, _ in pairs]), np.stack([b[:n] for _, b in pairs])


def _poconet_config(args, out: Path):
    """(PoCoNetConfig, initial weights or None): the run's own on --resume, --init's, else default + --model-config."""
    from . import poconet

    if args.qat:
        raise ConvertError("poconet: --qat is DTLN-only")
    if args.resume and (out / "last.h5").exists():
        if "model_config" in getattr(args, "given", ()):
            raise ConvertError("poconet: --model-config cannot change a --resume model")
        return poconet.load_weights(str(out / "last.h5")).config, None
    if args.model_config and args.init:
        raise ConvertError("poconet: --model-config cannot change an --init model")
    if args.init:
        init = poconet.load_weights(args.init)
        return init.config, init
    cfg = poconet.PoCoNetConfig()
    if args.model_config:
        try:
            cfg = poconet.PoCoNetConfig.from_dict(json.loads(Path(args.model_config).read_text()))
        except (OSError, ValueError, TypeError) as exc:
            raise ConvertError(f"--model-config {args.model_config}: {exc}") from None
    return cfg, None


def si_sdr_loss(clean, est):
    """Negative scale-invariant SDR in dB, mean over the batch (zero-mean signals)."""
    import tensorflow as tf

    n = tf.minimum(tf.shape(clean)[1], tf.shape(est)[1])
    s = clean[:, :n] - tf.reduce_mean(clean[:, :n], axis=1, keepdims=True)
    e = est[:, :n] - tf.reduce_mean(est[:, :n], axis=1, keepdims=True)
    alpha = tf.reduce_sum(s * e, axis=1, keepdims=True) / (tf.reduce_sum(s * s, axis=1, keepdims=True) + 1e-8)
    target = alpha * s
    noise = e - target
    ratio = tf.reduce_sum(target ** 2, axis=1) / (tf.reduce_sum(noise ** 2, axis=1) + 1e-8)
    return -tf.reduce_mean(10.0 * tf.math.log(ratio + 1e-8) / tf.math.log(10.0))


def spectral_loss(clean, est):
    """Negative SNR in dB between |STFT|**0.3 of clean and estimate (512/128 frames), mean over the batch.

    Scale-dependent (unlike SI-SDR) and weighted towards quiet bins by the compression: what PESQ hears.
    """
    import tensorflow as tf

    n = tf.minimum(tf.shape(clean)[1], tf.shape(est)[1])

    def compressed(x):
        z = tf.signal.stft(x[:, :n], 512, 128, fft_length=512)
        return tf.pow(tf.math.real(z) ** 2 + tf.math.imag(z) ** 2 + 1e-12, 0.15)

    c, e = compressed(clean), compressed(est)
    ratio = tf.reduce_sum(c ** 2, axis=[1, 2]) / (tf.reduce_sum((c - e) ** 2, axis=[1, 2]) + 1e-8)
    return -tf.reduce_mean(10.0 * tf.math.log(ratio + 1e-8) / tf.math.log(10.0))


def _segment_samples(seconds: float, block_len: int = 512, shift: int = 128) -> int:
    """Round to block_len + k * shift so that the framed output has exactly the input's length."""
    k = max(1, round((seconds * RATE - block_len) / shift))
    return block_len + k * shift


class Log:
    def __init__(self, path: Path):
        self.path = path

    def __call__(self, **rec) -> None:
        rec = {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), **rec}
        with open(self.path, "a") as f:
            f.write(json.dumps(rec) + "\n")
        print(json.dumps(rec), file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    for action in parser._actions:  # a second pass without defaults: what was given on the command line
        action.default = argparse.SUPPRESS
    args.given = set(vars(parser.parse_args(argv)))
    try:
        return train(args)
    except ConvertError as exc:
        print(f"python -m convert.train: error: {exc}", file=sys.stderr)
        return 2


def train(args) -> int:
    out = Path(args.out)
    state_path = out / "state.json"
    resumed = None
    if args.resume:
        if not state_path.exists():
            raise ConvertError(f"--resume: {state_path} not found")
        resumed = json.loads(state_path.read_text())
        stored = resumed["config"]
        # the run's recipe goes on: what the command line does not give comes from state.json
        for key, value in stored.items():
            if key not in getattr(args, "given", ()) and key not in ("out", "resume", "max_hours"):
                setattr(args, key, value)
        if stored.get("family", "dtln") != args.family:
            raise ConvertError(f"--resume: {out} trains a {stored.get('family', 'dtln')} model, "
                               f"not --family {args.family}")
        if stored.get("spectral", 0.0) != args.spectral:
            raise ConvertError(f"--resume: {out} was trained with --spectral {stored.get('spectral', 0.0)}; "
                               "its best dev loss only compares under the same loss")
        if stored.get("speech_highpass", 0.0) != args.speech_highpass:
            raise ConvertError(f"--resume: {out} was trained with --speech-highpass "
                               f"{stored.get('speech_highpass', 0.0)}; its dev mixes only compare under the same")
    if args.speech_highpass < 0:
        raise ConvertError(f"--speech-highpass {args.speech_highpass}: a cutoff in Hz, 0 or more")
    if not 0 <= args.babble <= 1:
        raise ConvertError(f"--babble {args.babble}: a share of mixes, from 0 to 1")
    if args.noise_eq < 0:
        raise ConvertError(f"--noise-eq {args.noise_eq}: a gain range in dB, 0 or more")
    if not 0 <= args.speed < 0.5:
        raise ConvertError(f"--speed {args.speed}: a relative range from 0 to 0.5")
    if args.snr[0] > args.snr[1]:
        raise ConvertError(f"--snr {args.snr[0]:g} {args.snr[1]:g}: LOW above HIGH")
    config = {k: v for k, v in vars(args).items() if k != "given"}
    from .quiet import import_tensorflow

    tf = import_tensorflow()
    try:
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:  # TensorFlow already running in this process (tests): keep its setting
        pass
    import keras

    from .dtln import DTLNConfig, DTLNWeights, build_training_model, get_model_weights, load_weights, save_weights

    out.mkdir(parents=True, exist_ok=True)
    log = Log(out / "log.jsonl")
    root = Path(args.data) if args.data else shared_data()
    sp_files, no_files = corpus(root, "train") if root.is_dir() else ([], [])
    sp_files += find_audio(args.speech)
    no_files, heldout = without_heldout(no_files + find_audio(args.noise))
    if not sp_files:
        raise ConvertError(f"no training speech under {root}/speech/train or --speech")
    t0 = time.time()
    speech, noise = load_files(sp_files), load_files(no_files)
    log(event="data", speech_files=len(sp_files), speech_minutes=round(sum(map(len, speech)) / RATE / 60, 1),
        noise_files=len(no_files), noise_minutes=round(sum(map(len, noise)) / RATE / 60, 1),
        heldout_noise_files_dropped=heldout,
        load_seconds=round(time.time() - t0, 1))
    dev = dev_set(root, count=args.dev_count, speech_highpass_hz=args.speech_highpass)
    if dev is None:
        raise ConvertError(f"no dev speech under {root}/speech/dev: the dev set drives LR decay and early stopping")
    select = load_pairs(args.dev_dir) if args.dev_dir else None

    if args.family == "poconet":
        from . import poconet

        cfg, init = _poconet_config(args, out)
        seg = _segment_samples(args.segment)
        keras.utils.set_random_seed(args.seed)
        model = poconet.build_training_model(cfg, init)
        get_model_weights, save_weights = poconet.get_model_weights, poconet.save_weights
        load_weights, set_model_weights = poconet.load_weights, poconet.set_model_weights
    else:
        from dataclasses import replace

        from .dtln import set_model_weights

        if resumed and (out / "last.h5").exists():  # the architecture of the run itself, not of its --init
            init, cfg = None, load_weights(str(out / "last.h5")).config
        else:
            init = load_weights(args.init) if args.init else None
            cfg = init.config if init else DTLNConfig(units=args.units, norm_mag=not args.plain)
        if args.qat:
            cfg = replace(cfg, qat=True, gate_clip=args.gate_clip, cell_clip=args.cell_clip)
        seg = _segment_samples(args.segment)
        keras.utils.set_random_seed(args.seed)
        model = build_training_model(cfg, DTLNWeights(cfg, init.arrays) if init else None)
    opt = keras.optimizers.Adam(learning_rate=args.lr, clipnorm=args.clipnorm)
    opt.build(model.trainable_variables)
    st = {"epoch": 0, "step": 0, "lr": args.lr, "best_dev": None, "bad_epochs": 0, "lr_bad_epochs": 0,
          "seconds": 0.0, "audio_seconds": 0.0, "config": config}
    if resumed:
        st = resumed
        st["config"] = config
        w = load_weights(str(out / "last.h5"))
        set_model_weights(model, w)
        arrs = np.load(out / "optimizer.npz")
        for v, k in zip(opt.variables, sorted(arrs.files, key=lambda s: int(s[1:]))):
            v.assign(arrs[k])
        if "lr" in getattr(args, "given", ()):  # --lr on a resume sets the learning rate from here on
            st["lr"], st["lr_bad_epochs"] = args.lr, 0
        opt.learning_rate.assign(st["lr"])
        log(event="resume", epoch=st["epoch"], step=st["step"], lr=st["lr"], best_dev=st["best_dev"])
    mixer = Mixer(speech, noise, MixConfig(segment=seg, speech_highpass_hz=args.speech_highpass,
                                           babble_prob=args.babble, noise_eq_db=args.noise_eq, speed=args.speed,
                                           snr_db=tuple(args.snr)), seed=args.seed)

    def batches():
        step = st["step"]
        while True:
            yield mixer.batch(step * args.batch, args.batch)
            step += 1

    ds = tf.data.Dataset.from_generator(
        batches, output_signature=(tf.TensorSpec((args.batch, seg), tf.float32),
                                   tf.TensorSpec((args.batch, seg), tf.float32))).prefetch(2)

    @tf.function(reduce_retracing=True)
    def train_step(noisy, clean):
        with tf.GradientTape() as tape:
            est = model(noisy, training=True)
            loss = si_sdr_loss(clean, est)
            if args.spectral:
                loss += args.spectral * spectral_loss(clean, est)
        grads = tape.gradient(loss, model.trainable_variables)
        opt.apply(grads, model.trainable_variables)
        return loss

    @tf.function(reduce_retracing=True)
    def dev_step(noisy, clean):
        est = model(noisy, training=False)
        return si_sdr_loss(clean, est), spectral_loss(clean, est)

    def dev_score(pairs=dev) -> tuple[float, float]:
        """(negative SI-SDR, spectral loss) over a dev set, batches of 32 weighted by their size."""
        losses = np.array([[float(v) * len(pairs[0][i:i + 32]) for v in dev_step(pairs[0][i:i + 32],
                                                                                pairs[1][i:i + 32])]
                           for i in range(0, len(pairs[0]), 32)])
        return float(losses[:, 0].sum() / len(pairs[0])), float(losses[:, 1].sum() / len(pairs[0]))

    stop_at = time.time() + args.max_hours * 3600 if args.max_hours else None
    it = iter(ds)
    while st["epoch"] < args.epochs:
        te = time.time()
        losses = []
        for k in range(args.steps_per_epoch):
            noisy, clean = next(it)
            losses.append(float(train_step(noisy, clean)))
            st["step"] += 1
            if (k + 1) % 50 == 0:
                rate = (k + 1) * args.batch * seg / RATE / (time.time() - te)
                print(f"epoch {st['epoch'] + 1} step {k + 1}/{args.steps_per_epoch} loss {np.mean(losses[-50:]):.2f}"
                      f" ({rate:.0f} s audio/s)", file=sys.stderr, flush=True)
        d_si, d_spec = dev_score()
        d = d_si + args.spectral * d_spec
        extra = {}
        if select is not None:  # checkpoints are chosen on the generalisation set
            g_si, g_spec = dev_score(select)
            extra = {"fixed_dev_loss": round(d, 3), "sel_si_sdr": round(-g_si, 3), "sel_spectral_snr": round(-g_spec, 3)}
            d = g_si + args.spectral * g_spec
        st["epoch"] += 1
        elapsed = time.time() - te
        st["seconds"] += elapsed
        # counted per epoch: a resumed run may change the batch or segment
        st["audio_seconds"] = st.get("audio_seconds", (st["step"] - args.steps_per_epoch) * args.batch * seg / RATE) \
            + args.steps_per_epoch * args.batch * seg / RATE
        improved = st["best_dev"] is None or d < st["best_dev"] - 0.01
        weights = get_model_weights(model, cfg)
        save_weights(weights, str(out / "last.h5"))
        np.savez(out / "optimizer.npz", **{f"v{i}": v.numpy() for i, v in enumerate(opt.variables)})
        if improved:
            st["best_dev"], st["bad_epochs"], st["lr_bad_epochs"] = d, 0, 0
            save_weights(weights, str(out / "best.h5"))
        else:
            st["bad_epochs"] += 1
            st["lr_bad_epochs"] += 1
            if st["lr_bad_epochs"] >= args.lr_patience and st["lr"] > args.min_lr:
                st["lr"] = max(st["lr"] / 2, args.min_lr)
                st["lr_bad_epochs"] = 0
                opt.learning_rate.assign(st["lr"])
        log(event="epoch", epoch=st["epoch"], step=st["step"], train_loss=round(float(np.mean(losses)), 3),
            dev_si_sdr=round(-d_si, 3), dev_spectral_snr=round(-d_spec, 3),
            **({"dev_loss": round(d, 3), "best_dev_loss": round(st["best_dev"], 3)} if args.spectral
               else {"best_dev_si_sdr": round(-st["best_dev"], 3)}), lr=st["lr"], **extra,
            audio_hours=round(st["audio_seconds"] / 3600, 2),
            audio_per_s=round(args.steps_per_epoch * args.batch * seg / RATE / elapsed, 1),
            wall_hours=round(st["seconds"] / 3600, 3))
        state_path.write_text(json.dumps(st, indent=1))
        if st["bad_epochs"] >= args.patience:
            log(event="early_stop", epoch=st["epoch"])
            break
        if stop_at and time.time() > stop_at:
            log(event="time_limit", epoch=st["epoch"])
            break
    log(event="done", epochs=st["epoch"], **({"best_dev_loss": round(st["best_dev"], 3)} if args.spectral
                                             else {"best_dev_si_sdr": round(-st["best_dev"], 3)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
