"""The file path of ``edge-denoise denoise``: streamed in blocks, one rounding rule, temp files, names, umask, range.

Issue #19 items 6 (kill -9 leaves a temp file), 7 (two inputs, one output name), 8 (files streamed, same
output as the whole-array path), 9 (one int16 rounding rule), 11 (outputs follow the umask), 13 (float
input beyond [-1, 1]); and #18's ``AlignedStream`` and shared model options.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import soundfile as sf

import edge
from edge.audio import to_int16
from edge.cli import build_parser, main
from edge.cmd_denoise import denoise_array
from edge.files import denoise_file, remove_stale_temps, temp_name
from edge.stream import AlignedStream

from .conftest import REPO, need, noise_audio

SHIPPED = REPO / "pretrained_model" / "dtln-16k" / "float32"


@pytest.fixture(scope="module")
def bundle():
    return edge.load_bundle(need(SHIPPED, "shipped dtln-16k float32 bundle"))


def _wav(path, x, sr=16000, subtype="PCM_16"):
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, x, sr, subtype=subtype)
    return path


def _env():
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), *sys.path])}


# --- AlignedStream ---------------------------------------------------------------------------------
@pytest.mark.parametrize("chunk", [1, 127, 128, 1000, 16000])
def test_aligned_stream_returns_exactly_the_input_length_for_any_chunking(bundle, chunk):
    x = noise_audio(1.3, 5)
    stream = AlignedStream(bundle)
    parts = [stream.process(x[i:i + chunk]) for i in range(0, len(x), chunk)]
    y = np.concatenate(parts + [stream.flush()])
    assert len(y) == len(x)
    np.testing.assert_array_equal(y, edge.denoise(x, bundle))
    again = np.concatenate([stream.process(x), stream.flush()])  # flush reset it: a new stream
    np.testing.assert_array_equal(again, y)


def test_aligned_stream_drops_the_delay_once(bundle):
    stream = AlignedStream(bundle)
    lat, s = bundle.latency_samples, bundle.block_shift
    assert len(stream.process(np.zeros(lat, np.float32))) == 0  # all of it is the model's delay
    assert len(stream.process(np.zeros(s, np.float32))) == s
    assert len(stream.flush()) == lat  # the rest: total out == total in


# --- item 8: streamed in blocks, same output as the whole signal in memory --------------------------
@pytest.mark.parametrize("sr, channels", [(48000, 2), (44100, 1), (16000, 2)])
def test_streamed_file_equals_the_whole_array_path_bit_for_bit(bundle, tmp_path, sr, channels):
    rng = np.random.default_rng(sr)
    x = (0.2 * rng.standard_normal((int(6.3 * sr), channels))).astype(np.float32)
    src = _wav(tmp_path / "in.wav", x, sr, subtype="FLOAT")
    dst = tmp_path / "out.wav"
    frames, ch, rate = denoise_file(src, dst, bundle, edge.Options(), block_seconds=0.45)  # 14 blocks
    y, _ = sf.read(dst, dtype="float32", always_2d=True)
    assert (frames, ch, rate) == (len(x), channels, sr) and y.shape == x.shape
    np.testing.assert_array_equal(y, np.clip(denoise_array(x, sr, bundle, edge.Options()), -1, 1))
    if sr == bundle.sample_rate:  # no resampling: each channel is exactly the streaming API's output
        for c in range(channels):
            np.testing.assert_array_equal(y[:, c], np.clip(edge.denoise(x[:, c], bundle), -1, 1))


# --- item 9: one rounding rule ------------------------------------------------------------------------
def test_to_int16_rounds_to_nearest_and_clips():
    x = np.array([0.0, 0.4, 0.5, 0.6, -0.4, -0.6, 1.5, 32766.6, 40000, -40000], np.float64) / 32768
    np.testing.assert_array_equal(to_int16(x), [0, 0, 0, 1, 0, -1, 2, 32767, 32767, -32768])
    assert to_int16(np.float32([1.0, -1.0])).tolist() == [32767, -32768]


def test_file_and_raw_pcm_agree_sample_for_sample(bundle, tmp_path):
    x16 = to_int16(noise_audio(1.1, 9) * 3)
    src = _wav(tmp_path / "in.wav", x16)
    assert main(["denoise", "--model", str(SHIPPED), str(src), "-o", str(tmp_path / "out.wav"), "-q"]) == 0
    from_file, _ = sf.read(tmp_path / "out.wav", dtype="int16")
    raw = subprocess.run([sys.executable, "-m", "edge.cli", "denoise", "--model", str(SHIPPED), "-", "-q"],
                         input=x16.astype("<i2").tobytes(), capture_output=True, timeout=120, env=_env())
    assert raw.returncode == 0, raw.stderr.decode()
    from_raw = np.frombuffer(raw.stdout, "<i2")
    np.testing.assert_array_equal(from_file, from_raw)
    np.testing.assert_array_equal(from_file, to_int16(edge.denoise(x16 / np.float32(32768), bundle)))


@pytest.mark.parametrize("subtype, bits", [("PCM_24", 24), ("PCM_U8", 8)])
def test_other_pcm_widths_round_the_same_way(bundle, tmp_path, subtype, bits):
    x = noise_audio(0.6, 3) * 2
    src = _wav(tmp_path / "in.wav", x, subtype=subtype)
    assert main(["denoise", "--model", str(SHIPPED), str(src), "-o", str(tmp_path / "out.wav"), "-q"]) == 0
    got, _ = sf.read(tmp_path / "out.wav", dtype="int32")
    xin, _ = sf.read(src, dtype="float32")
    full = 2 ** (bits - 1)
    want = np.clip(np.round(edge.denoise(xin, bundle).astype(np.float64) * full), -full, full - 1)
    np.testing.assert_array_equal(got >> (32 - bits), want.astype(np.int32))


# --- item 11: the umask decides --------------------------------------------------------------------
@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_output_mode_follows_the_umask(tmp_path, umask, mode):
    src = _wav(tmp_path / "in.wav", noise_audio(0.2))
    old = os.umask(umask)
    try:
        assert main(["denoise", "--model", str(SHIPPED), str(src), "-o", str(tmp_path / "o" / "x.wav"), "-q"]) == 0
    finally:
        os.umask(old)
    assert (tmp_path / "o" / "x.wav").stat().st_mode & 0o777 == mode


# --- item 6: kill -9 mid-batch, then a re-run -------------------------------------------------------
def test_a_killed_run_leaves_a_temp_file_that_the_next_run_removes(tmp_path, capsys):
    rng = np.random.default_rng(1)
    src = _wav(tmp_path / "in" / "long.wav", (0.1 * rng.standard_normal((48000 * 60, 2))).astype(np.float32),
               sr=48000)
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "edge.cli", "denoise", "--model", str(SHIPPED), str(src), "-o",
                             str(out), "-q"], env=_env(), stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    temps = []
    while time.monotonic() < deadline and proc.poll() is None:
        temps = [p for p in out.glob(".long.wav.*.tmp") if p.stat().st_size > 100_000] if out.exists() else []
        if temps:
            break
        time.sleep(0.05)
    assert temps, "the writer never got going (or finished before it could be killed)"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert [p.name for p in out.iterdir()] == [temps[0].name]  # hidden, partial, and left for good
    assert main(["denoise", "--model", str(SHIPPED), str(src), "-o", str(out), "--overwrite"]) == 0
    assert f"removed {temps[0]}" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["long.wav"]
    assert sf.info(out / "long.wav").frames == 48000 * 60


def test_only_stale_temp_files_of_this_tool_are_removed(tmp_path):
    dst = tmp_path / "x.wav"
    stale, live = temp_name(dst), temp_name(dst)
    stale.write_bytes(b"partial")
    live.write_bytes(b"being written")
    others = [tmp_path / ".x.wav.k2j4h5g6.tmp", tmp_path / "notes.tmp", tmp_path / ".x.wav.edge-denoise-12ab.tmp"]
    for p in others:
        p.write_bytes(b"not ours")
    os.symlink(stale, temp_name(dst))  # a symlink with our name is not followed nor removed
    with open(live, "rb") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # as a live writer does until its rename
        assert remove_stale_temps(tmp_path) == [stale]
    assert live.exists() and all(p.exists() for p in others)
    assert remove_stale_temps(tmp_path) == [live]  # once its writer is gone


# --- item 7: two inputs, one output name -----------------------------------------------------------
@pytest.mark.parametrize("overwrite", [False, True])
def test_two_inputs_with_one_output_name_are_refused(tmp_path, capsys, overwrite):
    a = _wav(tmp_path / "a" / "x.wav", noise_audio(0.2, 1))
    b = _wav(tmp_path / "b" / "x.wav", noise_audio(0.2, 2))
    out = tmp_path / "out"
    args = ["denoise", "--model", str(SHIPPED), str(a), str(b), "-o", str(out)] + ["--overwrite"] * overwrite
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(a) in err[0] and str(b) in err[0] and str(out / "x.wav") in err[0]
    assert not out.exists()


def test_two_folders_of_one_name_are_refused(tmp_path, capsys):
    for side in ("a", "b"):
        _wav(tmp_path / side / "take" / "y.wav", noise_audio(0.2))
    assert main(["denoise", "--model", str(SHIPPED), str(tmp_path / "a" / "take"), str(tmp_path / "b" / "take"),
                 "-o", str(tmp_path / "out")]) == 2
    assert "would both be written to" in capsys.readouterr().err


# --- item 13: float input beyond full scale --------------------------------------------------------
def test_the_api_refuses_float_audio_beyond_full_scale_naming_the_peak(bundle):
    x = noise_audio(0.5, 2)
    x[1234] = -500.0
    with pytest.raises(edge.AudioError, match=r"peaks at 500 \(sample 1234, 54\.0 dB over full scale\)"):
        edge.denoise(x, bundle)
    with pytest.raises(edge.AudioError, match="peaks at 500"):
        AlignedStream(bundle).process(x)
    edge.denoise(np.float32([1.0, -1.0] * 300), bundle)  # full scale itself is fine


def test_the_cli_refuses_a_float_file_beyond_full_scale_in_one_line(tmp_path):
    x = noise_audio(3.0, 4)
    x[40000] = 500.0
    src = _wav(tmp_path / "loud.wav", x, subtype="FLOAT")
    out = subprocess.run([sys.executable, "-m", "edge.cli", "denoise", "--model", str(SHIPPED), str(src), "-o",
                          str(tmp_path / "out.wav"), "-q"], capture_output=True, text=True, timeout=120, env=_env())
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and str(src) in lines[0] and "reach 500" in lines[0] and "2.500 s" in lines[0], out.stderr
    assert not any(tmp_path.glob("*out.wav*"))


# --- #18: the model options, declared once ---------------------------------------------------------
MODEL_COMMANDS = ["denoise", "eval", "live", "profile", "serve"]


def test_every_model_command_has_the_same_model_options():
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    for name in MODEL_COMMANDS:
        if name not in sub.choices:
            continue  # an optional subcommand module not importable here
        opts = {s for a in sub.choices[name]._actions for s in a.option_strings}
        assert {"--model", "--threads", "--xnnpack", "--no-xnnpack"} <= opts, name


@pytest.mark.parametrize("command", [["denoise", "x.wav", "-o", "o.wav"], ["eval", "--clean", "c", "--noisy", "n"],
                                     ["profile"], ["serve"]])
@pytest.mark.parametrize("threads", ["0", "-2", "two"])
def test_threads_is_refused_at_the_command_line(capsys, command, threads):
    with pytest.raises(SystemExit) as caught:
        main([*command, "--threads", threads])
    assert caught.value.code == 2
    assert f"--threads: expected an integer >= 1, got {threads!r}" in capsys.readouterr().err
