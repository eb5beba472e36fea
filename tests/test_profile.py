"""``edge-denoise profile``: the JSON schema, interleaving, the timed stream's arithmetic, and reports."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from edge import StreamingDenoiser, load_bundle
from edge.cli import main
from edge.options import Options
from edge.profile import STAT_KEYS, TimedDenoiser, schedule

DEVICE_KEYS = ("label", "machine", "cpu_model", "cores", "governor", "temperature_c", "os", "python", "numpy",
               "interpreter", "interpreter_version", "xnnpack", "threads")


@pytest.fixture(scope="module")
def two_bundles(small_bundle, tmp_path_factory) -> list[str]:
    """The small bundle and a renamed copy: two bundles with their own names and checksums."""
    copy = tmp_path_factory.mktemp("bundles") / "small-copy"
    shutil.copytree(small_bundle, copy)
    manifest = copy / "manifest.json"
    m = json.loads(manifest.read_text())
    m["name"] = "small-copy"
    manifest.write_text(json.dumps(m, indent=1))
    return [small_bundle, str(copy)]


@pytest.fixture(scope="module")
def profile_json(two_bundles, tmp_path_factory) -> Path:
    """One short profile run of both bundles, interleaved."""
    out = tmp_path_factory.mktemp("profile") / "profile.json"
    argv = ["profile", "--seconds", "1", "--warmup", "10", "--threads", "1", "--json", str(out), "--quiet"]
    for b in two_bundles:
        argv += ["--model", b]
    assert main(argv) == 0
    return out


def test_profile_schema(profile_json, two_bundles):
    prof = json.loads(profile_json.read_text())
    assert prof["schema"] == "edge-denoise-profile" and prof["schema_version"] == 1
    for key in DEVICE_KEYS:
        assert key in prof["device"], key
    assert prof["device"]["threads"] == 1 and prof["device"]["xnnpack"] is True
    assert prof["device"]["cores"] >= 1 and prof["device"]["python"] and prof["device"]["interpreter_version"]
    assert prof["settings"]["audio"]["kind"] == "file" and prof["settings"]["auto_level"] is False
    assert prof["command"].startswith("edge-denoise profile --model ")
    for rec, path in zip(prof["bundles"], two_bundles, strict=True):
        bundle = load_bundle(path)
        assert rec["name"] == bundle.name and rec["sha256"] == bundle.sha256
        assert rec["quantization"] == "none"
        assert rec["stages"] == ["framing_rfft", "mask", "frame", "irfft_ola", "family_glue", "call_overhead", "total"]
        assert rec["blocks"] == 125 and rec["warmup_blocks"] == 10 and rec["budget_ms"] == 8.0
        for name in rec["stages"]:
            st = rec["stages_ms"][name]
            assert set(st) == set(STAT_KEYS), name
            assert 0 <= st["p50"] <= st["p95"] <= st["p99"] <= st["max"], (name, st)
            assert st["mean"] <= st["max"], (name, st)
        st = rec["uninstrumented_ms"]
        assert 0 < st["p50"] <= st["p95"] <= st["p99"] <= st["max"]
        # The stages split the block: their means add up to the total's.
        parts = sum(rec["stages_ms"][n]["mean"] for n in rec["stages"][:-1])
        assert parts == pytest.approx(rec["stages_ms"]["total"]["mean"], abs=1e-5)
        assert rec["rtf"] > 0
        assert rec["budget_share"]["mean"] == pytest.approx(rec["rtf"], rel=1e-3)
        assert rec["budget_share"]["p50"] <= rec["budget_share"]["p99"] <= rec["budget_share"]["max"]
        assert 0 <= rec["deadline_misses"] <= rec["blocks"]


def test_two_bundles_measured_in_one_run(profile_json):
    prof = json.loads(profile_json.read_text())
    assert [r["name"] for r in prof["bundles"]] == ["small-none", "small-copy"]
    assert prof["bundles"][0]["sha256"] != prof["bundles"][1]["sha256"]
    assert prof["settings"]["interleave"].startswith("round robin")


def test_schedule_interleaves():
    # One block per turn: every stream once per turn, who goes first rotating.
    order = schedule([(128, 16000, 5)] * 4, turn_seconds=0)
    assert len(order) == 20
    for k in range(5):
        turn = order[4 * k:4 * k + 4]
        assert sorted(j for j, _ in turn) == [0, 1, 2, 3] and {b for _, b in turn} == {k}
        assert turn[0][0] == k % 4
    # Turns of one second of audio (125 blocks of 8 ms), in block order within a turn.
    order = schedule([(128, 16000, 250)] * 2, turn_seconds=1.0)
    assert order[:125] == [(0, k) for k in range(125)] and order[125:250] == [(1, k) for k in range(125)]
    assert order[250:375] == [(1, k) for k in range(125, 250)] and order[375:] == [(0, k) for k in range(125, 250)]
    # Another block shift stays in step by audio time.
    order = schedule([(128, 16000, 4), (256, 16000, 2)], turn_seconds=0)
    starts = [k * (128, 256)[j] for j, k in order]
    assert starts == sorted(starts) and len(order) == 6


@pytest.mark.parametrize("auto_level", [False, True], ids=["plain", "auto-level"])
def test_timed_denoiser_computes_what_the_stream_computes(small_bundle, auto_level):
    bundle = load_bundle(small_bundle)
    x = (0.1 * np.random.default_rng(3).standard_normal(8000)).astype(np.float32)
    x[:5000] *= np.float32(0.01)  # -60, then -20 dBFS: the automatic level boosts the start by 30 dB, then not
    options = Options(auto_level=auto_level)
    plain, timed = StreamingDenoiser(bundle, options), TimedDenoiser(bundle, options)
    for chunk in (1, 127, 128, 1000):
        ys = [np.concatenate([d.process(x[i:i + chunk]) for i in range(0, len(x), chunk)] + [d.flush()])
              for d in (plain, timed)]
        np.testing.assert_array_equal(ys[0], ys[1])
    assert timed.t_block > 0 and all(r.last > 0 for r in timed.timed.values())


def test_profile_prints_a_table(small_bundle, capsys):
    assert main(["profile", "--model", small_bundle, "--seconds", "0.2", "--warmup", "2", "--noise"]) == 0
    out = capsys.readouterr().out
    assert "real-time factor" in out and "irfft_ola" in out and "small-none" in out


def test_report_renders_markdown(profile_json, tmp_path, capsys):
    md = tmp_path / "table.md"
    assert main(["profile", "--report", str(profile_json), str(profile_json), "--markdown", str(md)]) == 0
    text = md.read_text()
    assert capsys.readouterr().out == text
    lines = text.splitlines()
    assert lines[0].startswith("| device |") and "p99 ms/block" in lines[0] and "real-time factor" in lines[0]
    rows = [ln for ln in lines[2:] if ln.startswith("| ")]
    assert len(rows) == 4  # two files x two bundles
    assert any("small-copy (none," in r for r in rows)
    assert "edge-denoise profile --model" in text


@pytest.mark.skipif(importlib.util.find_spec("matplotlib") is not None, reason="matplotlib is installed")
def test_report_png_without_matplotlib_exits_2(profile_json, tmp_path, capsys):
    assert main(["profile", "--report", str(profile_json), "--png", str(tmp_path / "c.png")]) == 2
    assert "matplotlib" in capsys.readouterr().err
    assert not (tmp_path / "c.png").exists()


def test_report_png(profile_json, tmp_path):
    pytest.importorskip("matplotlib", reason="the chart needs the optional extra: pip install 'edge-denoise[plot]'")
    png = tmp_path / "c.png"
    assert main(["profile", "--report", str(profile_json), "--png", str(png), "--quiet"]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_rejects_other_json(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text('{"hello": 1}')
    assert main(["profile", "--report", str(bad)]) == 2
    assert "not an edge-denoise profile" in capsys.readouterr().err


def test_bad_arguments_exit_2(small_bundle, capsys):
    assert main(["profile", "--model", small_bundle, "--seconds", "0"]) == 2
    assert "--seconds must be > 0" in capsys.readouterr().err
    assert main(["profile", "--model", small_bundle, "--png", "x.png"]) == 2
    assert "--report" in capsys.readouterr().err
