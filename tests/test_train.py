"""Training: the mixer is deterministic, a run is reproducible from its seed, and --resume continues."""

from __future__ import annotations

import json
import os
from dataclasses import replace

import numpy as np
import pytest
import soundfile as sf

from .conftest import EXAMPLE

pytest.importorskip("tensorflow", reason="training needs TensorFlow")

from convert.data import MixConfig, Mixer, highpass, random_eq, synthetic_noise


def _rms_db(x):
    return 20 * np.log10(np.sqrt(np.mean(x.astype(np.float64) ** 2)))


def test_mixer_is_deterministic_and_respects_ranges():
    rng = np.random.default_rng(0)
    speech = [rng.standard_normal(40000).astype(np.float32) * 0.1 for _ in range(3)]
    noise = [rng.standard_normal(30000).astype(np.float32) for _ in range(2)]
    cfg = MixConfig(segment=16000, second_noise_prob=0.0)
    a, b = Mixer(speech, noise, cfg, seed=3), Mixer(speech, noise, cfg, seed=3)
    for i in (0, 5, 99):
        (na, ca), (nb, cb) = a.mix(i), b.mix(i)
        np.testing.assert_array_equal(na, nb)
        np.testing.assert_array_equal(ca, cb)
        snr = _rms_db(ca) - _rms_db(na - ca)
        peak_limited = np.max(np.abs(na)) >= 0.98
        assert -5.01 <= snr <= 25.01
        assert peak_limited or -35.01 <= _rms_db(ca) <= -14.99
    assert not np.array_equal(Mixer(speech, noise, cfg, seed=4).mix(0)[0], a.mix(0)[0])


def _band_db(x, lo, hi, rate=16000):
    spec = np.abs(np.fft.rfft(x.astype(np.float64))) ** 2
    f = np.fft.rfftfreq(len(x), 1 / rate)
    return 10 * np.log10(spec[(f >= lo) & (f < hi)].sum() / spec.sum())


def test_highpass_takes_out_rumble_and_keeps_speech_band_in_phase():
    t = np.arange(48000) / 16000
    voice = np.sin(2 * np.pi * 200 * t) + 0.5 * np.sin(2 * np.pi * 1000 * t + 1.0)
    rumble = 2.0 * np.sin(2 * np.pi * 20 * t) + np.sin(2 * np.pi * 8 * t)
    y = highpass((voice + rumble).astype(np.float32), 50)
    assert y.dtype == np.float32 and y.shape == voice.shape
    core = slice(4000, -4000)  # away from the ends: zero phase means sample-aligned, not just the same spectrum
    assert np.max(np.abs(y[core] - voice[core])) < 0.01
    assert _band_db(y[core], 0, 40) < -40 and _band_db((voice + rumble)[core], 0, 40) > -3
    np.testing.assert_array_equal(highpass(voice.astype(np.float32), 0), voice.astype(np.float32))


def test_mixer_speech_highpass_applies_to_the_targets():
    rng = np.random.default_rng(2)
    t = np.arange(40000) / 16000
    speech = [(0.1 * np.sin(2 * np.pi * 25 * t) + 0.02 * rng.standard_normal(len(t))).astype(np.float32)]
    noise = [rng.standard_normal(30000).astype(np.float32)]
    plain = Mixer(speech, noise, MixConfig(segment=16000), seed=0).mix(0)[1]
    hp = Mixer(speech, noise, MixConfig(segment=16000, speech_highpass_hz=50), seed=0).mix(0)[1]
    assert _band_db(plain, 15, 35) > -3  # the 25 Hz hum is most of the raw "clean" speech
    assert _band_db(hp, 15, 35) < -30  # and gone from the target the model learns


