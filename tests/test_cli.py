"""``edge-denoise denoise`` and ``eval``: files, folders, raw PCM, and bad input with nothing left behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

import edge
from edge.cli import main

from .conftest import noise_audio


def _wav(path, x, sr=16000, subtype="PCM_16"):
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, x, sr, subtype=subtype)
    return path


def _no_temp_files(folder):
    return [p for p in folder.rglob("*") if ".tmp" in p.name]


def test_file_keeps_rate_channels_length_and_format(small_bundle, tmp_path):
    x = np.stack([noise_audio(1.0, 1)[:13000], noise_audio(1.0, 2)[:13000]], axis=1) * 0.5
    src = _wav(tmp_path / "in" / "st.flac", x, sr=44100, subtype="PCM_24")
    dst = tmp_path / "out.flac"
    assert main(["denoise", "--model", small_bundle, str(src), "-o", str(dst), "-q"]) == 0
    info = sf.info(dst)
    assert (info.samplerate, info.channels, info.frames, info.subtype) == (44100, 2, 13000, "PCM_24")
    y, _ = sf.read(dst)
    assert not np.allclose(y[:, 0], y[:, 1])  # each channel its own stream


def test_mono_16k_equals_the_api(small_bundle, tmp_path):
    x = noise_audio(0.9, 4)
    src = _wav(tmp_path / "a.wav", x, subtype="FLOAT")
    assert main(["denoise", "--model", small_bundle, str(src), "-o", str(tmp_path / "o.wav"), "-q"]) == 0
    y, _ = sf.read(tmp_path / "o.wav", dtype="float32")
    np.testing.assert_allclose(y, np.clip(edge.denoise(x, small_bundle), -1, 1), atol=1e-7)


def test_folders_are_mirrored_skipped_and_overwritten(small_bundle, tmp_path, capsys):
    src = tmp_path / "corpus"
    for rel in ("a.wav", "sub/b.flac", "sub/deeper/c.ogg"):
        _wav(src / rel, noise_audio(0.3, len(rel)), subtype="VORBIS" if rel.endswith("ogg") else "PCM_16")
    (src / "notes.txt").write_text("ignored")
    out = tmp_path / "out"
    assert main(["denoise", "--model", small_bundle, str(src), "-o", str(out)]) == 0
    made = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert made == ["corpus/a.wav", "corpus/sub/b.flac", "corpus/sub/deeper/c.ogg"]
    err = capsys.readouterr().err
    assert "[3/3]" in err and "real-time factor" in err
    before = (out / "corpus/a.wav").stat().st_mtime_ns
    assert main(["denoise", "--model", small_bundle, str(src), "-o", str(out)]) == 0
    assert "exists, skipped" in capsys.readouterr().err
    assert (out / "corpus/a.wav").stat().st_mtime_ns == before
    assert main(["denoise", "--model", small_bundle, str(src), "-o", str(out), "--overwrite", "-q"]) == 0
    assert (out / "corpus/a.wav").stat().st_mtime_ns != before
    assert not _no_temp_files(out)


def test_never_overwrites_input(small_bundle, tmp_path, capsys):
    src = _wav(tmp_path / "a.wav", noise_audio(0.2))
    data = src.read_bytes()
    assert main(["denoise", "--model", small_bundle, str(src), "-o", str(src), "--overwrite"]) == 2
    assert "would overwrite its input" in capsys.readouterr().err
    assert src.read_bytes() == data


@pytest.mark.parametrize("kind, words", [
    ("garbage", "cannot read audio"),
    ("empty", "zero-length audio"),
    ("nan", "NaN or Inf"),
    ("missing", "no such file or folder"),
])
def test_bad_input_exit_2_and_no_output(small_bundle, tmp_path, capsys, kind, words):
    src = tmp_path / "bad.wav"
    if kind == "garbage":
        src.write_bytes(b"RIFF....WAVEfmt garbage" * 20)
    elif kind == "empty":
        _wav(src, np.zeros(0, np.float32))
    elif kind == "nan":
        _wav(src, np.array([0.1, np.nan, 0.2] * 100, np.float32), subtype="FLOAT")
    out = tmp_path / "out"
    code = main(["denoise", "--model", small_bundle, str(src), "-o", str(out)])
    assert code == 2
    assert words in capsys.readouterr().err
    assert not out.exists() or not any(out.rglob("*"))


def test_one_bad_file_does_not_stop_the_batch(small_bundle, tmp_path, capsys):
    src = tmp_path / "in"
    _wav(src / "good.wav", noise_audio(0.2))
    (src / "bad.wav").write_bytes(b"junk")
    out = tmp_path / "out"
    assert main(["denoise", "--model", small_bundle, str(src), "-o", str(out), "-q"]) == 2
    assert (out / "in" / "good.wav").exists() and not (out / "in" / "bad.wav").exists()
    assert "bad.wav: cannot read audio" in capsys.readouterr().err


def test_missing_bundle(tmp_path, capsys):
    src = _wav(tmp_path / "a.wav", noise_audio(0.2))
    assert main(["denoise", "--model", str(tmp_path / "nobundle"), str(src), "-o", str(tmp_path / "o.wav")]) == 2
    assert "no such bundle folder" in capsys.readouterr().err
    assert not (tmp_path / "o.wav").exists()


def test_raw_pcm_stdin_stdout(small_bundle, tmp_path):
    x = (noise_audio(0.7, 8) * 32767).astype("<i2")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run([sys.executable, "-m", "edge.cli", "denoise", "--model", small_bundle, "-", "-q"],
                         input=x.tobytes(), capture_output=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr.decode()
    assert out.stderr == b""  # -q: nothing at all, not even the native XNNPACK banner
    y = np.frombuffer(out.stdout, "<i2")
    assert len(y) == len(x)
    ref = edge.denoise(x.astype(np.float32) / 32768, small_bundle)
    np.testing.assert_allclose(y / 32768, ref, atol=1.5 / 32768)


def test_raw_pcm_at_wrong_rate_is_refused(small_bundle, capsys):
    assert main(["denoise", "--model", small_bundle, "-", "--rate", "48000"]) == 2
    assert "this bundle runs at 16000 Hz" in capsys.readouterr().err


def test_eval_scores_and_json(small_bundle, tmp_path, capsys):
    pytest.importorskip("pesq", reason="eval needs the [eval] extra")
    from .conftest import EXAMPLE

    clean, noisy = tmp_path / "clean", tmp_path / "noisy"
    for d, name in ((clean, "p232_013_clean.wav"), (noisy, "p232_013_noisy.wav")):
        d.mkdir()
        (d / "x.wav").write_bytes((EXAMPLE.parent / name).read_bytes())
    js = tmp_path / "r.json"
    assert main(["eval", "--model", small_bundle, "--clean", str(clean), "--noisy", str(noisy), "--json",
                 str(js), "-q"]) == 0
    r = json.loads(js.read_text())
    assert r["files"] == 1 and r["per_file"][0]["file"] == "x.wav"
    m = r["means"]
    assert 1.0 <= m["noisy_pesq_wb"] <= 4.6 and 0 < m["noisy_stoi"] <= 1
    assert m["gain_si_sdr"] == pytest.approx(m["si_sdr"] - m["noisy_si_sdr"], abs=1e-3)
    assert "| noisy input |" in capsys.readouterr().out


def test_eval_missing_reference(small_bundle, tmp_path, capsys):
    (tmp_path / "c").mkdir()
    _wav(tmp_path / "n" / "x.wav", noise_audio(0.2))
    assert main(["eval", "--model", small_bundle, "--clean", str(tmp_path / "c"), "--noisy",
                 str(tmp_path / "n")]) == 2
    assert "no clean reference" in capsys.readouterr().err


def test_si_sdr_properties():
    from edge.evaluate import si_sdr

    x = noise_audio(0.5, 1)
    assert si_sdr(x, 3 * x) > 100
    n = noise_audio(0.5, 2)
    assert si_sdr(x, x + n) == pytest.approx(0.0, abs=0.2)
