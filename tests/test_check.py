"""`edge-denoise check`: each bundle's golden pair run here; exit 1 and one line when it computes wrongly."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

import edge
from edge.bundle import runtime_listed
from edge.check import GOLDEN, check_bundle, load_golden
from edge.cli import main
from edge.interpreter import interpreter_package

from .conftest import FIXTURES, REPO, noise_audio

SHIPPED = sorted(p.parent for p in (REPO / "pretrained_model").glob("*/*/manifest.json"))
CLI = [sys.executable, "-m", "edge.cli"]


def _runs_here(path) -> bool:
    pkg = interpreter_package()
    return runtime_listed(json.loads((path / "manifest.json").read_text())["runtimes"], pkg.name, pkg.version)


def _listed_copy(tmp_path, name="b"):
    """A copy of the first shipped bundle this interpreter may run."""
    src = next((p for p in SHIPPED if _runs_here(p)), None)
    if src is None:
        pytest.skip(f"no shipped bundle lists {interpreter_package().name}")
    dst = tmp_path / name
    shutil.copytree(src, dst)
    return dst


def _tamper_output(folder, fix_checksum: bool):
    """Change the reference output by a small burst (about 30 dB below it); optionally keep the checksum right."""
    m = json.loads((folder / "manifest.json").read_text())
    out = folder / m[GOLDEN]["output"]["file"]
    y = np.load(out)
    y[len(y) // 2: len(y) // 2 + 100] += 0.05
    np.save(out, y)
    if fix_checksum:
        m[GOLDEN]["output"]["sha256"] = hashlib.sha256(out.read_bytes()).hexdigest()
        (folder / "manifest.json").write_text(json.dumps(m, indent=1))


def test_every_shipped_bundle_carries_a_golden_pair_and_passes(tmp_path, capsys):
    report = tmp_path / "check.json"
    code = main(["check", "--json", str(report)] + [a for p in SHIPPED for a in ("--model", str(p))])
    out = capsys.readouterr()
    doc = json.loads(report.read_text())
    assert code == 0, out.err
    assert doc["exit_code"] == 0 and doc["device"]["interpreter"] == interpreter_package().name
    assert [r["path"] for r in doc["bundles"]] == [str(p) for p in SHIPPED]
    for path, r in zip(SHIPPED, doc["bundles"], strict=True):
        want = "pass" if _runs_here(path) else "refused"
        assert r["status"] == want, r
        if want == "pass":
            assert r["snr_db"] is None or r["snr_db"] >= r["tolerance_snr_db"]
            assert r["tolerance_snr_db"] == json.loads((path / "manifest.json").read_text())[
                "verification"]["tolerance_snr_db"]
    assert "device:" in out.out and "interpreter:" in out.out and out.err == ""


def test_golden_pair_is_short_and_speech(tmp_path):
    bundle = edge.load_bundle(_listed_copy(tmp_path))
    g = load_golden(bundle)
    assert 1.0 <= len(g.input) / bundle.sample_rate <= 2.0 and len(g.output) == len(g.input)
    sizes = sum((tmp_path / "b" / bundle.manifest[GOLDEN][k]["file"]).stat().st_size for k in ("input", "output"))
    assert sizes < 150_000
    assert np.sqrt(np.mean(g.input ** 2)) > 0.01  # the loudest second: speech, not the lead-in silence


def test_tampered_reference_output_fails_with_one_line(tmp_path):
    b = _listed_copy(tmp_path)
    _tamper_output(b, fix_checksum=True)
    r = subprocess.run(CLI + ["check", "--model", str(b)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 1, r.stderr
    lines = r.stderr.strip().splitlines()
    name = json.loads((b / "manifest.json").read_text())["name"]
    assert len(lines) == 1 and lines[0].startswith(f"edge-denoise check: FAIL {name} ({b})"), r.stderr
    assert "SNR" in lines[0] and "needs >=" in lines[0] and interpreter_package().name in lines[0]
    snr = float(lines[0].split("SNR ")[1].split(" dB")[0])
    assert 20 < snr < 40  # the burst sits ~30 dB below the reference


def test_golden_file_changed_without_its_checksum_is_a_corrupt_bundle(tmp_path, capsys):
    b = _listed_copy(tmp_path)
    _tamper_output(b, fix_checksum=False)
    assert main(["check", "--model", str(b)]) == 2
    out = capsys.readouterr().out
    assert "golden_output.npy: sha256 mismatch" in out


def test_bundle_without_golden_pair_says_so_exit_3(tmp_path, capsys):
    b = _listed_copy(tmp_path)
    m = json.loads((b / "manifest.json").read_text())
    del m[GOLDEN]
    (b / "manifest.json").write_text(json.dumps(m))
    good = _listed_copy(tmp_path, "good")
    assert main(["check", "--model", str(b), "--model", str(good)]) == 3
    out = capsys.readouterr().out
    assert "no golden pair" in out and "python -m convert.golden --add" in out


def test_wrong_beats_unchecked_and_errors_in_the_exit_code(tmp_path, capsys):
    wrong, missing = _listed_copy(tmp_path, "wrong"), tmp_path / "missing"
    _tamper_output(wrong, fix_checksum=True)
    assert main(["check", "-q", "--model", str(missing), "--model", str(wrong)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "no such bundle folder" in err[0] and "FAIL" in err[1]


def test_no_xnnpack_is_reported_with_its_reason(tmp_path):
    b = _listed_copy(tmp_path)
    r = check_bundle(b, edge.Options(xnnpack=False))
    assert r["status"] == "pass" and r["xnnpack"]["on"] is False and "--no-xnnpack" in r["xnnpack"]["why"]


def test_a_graph_xnnpack_does_not_take_is_reported_with_its_mode():
    """int16 activations: ai-edge-litert's XNNPACK takes none of the graph; the reason names the mode."""
    b = REPO / "pretrained_model" / "dtln-16k" / "int16x8"
    if not _runs_here(b):
        pytest.skip(f"{interpreter_package().name} is not among the runtimes of {b}")
    r = check_bundle(b, edge.Options())
    assert r["status"] == "pass" and r["xnnpack"]["on"] is False
    assert "delegated no node" in r["xnnpack"]["why"] and "int16x8 graph" in r["xnnpack"]["why"]