def test_babble_and_noise_eq_off_leave_every_mix_as_it_was():
    rng = np.random.default_rng(4)
    speech = [rng.standard_normal(40000).astype(np.float32) * 0.1 for _ in range(4)]
    noise = [rng.standard_normal(30000).astype(np.float32) for _ in range(2)]
    old = Mixer(speech, noise, MixConfig(segment=16000), seed=7)
    off = Mixer(speech, noise, MixConfig(segment=16000, babble_prob=0.0, noise_eq_db=0.0), seed=7)
    on = Mixer(speech, noise, MixConfig(segment=16000, babble_prob=0.5, noise_eq_db=6.0), seed=7)
    for i in range(20):
        np.testing.assert_array_equal(old.mix(i)[0], off.mix(i)[0])  # recipes without them reproduce
    assert any(not np.array_equal(old.mix(i)[0], on.mix(i)[0]) for i in range(20))


def test_rumble_puts_low_frequency_noise_into_the_mixture_not_the_target():
    t = np.arange(40000) / 16000
    speech = [(0.1 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32)]
    noise = [np.sin(2 * np.pi * 3000 * t).astype(np.float32)]  # recorded noise with nothing below 100 Hz
    base = dict(segment=16000, second_noise_prob=0.0, synthetic_prob=0.0)
    off, on = (Mixer(speech, noise, MixConfig(**base, rumble_prob=p), seed=5) for p in (0.0, 1.0))
    for i in range(6):
        assert _band_db(off.mix(i)[0] - off.mix(i)[1], 1, 100) < -60
        noisy, clean = on.mix(i)
        assert -14 < _band_db(noisy - clean, 1, 150) < -1  # rumble at -10..+5 dB against the noise
        assert _band_db(clean, 1, 150) < -60  # the target is untouched
    assert all(np.array_equal(Mixer(speech, noise, MixConfig(**base), seed=5).mix(i)[0], off.mix(i)[0])
               for i in range(6))  # off draws nothing: recipes without it reproduce


def test_babble_noise_is_made_of_the_speech_pool():
    t = np.arange(40000) / 16000
    # every "talker" is a pure 300 Hz tone; the recorded noise is a 3 kHz tone
    speech = [(0.1 * np.sin(2 * np.pi * 300 * t + k)).astype(np.float32) for k in range(5)]
    noise = [np.sin(2 * np.pi * 3000 * t).astype(np.float32)]
    cfg = MixConfig(segment=16000, babble_prob=1.0, second_noise_prob=0.0)
    for i in range(5):
        noisy, clean = Mixer(speech, noise, cfg, seed=0).mix(i)
        assert _band_db(noisy - clean, 250, 350) > -0.5 and _band_db(noisy - clean, 2900, 3100) < -40


def test_random_eq_stays_within_its_range_and_varies():
    x = np.random.default_rng(0).standard_normal(32000).astype(np.float32)
    spec = np.abs(np.fft.rfft(x))
    curves = []
    for seed in range(5):
        y = random_eq(np.random.default_rng(seed), x, 6.0)
        assert y.dtype == np.float32 and y.shape == x.shape
        gain = 20 * np.log10(np.abs(np.fft.rfft(y)) / spec)
        assert -6.01 < gain.min() and gain.max() < 6.01
        curves.append(gain)
    assert np.ptp(np.ptp(curves, axis=0)) > 1  # the curve differs from one draw to the next


def test_synthetic_noises_are_finite_and_unit_rms():
    for seed in range(10):
        x = synthetic_noise(np.random.default_rng(seed), 8000)
        assert np.isfinite(x).all() and abs(_rms_db(x)) < 0.1


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    clean, sr = sf.read(EXAMPLE.parent / "p232_013_clean.wav", dtype="float32")
    rng = np.random.default_rng(0)
    for split in ("train", "dev"):
        (root / "speech" / split).mkdir(parents=True)
        (root / "noise" / split / "synthetic").mkdir(parents=True)
        sf.write(root / "speech" / split / "a.wav", clean, sr)
        sf.write(root / "speech" / split / "b.flac", clean[::-1].copy(), sr)
        sf.write(root / "noise" / split / "synthetic" / "n.wav", rng.standard_normal(40000).astype("float32") * 0.1,
                 sr)
    return root


