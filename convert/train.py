"""``python -m convert.train``: train DTLN or PoCoNet on speech + noise folders mixed on the fly (Keras 3, CPU).

The recipe is a frozen ``TrainConfig`` (``convert.train_config``); the family (``convert.families``)
supplies the architecture, the Keras model and the weights I/O, and its framing sets the segment length.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from .data import RATE, MixConfig, Mixer, corpus, dev_set, find_audio, load_files, shared_data, without_heldout
from .errors import ConvertError
from .families import family
from .families.base import Family
from .train_config import TrainConfig, build_parser, resolve, stored


def load_pairs(folder: str, block_len: int, block_shift: int) -> tuple[np.ndarray, np.ndarray]:
    """(noisy, clean) arrays [N, samples] from DIR/noisy/*.wav and the same-named DIR/clean/*.wav, cut to
    block_len + k * block_shift samples (whole hops, so the framed output has the input's length)."""
    import soundfile as sf

    names = sorted(p.name for p in (Path(folder) / "noisy").glob("*.wav"))
    if not names:
        raise ConvertError(f"--dev-dir {folder}: no noisy/*.wav")
    pairs = [(sf.read(Path(folder) / "noisy" / n, dtype="float32")[0], sf.read(Path(folder) / "clean" / n,
                                                                         dtype="float32")[0]) for n in names]
    n = min(min(len(a), len(b)) for a, b in pairs)
    n = block_len + (n - block_len) // block_shift * block_shift
    return np.stack([a[:n] for a, _ in pairs]), np.stack([b[:n] for _, b in pairs])


def _negative_db(ratio, eps: float):
    """-10 log10(ratio + eps), mean over the batch: each loss below is a ratio of energies turned into dB."""
    import tensorflow as tf

    return -tf.reduce_mean(10.0 * tf.math.log(ratio + eps) / tf.math.log(10.0))


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
    return _negative_db(ratio, 1e-8)


def spectral_loss(clean, est, block_len: int, block_shift: int, complex_share: float = 0.0):
    """Negative SNR in dB between |STFT|**0.3 of clean and estimate, mean over the batch; the STFT frames
    as the model does (``block_len`` samples every ``block_shift``).

    Scale-dependent (unlike SI-SDR) and weighted towards quiet bins by the compression: what PESQ hears.
    With ``complex_share`` > 0 that share of the error is between the compressed spectra with their phase
    kept (|X|**0.3 * X / |X|), the rest between magnitudes alone (Braun and Tashev's mix, 2021): the
    magnitude term cannot hear a phase error, the complex term can. The signal power is the same for both.
    """
    import tensorflow as tf

    n = tf.minimum(tf.shape(clean)[1], tf.shape(est)[1])

    def stft(x):
        """Real and imaginary parts (all float: no complex gradient) and the power."""
        z = tf.signal.stft(x[:, :n], block_len, block_shift, fft_length=block_len)
        re, im = tf.math.real(z), tf.math.imag(z)
        return re, im, re ** 2 + im ** 2 + 1e-12

    (c_re, c_im, c_pow), (e_re, e_im, e_pow) = stft(clean), stft(est)
    c, e = tf.pow(c_pow, 0.15), tf.pow(e_pow, 0.15)
    err = tf.reduce_sum((c - e) ** 2, axis=[1, 2])
    if complex_share:  # |X|**0.3 * X/|X| = X * power**-0.35
        cs, es = tf.pow(c_pow, -0.35), tf.pow(e_pow, -0.35)
        err = (1.0 - complex_share) * err + complex_share * tf.reduce_sum(
            (c_re * cs - e_re * es) ** 2 + (c_im * cs - e_im * es) ** 2, axis=[1, 2])
    ratio = tf.reduce_sum(c ** 2, axis=[1, 2]) / (err + 1e-8)
    return _negative_db(ratio, 1e-8)


def snr_loss(ref, est):
    """Negative SNR in dB of ``est`` against ``ref`` (no rescaling), mean over the batch."""
    import tensorflow as tf

    ratio = tf.reduce_sum(ref ** 2, axis=1) / (tf.reduce_sum((ref - est) ** 2, axis=1) + 1e-10)
    return _negative_db(ratio, 1e-10)


def segment_samples(seconds: float, arch) -> int:
    """``seconds`` rounded to block_len + k * block_shift samples of the model's framing (``arch``: its config),
    so that the framed output has exactly the input's length."""
    k = max(1, round((seconds * arch.sample_rate - arch.block_len) / arch.block_shift))
    return arch.block_len + k * arch.block_shift


class Log:
    def __init__(self, path: Path):
        self.path = path

    def __call__(self, **rec) -> None:
        rec = {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), **rec}
        with open(self.path, "a") as f:
            f.write(json.dumps(rec) + "\n")
        print(json.dumps(rec), file=sys.stderr, flush=True)


ALLOCATOR_ENV = "TF_CPU_ALLOCATOR_USE_BFC"


def allocator_environment(env: dict | None = None) -> None:
    """Have TensorFlow keep its CPU memory in its own pool (the BFC allocator) unless the caller's environment
    already says otherwise; it takes effect where TensorFlow is imported after this.

    A training step's activations run to hundreds of megabytes (PoCoNet, 8 x 4 s: ~130 MB a tensor). Through
    the default allocator, glibc serves every block over 32 MB with a fresh mmap and unmaps it after use, so
    each step faults all of its pages in again: on a 2-core VM, 60 of 96 s of a 10-step PoCoNet run were
    system time (13 of 72 s with the pool; docs/poconet.md).
    """
    env = os.environ if env is None else env
    env.setdefault(ALLOCATOR_ENV, "true")


def main(argv: list[str] | None = None) -> int:
    given = vars(build_parser().parse_args(argv))
    try:
        tc, state = resolve(given)
        return train(tc, state)
    except ConvertError as exc:
        print(f"python -m convert.train: error: {exc}", file=sys.stderr)
        return 2


def train(tc: TrainConfig, state: dict | None = None) -> int:
    """Train as ``tc`` says; ``state`` (from ``state.json``) resumes the run in ``tc.out``."""
    from .quiet import import_tensorflow

    allocator_environment()
    tf = import_tensorflow()
    try:
        tf.config.threading.set_intra_op_parallelism_threads(tc.threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:  # TensorFlow already running in this process (tests): keep its setting
        pass
    out = Path(tc.out)
    fam = family(tc.family)
    last = out / "last.h5" if state is not None and (out / "last.h5").exists() else None
    arch, init = fam.train_architecture(tc, last)  # the run's own architecture on resume, not its --init's
    if arch.sample_rate != RATE:
        raise ConvertError(f"the training data is mixed at {RATE} Hz; this {fam.name} model runs at "
                           f"{arch.sample_rate} Hz")
    out.mkdir(parents=True, exist_ok=True)
    log = Log(out / "log.jsonl")
    speech, noise, dev = _data(tc, log)
    select = load_pairs(tc.dev_dir, arch.block_len, arch.block_shift) if tc.dev_dir else None
    run = Run(tc, fam, arch, init, state, log)
    t0 = time.monotonic()
    mixer = Mixer(speech, noise, MixConfig(segment=run.seg, speech_highpass_hz=tc.speech_highpass,
                                           babble_prob=tc.babble, noise_eq_db=tc.noise_eq, speed=tc.speed,
                                           reverb_prob=tc.reverb, rumble_prob=tc.rumble,
                                           snr_db=tuple(tc.snr),
                                           level_dbfs=tuple(tc.level)), seed=tc.seed)
    if mixer.rooms:
        log(event="rooms", count=len(mixer.rooms), seconds=round(time.monotonic() - t0, 1))
    run.fit(mixer, dev, select)
    return 0


def _data(tc: TrainConfig, log: Log) -> tuple[list[np.ndarray], list[np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """(training speech, training noise, fixed dev mixes (noisy, clean)); the held-out noise classes left out."""
    root = Path(tc.data) if tc.data else shared_data()
    sp_files, no_files = corpus(root, "train") if root.is_dir() else ([], [])
    sp_files += find_audio(tc.speech)
    no_files, heldout = without_heldout(no_files + find_audio(tc.noise))
    if not sp_files:
        raise ConvertError(f"no training speech under {root}/speech/train or --speech")
    t0 = time.time()
    speech, noise = load_files(sp_files), load_files(no_files)
    log(event="data", speech_files=len(sp_files), speech_minutes=round(sum(map(len, speech)) / RATE / 60, 1),
        noise_files=len(no_files), noise_minutes=round(sum(map(len, noise)) / RATE / 60, 1),
        heldout_noise_files_dropped=heldout,
        load_seconds=round(time.time() - t0, 1))
    dev = dev_set(root, count=tc.dev_count, speech_highpass_hz=tc.speech_highpass)
    if dev is None:
        raise ConvertError(f"no dev speech under {root}/speech/dev: the dev set drives LR decay and early stopping")
    return speech, noise, dev


class Run:
    """One training run: the model, its optimiser and ``state`` (what ``state.json`` holds), epoch by epoch."""

    def __init__(self, tc: TrainConfig, fam: Family, arch, init, state: dict | None, log: Log):
        import keras

        self.tc, self.fam, self.arch, self.log = tc, fam, arch, log
        self.out = Path(tc.out)
        self.seg = segment_samples(tc.segment, arch)
        keras.utils.set_random_seed(tc.seed)
        self.model = fam.training_model(arch, init)
        self.opt = keras.optimizers.Adam(learning_rate=tc.lr, clipnorm=tc.clipnorm)
        self.opt.build(self.model.trainable_variables)
        self.st = {"epoch": 0, "step": 0, "lr": tc.lr, "best_dev": None, "bad_epochs": 0, "lr_bad_epochs": 0,
                   "seconds": 0.0, "audio_seconds": 0.0, "config": stored(tc)}
        if state is not None:
            self._restore(state)

    def _restore(self, state: dict) -> None:
        self.st = state
        self.st["config"] = stored(self.tc)
        self.fam.set_model_weights(self.model, self.fam.load_weights(str(self.out / "last.h5")))
        arrs = np.load(self.out / "optimizer.npz")
        for v, k in zip(self.opt.variables, sorted(arrs.files, key=lambda s: int(s[1:])), strict=True):
            v.assign(arrs[k])
        self.opt.learning_rate.assign(self.st["lr"])
        self.log(event="resume", epoch=self.st["epoch"], step=self.st["step"], lr=self.st["lr"],
                 best_dev=self.st["best_dev"])
        if not self.tc.keep_epochs and any(self.out.glob("epoch-*.h5")):
            self.log(event="note", message="the run folder holds epoch-NNN.h5 files, but --keep-epochs is for one "
                                           "invocation only: give it again to keep this invocation's epochs too")

    def _steps(self):
        """(train_step, dev_step) as tf.functions of this run's model and optimiser."""
        import tensorflow as tf

        from .layers import float_twin

        model, opt, spectral, consistency = self.model, self.opt, self.tc.spectral, self.tc.consistency
        framing = (self.arch.block_len, self.arch.block_shift, self.tc.spectral_complex)

        @tf.function(reduce_retracing=True)
        def train_step(noisy, clean):
            with tf.GradientTape() as tape:
                est = model(noisy, training=True)
                loss = si_sdr_loss(clean, est)
                if spectral:
                    loss += spectral * spectral_loss(clean, est, *framing)
                if consistency:  # both outputs move: the float twin towards the simulation and back
                    with float_twin(model):
                        ref = model(noisy, training=True)
                    loss += consistency * snr_loss(ref, est)
            grads = tape.gradient(loss, model.trainable_variables)
            opt.apply(grads, model.trainable_variables)
            return loss

        @tf.function(reduce_retracing=True)
        def dev_step(noisy, clean):
            est = model(noisy, training=False)
            cons = tf.constant(0.0)
            if consistency:
                with float_twin(model):
                    cons = snr_loss(model(noisy, training=False), est)
            return si_sdr_loss(clean, est), spectral_loss(clean, est, *framing), cons

        return train_step, dev_step

    def _batches(self, mixer: Mixer):
        import tensorflow as tf

        tc, seg = self.tc, self.seg

        def batches():
            step = self.st["step"]
            while True:
                yield mixer.batch(step * tc.batch, tc.batch)
                step += 1

        return iter(tf.data.Dataset.from_generator(
            batches, output_signature=(tf.TensorSpec((tc.batch, seg), tf.float32),
                                       tf.TensorSpec((tc.batch, seg), tf.float32))).prefetch(2))

    def fit(self, mixer: Mixer, dev: tuple[np.ndarray, np.ndarray], select: tuple[np.ndarray, np.ndarray] | None,
            ) -> None:
        """Epochs until ``tc.epochs``, early stopping or ``tc.max_hours``; checkpoints chosen on ``select``
        when given (the fixed ``dev`` mixes are scored and logged either way)."""
        tc, st = self.tc, self.st
        train_step, dev_step = self._steps()

        def dev_score(pairs) -> tuple[float, float, float]:
            """(negative SI-SDR, spectral loss, consistency loss) over a dev set, batches of 32 weighted by their
            size."""
            losses = np.array([[float(v) * len(pairs[0][i:i + 32]) for v in dev_step(pairs[0][i:i + 32],
                                                                                    pairs[1][i:i + 32])]
                               for i in range(0, len(pairs[0]), 32)])
            return tuple(float(v) for v in losses.sum(axis=0) / len(pairs[0]))

        summed = bool(tc.spectral or tc.consistency)  # the dev loss is a sum, not the SI-SDR alone

        def best() -> dict:
            return ({"best_dev_loss": round(st["best_dev"], 3)} if summed
                    else {"best_dev_si_sdr": round(-st["best_dev"], 3)})

        stop_at = time.time() + tc.max_hours * 3600 if tc.max_hours else None
        it = self._batches(mixer)
        while st["epoch"] < tc.epochs:
            te = time.time()
            losses = self._train_epoch(it, train_step, te)
            d_si, d_spec, d_cons = dev_score(dev)
            d = d_si + tc.spectral * d_spec + tc.consistency * d_cons
            extra = {"dev_int8_sim_snr": round(-d_cons, 3)} if tc.consistency else {}
            if select is not None:  # checkpoints are chosen on the generalisation set
                g_si, g_spec, g_cons = dev_score(select)
                extra.update({"fixed_dev_loss": round(d, 3), "sel_si_sdr": round(-g_si, 3),
                              "sel_spectral_snr": round(-g_spec, 3)},
                             **({"sel_int8_sim_snr": round(-g_cons, 3)} if tc.consistency else {}))
                d = g_si + tc.spectral * g_spec + tc.consistency * g_cons
            elapsed = self._end_epoch(d, time.time() - te)
            self.log(event="epoch", epoch=st["epoch"], step=st["step"], train_loss=round(float(np.mean(losses)), 3),
                     dev_si_sdr=round(-d_si, 3), dev_spectral_snr=round(-d_spec, 3),
                     **({"dev_loss": round(d, 3)} if summed else {}), **best(), lr=st["lr"], **extra,
                     audio_hours=round(st["audio_seconds"] / 3600, 2),
                     audio_per_s=round(self._epoch_audio_seconds() / elapsed, 1),
                     wall_hours=round(st["seconds"] / 3600, 3))
            (self.out / "state.json").write_text(json.dumps(st, indent=1))
            if st["bad_epochs"] >= tc.patience:
                self.log(event="early_stop", epoch=st["epoch"])
                break
            if stop_at and time.time() > stop_at:
                self.log(event="time_limit", epoch=st["epoch"])
                break
        self.log(event="done", epochs=st["epoch"], **best())

    def _epoch_audio_seconds(self) -> float:
        return self.tc.steps_per_epoch * self.tc.batch * self.seg / self.arch.sample_rate

    def _train_epoch(self, it, train_step, te: float) -> list[float]:
        tc, st = self.tc, self.st
        losses = []
        for k in range(tc.steps_per_epoch):
            noisy, clean = next(it)
            losses.append(float(train_step(noisy, clean)))
            st["step"] += 1
            if (k + 1) % 50 == 0:
                rate = (k + 1) * tc.batch * self.seg / self.arch.sample_rate / (time.time() - te)
                print(f"epoch {st['epoch'] + 1} step {k + 1}/{tc.steps_per_epoch} loss {np.mean(losses[-50:]):.2f}"
                      f" ({rate:.0f} s audio/s)", file=sys.stderr, flush=True)
        return losses

    def _end_epoch(self, d: float, elapsed: float) -> float:
        """Count the epoch, save last (and best) weights and the optimiser, decay the LR; returns ``elapsed``."""
        tc, st = self.tc, self.st
        st["epoch"] += 1
        st["seconds"] += elapsed
        # counted per epoch: a resumed run may change the batch or segment
        st["audio_seconds"] = st.get("audio_seconds", (st["step"] - tc.steps_per_epoch) * tc.batch * self.seg
                                     / self.arch.sample_rate) + self._epoch_audio_seconds()
        improved = st["best_dev"] is None or d < st["best_dev"] - 0.01
        weights = self.fam.get_model_weights(self.model, self.arch)
        self.fam.save_weights(weights, str(self.out / "last.h5"))
        if tc.keep_epochs:
            self.fam.save_weights(weights, str(self.out / f"epoch-{st['epoch']:03d}.h5"))
        np.savez(self.out / "optimizer.npz", **{f"v{i}": v.numpy() for i, v in enumerate(self.opt.variables)})
        if improved:
            st["best_dev"], st["bad_epochs"], st["lr_bad_epochs"] = d, 0, 0
            self.fam.save_weights(weights, str(self.out / "best.h5"))
        else:
            st["bad_epochs"] += 1
            st["lr_bad_epochs"] += 1
            if st["lr_bad_epochs"] >= tc.lr_patience and st["lr"] > tc.min_lr:
                st["lr"] = max(st["lr"] / 2, tc.min_lr)
                st["lr_bad_epochs"] = 0
                self.opt.learning_rate.assign(st["lr"])
        return elapsed


if __name__ == "__main__":
    sys.exit(main())