def test_golden_command_is_rerunnable_and_reproduces_the_shipped_pair(tmp_path):
    """convert.golden on a copy of a shipped bundle writes the committed files again: byte for byte where the
    interpreter runs the same kernels as where the pair was made; on another CPU (XNNPACK picks AVX2 or
    AVX-512 kernels, whose int8 and float sums differ in the last bits) everything but the output and its
    checksum byte for byte, and the output within the bundle's own tolerance of the shipped one."""
    b = _listed_copy(tmp_path)
    if json.loads((b / "manifest.json").read_text())["golden"]["reference"].split(",")[0] != \
            f"{interpreter_package().name} {interpreter_package().version}":
        pytest.skip("the shipped reference outputs were computed by another interpreter version")
    before = {p.name: p.read_bytes() for p in b.iterdir()}
    r = subprocess.run([sys.executable, "-m", "convert.golden", "--add", str(b)], capture_output=True, text=True,
                       timeout=120, cwd=REPO)
    assert r.returncode == 0, r.stderr
    after = {p.name: p.read_bytes() for p in b.iterdir()}
    if after == before:
        return
    m_before, m_after = json.loads(before["manifest.json"]), json.loads(after["manifest.json"])
    out_file = m_before["golden"]["output"]["file"]
    assert set(after) == set(before)
    assert {k: v for k, v in after.items() if k not in (out_file, "manifest.json")} == \
        {k: v for k, v in before.items() if k not in (out_file, "manifest.json")}
    assert m_after["golden"]["output"].pop("sha256") != m_before["golden"]["output"].pop("sha256")
    assert m_after == m_before
    again = np.load(io.BytesIO(after[out_file])).astype(np.float64)
    shipped = np.load(io.BytesIO(before[out_file])).astype(np.float64)
    snr = 10 * np.log10(np.sum(shipped ** 2) / np.sum((shipped - again) ** 2))
    assert snr >= m_before["golden"]["tolerance_snr_db"], snr


def test_denoise_check_refuses_to_write_with_a_wrong_bundle(tmp_path):
    b = _listed_copy(tmp_path)
    _tamper_output(b, fix_checksum=True)
    src = tmp_path / "in.wav"
    sf.write(src, noise_audio(0.5), 16000, subtype="PCM_16")
    assert main(["denoise", "--model", str(b), "--check", str(src), "-o", str(tmp_path / "o.wav"), "-q"]) == 1
    assert not (tmp_path / "o.wav").exists()
    assert main(["denoise", "--model", str(b), str(src), "-o", str(tmp_path / "o.wav"), "-q"]) == 0  # off by default


def test_serve_checks_at_start_unless_told_not_to(tmp_path):
    b = _listed_copy(tmp_path)
    _tamper_output(b, fix_checksum=True)
    args = ["serve", "--model", str(b), "--uri", "stdio://?mode=raw", "-q"]
    r = subprocess.run(CLI + args, input=b"", capture_output=True, timeout=120)
    assert r.returncode == 1 and r.stderr.decode().count("FAIL") == 1, r.stderr
    r = subprocess.run(CLI + args + ["--no-check"], input=b"\0\0" * 1600, capture_output=True, timeout=120)
    assert r.returncode == 0 and len(r.stdout) == 3200, r.stderr


def test_live_checks_at_start(tmp_path):
    from edge.live import LiveError, import_sounddevice

    try:
        import_sounddevice()
    except LiveError as exc:
        pytest.skip(str(exc))
    b = _listed_copy(tmp_path)
    _tamper_output(b, fix_checksum=True)
    r = subprocess.run(CLI + ["live", "--model", str(b), "--duration", "0.1", "-q"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 1 and "edge-denoise check: FAIL" in r.stderr, r.stderr


@pytest.mark.parametrize("name", ["small-none", "identity"])
def test_committed_fixture_bundles_pass_their_check(name):
    assert check_bundle(FIXTURES / name)["status"] == "pass"