def _train(tiny_data, out, *extra):
    from convert.train import main

    args = ["--out", str(out), "--data", str(tiny_data), "--units", "16", "--batch", "2", "--segment", "0.5",
            "--steps-per-epoch", "3", "--dev-count", "4", "--threads", "1", "--seed", "7", *extra]
    assert main(args) == 0
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def test_same_seed_same_dev_score_and_resume_continues(tiny_data, tmp_path):
    a = _train(tiny_data, tmp_path / "a", "--epochs", "2")
    b = _train(tiny_data, tmp_path / "b", "--epochs", "2")
    dev_a = [r["dev_si_sdr"] for r in a if r["event"] == "epoch"]
    dev_b = [r["dev_si_sdr"] for r in b if r["event"] == "epoch"]
    assert len(dev_a) == 2
    np.testing.assert_allclose(dev_a, dev_b, atol=0.05)
    assert (tmp_path / "a" / "best.h5").exists() and (tmp_path / "a" / "optimizer.npz").exists()

    c = _train(tiny_data, tmp_path / "c", "--epochs", "1")
    c = _train(tiny_data, tmp_path / "c", "--epochs", "2", "--resume")
    resumed = [r for r in c if r["event"] == "resume"]
    assert resumed and resumed[0]["epoch"] == 1 and resumed[0]["step"] == 3
    epochs = [r for r in c if r["event"] == "epoch"]
    assert [r["epoch"] for r in epochs] == [1, 2] and epochs[-1]["step"] == 6
    # the resumed run lands where the uninterrupted one did (dropout draws differ a little)
    assert abs(epochs[-1]["dev_si_sdr"] - dev_a[-1]) < 1.0


def test_keep_epochs_keeps_every_epochs_weights_for_this_invocation_only(tiny_data, tmp_path):
    from convert.families.dtln import load_weights

    _train(tiny_data, tmp_path / "k", "--epochs", "2", "--keep-epochs")
    kept = sorted(p.name for p in (tmp_path / "k").glob("epoch-*.h5"))
    assert kept == ["epoch-001.h5", "epoch-002.h5"]
    last, second, first = (load_weights(str(tmp_path / "k" / n)) for n in ("last.h5", *kept[::-1]))
    for name, arrays in last.arrays.items():
        for a, b in zip(arrays, second.arrays[name], strict=True):
            np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, b) for name, arrays in first.arrays.items()
               for a, b in zip(arrays, last.arrays[name], strict=True))  # a different epoch, not a copy
    # a run-only option: a resume without it keeps no more, and says so
    events = _train(tiny_data, tmp_path / "k", "--epochs", "3", "--resume")
    assert sorted(p.name for p in (tmp_path / "k").glob("epoch-*.h5")) == kept
    notes = [e["message"] for e in events if e["event"] == "note"]
    assert len(notes) == 1 and "--keep-epochs" in notes[0]
    assert json.loads((tmp_path / "k" / "state.json").read_text())["config"]["keep_epochs"] is False


def test_training_pools_tensorflows_cpu_memory_unless_the_environment_says_otherwise(tiny_data, tmp_path,
                                                                                   monkeypatch):
    from convert.train import ALLOCATOR_ENV, allocator_environment

    monkeypatch.delenv(ALLOCATOR_ENV, raising=False)
    _train(tiny_data, tmp_path / "a", "--epochs", "1")
    assert os.environ[ALLOCATOR_ENV] == "true"  # a later TensorFlow import (a fresh run) sees it
    mine = {ALLOCATOR_ENV: "false"}
    allocator_environment(mine)
    assert mine == {ALLOCATOR_ENV: "false"}


def test_resume_without_checkpoint_is_a_clear_error(tiny_data, tmp_path, capsys):
    from convert.train import main

    assert main(["--out", str(tmp_path / "none"), "--data", str(tiny_data), "--resume"]) == 2
    assert "state.json not found" in capsys.readouterr().err


def test_spectral_loss_tracks_the_error_and_has_gradients():
    import tensorflow as tf

    from convert.train import spectral_loss

    clean = np.stack([sf.read(EXAMPLE.parent / "p232_013_clean.wav", dtype="float32")[0][:16000]] * 2)
    rng = np.random.default_rng(1)
    losses = [float(spectral_loss(clean, clean + s * rng.standard_normal(clean.shape).astype("float32"), 512, 128))
              for s in (0.001, 0.01, 0.1)]
    assert losses[0] < losses[1] < losses[2]  # negative SNR: more error, higher loss
    assert float(spectral_loss(clean, 0.5 * clean, 512, 128)) > losses[0]  # unlike SI-SDR it hears the level
    est = tf.Variable(np.zeros_like(clean))  # silence: the magnitude's gradient must stay finite at 0
    with tf.GradientTape() as tape:
        loss = spectral_loss(clean, est, 512, 128)
    assert np.isfinite(tape.gradient(loss, est).numpy()).all()


def test_spectral_loss_with_a_complex_share_hears_the_phase():
    from convert.train import spectral_loss

    clean = np.stack([sf.read(EXAMPLE.parent / "p232_013_clean.wav", dtype="float32")[0][:16000]] * 2)
    # all-pass: every bin's magnitude kept (the output of a phase-only error), the phase shifted
    spec = np.fft.rfft(clean, axis=1)
    shifted = np.fft.irfft(spec * np.exp(1j * np.linspace(0, 40, spec.shape[1])), clean.shape[1], axis=1)
    shifted = shifted.astype("float32")
    mag_only = float(spectral_loss(clean, shifted, 512, 128))
    mixed = float(spectral_loss(clean, shifted, 512, 128, complex_share=0.3))
    full = float(spectral_loss(clean, shifted, 512, 128, complex_share=1.0))
    assert mag_only < mixed < full  # the more of the error is complex, the more of the phase error it hears
    noisy = clean + 0.01 * np.random.default_rng(2).standard_normal(clean.shape).astype("float32")
    assert float(spectral_loss(clean, noisy, 512, 128, complex_share=0.0)) == pytest.approx(
        float(spectral_loss(clean, noisy, 512, 128)))  # share 0: the magnitude loss as it was


def test_spectral_complex_is_recorded_kept_on_resume_and_needs_spectral(tiny_data, tmp_path, capsys):
    from convert.train import main

    log = _train(tiny_data, tmp_path / "c", "--epochs", "1", "--spectral", "0.5", "--spectral-complex", "0.3")
    assert json.loads((tmp_path / "c" / "state.json").read_text())["config"]["spectral_complex"] == 0.3
    assert np.isfinite([r["dev_loss"] for r in log if r["event"] == "epoch"]).all()
    base = ["--out", str(tmp_path / "c"), "--data", str(tiny_data), "--resume", "--epochs", "2"]
    assert main([*base, "--spectral-complex", "0"]) == 2  # another loss: its best dev loss would not compare
    assert "--spectral-complex 0.3" in capsys.readouterr().err
    for bad in (["--spectral-complex", "0.3"], ["--spectral", "1", "--spectral-complex", "1.5"]):
        assert main(["--out", str(tmp_path / "bad"), "--data", str(tiny_data), *bad]) == 2
        assert "--spectral-complex" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_spectral_term_is_logged_and_resume_keeps_the_loss(tiny_data, tmp_path, capsys):
    from convert.train import main

    log = _train(tiny_data, tmp_path / "s", "--epochs", "1", "--spectral", "0.5")
    epoch = [r for r in log if r["event"] == "epoch"][0]
    assert epoch["dev_loss"] == pytest.approx(-epoch["dev_si_sdr"] - 0.5 * epoch["dev_spectral_snr"], abs=0.01)
    args = ["--out", str(tmp_path / "s"), "--data", str(tiny_data), "--resume", "--epochs", "2", "--spectral", "0"]
    assert main(args) == 2
    assert "--spectral 0.5" in capsys.readouterr().err


def test_speech_highpass_is_recorded_and_kept_on_resume(tiny_data, tmp_path, capsys):
    from convert.train import main

    _train(tiny_data, tmp_path / "h", "--epochs", "1", "--speech-highpass", "50")
    state = json.loads((tmp_path / "h" / "state.json").read_text())
    assert state["config"]["speech_highpass"] == 50
    base = ["--out", str(tmp_path / "h"), "--data", str(tiny_data), "--resume", "--epochs", "2"]
    assert main([*base, "--speech-highpass", "0"]) == 2  # another dev set: its best score would not compare
    assert "--speech-highpass 50" in capsys.readouterr().err
    assert main(base) == 0  # not given: the run's own cutoff goes on
    assert json.loads((tmp_path / "h" / "state.json").read_text())["epoch"] == 2
    assert main(["--out", str(tmp_path / "neg"), "--data", str(tiny_data), "--speech-highpass", "-1"]) == 2


def test_babble_noise_eq_reverb_and_rumble_are_recorded_and_bad_values_refused(tiny_data, tmp_path, capsys):
    from convert.train import main

    _train(tiny_data, tmp_path / "b", "--epochs", "1", "--babble", "0.3", "--noise-eq", "6", "--reverb", "0.5",
           "--rumble", "0.3")
    config = json.loads((tmp_path / "b" / "state.json").read_text())["config"]
    assert config["babble"] == 0.3 and config["noise_eq"] == 6 and config["reverb"] == 0.5 and config["rumble"] == 0.3
    log = [json.loads(line) for line in (tmp_path / "b" / "log.jsonl").read_text().splitlines()]
    assert [r["count"] for r in log if r.get("event") == "rooms"] == [128]
    for bad in (["--babble", "1.5"], ["--babble", "-0.1"], ["--noise-eq", "-3"], ["--reverb", "1.5"],
                ["--rumble", "-0.2"]):
        assert main(["--out", str(tmp_path / "bad"), "--data", str(tiny_data), *bad]) == 2
        assert bad[0] in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()  # refused before anything was written


def test_mixer_keeps_speech_within_the_level_range():
    rng = np.random.default_rng(1)
    speech = [rng.standard_normal(40000).astype(np.float32) * 0.1 for _ in range(3)]
    noise = [rng.standard_normal(30000).astype(np.float32) for _ in range(2)]
    mixer = Mixer(speech, noise, MixConfig(segment=16000, level_dbfs=(-52.0, -48.0)), seed=3)
    levels = [_rms_db(mixer.mix(i)[1]) for i in range(20)]
    assert all(-52.01 <= v <= -47.99 for v in levels) and np.ptp(levels) > 1


def test_level_is_recorded_reaches_training_and_bad_values_are_refused(tiny_data, tmp_path, capsys):
    from convert.train import main

    # --plain: the published model.h5's DTLN, whose first stage sees raw magnitudes (with the log-magnitude
    # norm the network, and so the loss, hardly depends on the level)
    quiet = _train(tiny_data, tmp_path / "q", "--epochs", "1", "--plain", "--level", "-50", "-40")
    assert json.loads((tmp_path / "q" / "state.json").read_text())["config"]["level"] == [-50, -40]
    usual = _train(tiny_data, tmp_path / "u", "--epochs", "1", "--plain")  # same seed, default -35..-15 dBFS
    loss = [[r["train_loss"] for r in log if r["event"] == "epoch"] for log in (quiet, usual)]
    assert loss[0] != loss[1]  # the same mixes but for their level: the range reached the mixer
    for bad in (["--level", "-10", "-20"], ["--level", "-20", "3"]):
        assert main(["--out", str(tmp_path / "bad"), "--data", str(tiny_data), *bad]) == 2
        assert "--level" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_resume_keeps_the_runs_recipe(tiny_data, tmp_path):
    from convert.train import main

    _train(tiny_data, tmp_path / "r", "--epochs", "1", "--spectral", "0.25")
    # only the folder: batch, segment, steps, units, seed, spectral ... come from state.json
    assert main(["--out", str(tmp_path / "r"), "--data", str(tiny_data), "--resume", "--epochs", "2"]) == 0
    state = json.loads((tmp_path / "r" / "state.json").read_text())
    assert state["step"] == 6 and state["epoch"] == 2  # 3 steps per epoch, not the default 400
    assert state["config"]["batch"] == 2 and state["config"]["units"] == 16 and state["config"]["spectral"] == 0.25
    # resumed with a bigger batch: the audio seen is counted per epoch, not as step x batch
    assert main(["--out", str(tmp_path / "r"), "--data", str(tiny_data), "--resume", "--epochs", "3",
                 "--batch", "4"]) == 0
    seg = 7936 / 16000  # 0.5 s rounded to 512 + k * 128 samples
    state = json.loads((tmp_path / "r" / "state.json").read_text())
    assert state["audio_seconds"] == pytest.approx((6 * 2 + 3 * 4) * seg)


def test_lr_given_on_resume_replaces_the_runs_schedule(tiny_data, tmp_path):
    from convert.train import main

    _train(tiny_data, tmp_path / "l", "--epochs", "1")
    base = ["--out", str(tmp_path / "l"), "--data", str(tiny_data), "--resume"]
    assert main([*base, "--epochs", "2"]) == 0  # without --lr the run's own rate goes on
    assert main([*base, "--epochs", "3", "--lr", "2e-4"]) == 0
    log = [json.loads(line) for line in (tmp_path / "l" / "log.jsonl").read_text().splitlines()]
    assert [r["lr"] for r in log if r["event"] == "resume"] == [pytest.approx(1e-3), pytest.approx(2e-4)]
    assert json.loads((tmp_path / "l" / "state.json").read_text())["lr"] == pytest.approx(2e-4)


def test_reverb_off_leaves_mixes_and_on_keeps_only_early_reflections_in_the_target():
    speech = [np.zeros(16000, np.float32)]
    speech[0][4000] = 1.0  # one click: the mix shows the room's response itself
    noise = [np.random.default_rng(6).standard_normal(30000).astype(np.float32)]
    old = Mixer(speech, noise, MixConfig(segment=16000), seed=2)
    off = Mixer(speech, noise, MixConfig(segment=16000, reverb_prob=0.0), seed=2)
    assert off.rooms == []
    for i in range(10):
        np.testing.assert_array_equal(old.mix(i)[0], off.mix(i)[0])

    cfg = MixConfig(segment=16000, reverb_prob=1.0, rooms=4, snr_db=(90.0, 90.0), second_noise_prob=0.0)
    on = Mixer(speech, noise, cfg, seed=2)
    assert len(on.rooms) == 4
    early_len = len(on.rooms[0][1])
    assert early_len == 40 + 800  # pyroomacoustics' filter half-width + 50 ms at 16 kHz
    tails = []
    for i in range(4):
        noisy, clean = on.mix(i)
        peak = int(np.argmax(np.abs(clean)))
        assert 4000 <= peak <= 4000 + 40  # the direct path, with the propagation delay removed
        assert np.max(np.abs(clean[4000 + early_len:])) < 1e-6 * abs(clean[peak])  # the late tail is not target
        late = noisy[4000 + early_len:] - clean[4000 + early_len:]
        tails.append(_rms_db(late) - _rms_db(clean))
        # the early part of the mixture is the target (noise is 90 dB down)
        np.testing.assert_allclose(noisy[4000:4000 + early_len], clean[4000:4000 + early_len], atol=1e-3 * peak)
    assert min(tails) > -40 and max(tails) - min(tails) > 1  # every room reverberates, each its own way


def test_speed_perturbation_off_leaves_mixes_and_on_changes_tempo():
    rng = np.random.default_rng(5)
    t = np.arange(48000) / 16000
    speech = [(0.1 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)]
    noise = [rng.standard_normal(30000).astype(np.float32)]
    old = Mixer(speech, noise, MixConfig(segment=16000), seed=1)
    off = Mixer(speech, noise, MixConfig(segment=16000, speed=0.0), seed=1)
    for i in range(10):
        np.testing.assert_array_equal(old.mix(i)[0], off.mix(i)[0])
    on = Mixer(speech, [], MixConfig(segment=16000, speed=0.1, synthetic_prob=0.0), seed=1)
    peaks = []
    for i in range(10):
        clean = on.mix(i)[1]
        assert clean.shape == (16000,) and clean.dtype == np.float32
        f = np.fft.rfftfreq(16000, 1 / 16000)
        peaks.append(f[np.argmax(np.abs(np.fft.rfft(clean)))])
    assert all(395 <= p <= 485 for p in peaks), peaks  # 440 Hz read 0.9-1.1x as fast
    assert max(peaks) - min(peaks) > 10  # and the factor varies between mixes


def test_heldout_esc50_classes_never_reach_training(tmp_path):
    from convert.data import ESC50_HELDOUT, esc50_class, without_heldout

    held = next(iter(ESC50_HELDOUT))
    kept = [c for c in range(50) if c not in ESC50_HELDOUT][0]
    files = [tmp_path / f"1-100032-A-{held}.wav", tmp_path / f"2-2000-B-{kept}.wav", tmp_path / "rain_01.ogg"]
    assert [esc50_class(f) for f in files] == [held, kept, None]
    assert without_heldout(files) == (files[1:], 1)


def test_reverberant_dev_set_keeps_noise_level_and_labels():
    from convert.devset import reverberant

    rng = np.random.default_rng(9)
    mixes = []
    for k in range(3):
        clean = np.zeros(16000, np.float32)
        clean[3000 + 100 * k] = 0.5  # a click: the mixture shows the room itself
        noise = (0.001 * rng.standard_normal(16000)).astype(np.float32)
        mixes.append((clean + noise, clean, ("cat", 5.0, "spk")))
    a, b = reverberant(mixes, rooms=2), reverberant(mixes, rooms=2)
    for (noisy, clean, label), (n2, c2, l2), (dry_noisy, dry, _) in zip(a, b, mixes, strict=True):
        np.testing.assert_array_equal(noisy, n2)  # the same rooms every time
        np.testing.assert_array_equal(clean, c2)
        assert label[:3] == ("cat", 5.0, "spk") and label == l2 and 0.05 < label[3] < 2.0  # RT60 in seconds
        assert abs(_rms_db(clean) - _rms_db(dry)) < 0.01  # the target keeps the dry speech's level
        start = int(np.argmax(dry))
        assert np.max(np.abs(clean[start + 840:])) < 1e-6  # direct path + 50 ms, nothing later
        tail = noisy[start + 840:] - (dry_noisy - dry)[start + 840:]  # the late reverberation, noise taken out
        assert _rms_db(tail) > _rms_db(dry) - 40
    assert a[0][2][3] != a[1][2][3]  # mix i in room i % rooms


def test_qat_lstm_tracks_calibration_ranges_and_keeps_keras_lstm_semantics():
    """QATLSTM (full-int8 simulation for --qat): same weights and gate order as a Keras LSTM (outputs within
    int8 rounding of it), h on the int8 grid of [-1, 1), ranges that follow the data as calibration would
    (up at once, down by at most RANGE_DECAY per step), and gradients for every weight."""
    import tensorflow as tf

    from convert.layers import QATLSTM, RANGE_DECAY, keras

    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 30, 6)).astype(np.float32)
    ref = keras.layers.LSTM(16, return_sequences=True)
    ref(x)
    ws = [0.5 * rng.standard_normal(w.shape).astype(np.float32) for w in ref.get_weights()]
    ref.set_weights(ws)
    q = QATLSTM(16, gate_clip=8.0, cell_clip=8.0)
    q(x)
    q.set_weights(ws)
    assert len(q.get_weights()) == 3 and len(q.weights) == 6  # the range variables stay out of the h5 layout
    for a, b in zip(q.get_weights(), ws, strict=True):
        np.testing.assert_array_equal(a, b)

    with tf.GradientTape() as tape:
        y = q(x, training=True)
        loss = tf.reduce_sum(y ** 2)
    grads = tape.gradient(loss, q.trainable_weights)
    assert len(grads) == 3 and all(g is not None and np.any(np.asarray(g) != 0) for g in grads)
    r_x = float(q.range_x.numpy())
    assert r_x == pytest.approx(float(np.max(np.abs(x))))
    assert float(q.range_xw.numpy()) > 0 and float(q.range_hu.numpy()) > 0

    y = np.asarray(q(x))
    want = np.asarray(ref(x))
    assert 0 < np.mean(np.abs(y - want)) < 0.03  # rounded, but the same LSTM (a swapped gate pair: >= 0.08)
    np.testing.assert_allclose(y * 128, np.round(y * 128), atol=1e-3)  # h is int8 on [-1, 127/128]

    q(0.01 * x, training=True)  # quieter data: the range shrinks slowly
    assert float(q.range_x.numpy()) == pytest.approx(RANGE_DECAY * r_x)
    q(3 * x, training=True)  # louder data: it grows at once
    assert float(q.range_x.numpy()) == pytest.approx(3 * r_x)


def test_qat_dtln_keeps_the_weight_layout_and_rounds_the_graph_input():
    """The --qat DTLN holds the same weights as the float one (round trip through its layers) and adds only
    range variables; the log-magnitude input is rounded once its range is known."""
    from convert.families.dtln import DTLNConfig, DTLNWeights, build_training_model, get_model_weights
    from convert.layers import QATLSTM, QATDense, TrackedFakeQuant

    cfg = DTLNConfig(units=16, encoder_size=32, norm_mag=True, qat=True, gate_clip=8.0, cell_clip=8.0)
    w = DTLNWeights.random(cfg, seed=2)
    model = build_training_model(cfg, w)
    kinds = {type(layer) for layer in model.layers}
    assert {QATLSTM, QATDense, TrackedFakeQuant} <= kinds
    back = get_model_weights(model, cfg)
    for name, ws in w.arrays.items():
        for a, b in zip(ws, back.arrays[name], strict=True):
            np.testing.assert_array_equal(a, b)
    audio = (0.1 * np.random.default_rng(3).standard_normal((1, 4096))).astype(np.float32)
    log_mag = model.get_layer("log_mag_int8")
    assert float(log_mag.range.numpy()) == 0
    y = np.asarray(model(audio, training=True))
    assert np.isfinite(y).all() and float(log_mag.range.numpy()) > 0
    assert all(float(v.numpy()) > 0 for v in model.non_trainable_weights if "range" in v.name)


def test_float_twin_is_the_same_network_in_float_and_leaves_the_ranges_alone():
    """``float_twin`` turns the --qat DTLN into its own float graph (the clipped float LSTMs of the same
    weights), updates no range, and the simulation rounds again once the block ends."""
    from convert.families.dtln import DTLNConfig, DTLNWeights, build_training_model
    from convert.layers import float_twin

    flt_cfg = DTLNConfig(units=16, encoder_size=32, norm_mag=True, gate_clip=8.0, cell_clip=8.0, dropout=0.0)
    cfg = replace(flt_cfg, qat=True)  # --consistency turns dropout off, as here
    w = DTLNWeights.random(cfg, seed=5)
    sim = build_training_model(cfg, w)
    flt = build_training_model(flt_cfg, DTLNWeights(flt_cfg, w.arrays))
    audio = (0.1 * np.random.default_rng(6).standard_normal((2, 4096))).astype(np.float32)
    sim(audio, training=True)  # ranges known: the simulation now rounds
    ranges = [float(v.numpy()) for v in sim.non_trainable_weights]
    rounded = np.asarray(sim(audio, training=False))
    want = np.asarray(flt(audio, training=False))
    with float_twin(sim):
        twin = np.asarray(sim(audio, training=True))  # no range may move
    np.testing.assert_allclose(twin, want, atol=1e-5)
    assert [float(v.numpy()) for v in sim.non_trainable_weights] == ranges
    assert np.max(np.abs(rounded - want)) > 1e-3  # the simulation is not the float graph ...
    np.testing.assert_array_equal(np.asarray(sim(audio, training=False)), rounded)  # ... and rounds again after


def test_consistency_term_is_logged_and_needs_qat(tiny_data, tmp_path):
    from convert.train import main

    log = _train(tiny_data, tmp_path / "c", "--epochs", "1", "--qat", "--consistency", "0.5")
    epoch = [r for r in log if r["event"] == "epoch"][0]
    assert 0 < epoch["dev_int8_sim_snr"] < 80  # rounded output, measured against the float twin
    assert epoch["dev_loss"] == pytest.approx(-epoch["dev_si_sdr"] - 0.5 * epoch["dev_int8_sim_snr"], abs=0.01)
    state = json.loads((tmp_path / "c" / "state.json").read_text())
    assert state["config"]["consistency"] == 0.5
    assert main(["--out", str(tmp_path / "no"), "--data", str(tiny_data), "--consistency", "1"]) == 2
