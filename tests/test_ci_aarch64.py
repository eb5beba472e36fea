""".ci/aarch64_compare.py: the aarch64 stage's verdict on ARM outputs against x86 (floors, check, XNNPACK)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import soundfile as sf

from .conftest import REPO

SCRIPT = REPO / ".ci" / "aarch64_compare.py"
BUNDLES = {"pretrained_model/dtln-16k/float32": "none", "pretrained_model/dtln-16k-int8/int8": "int8"}
CPUS = ("cortex-a72", "cortex-a76")


def _outputs(tmp_path, arm_noise: dict[tuple[str, str], float] | None = None,
             xnnpack_arm: bool = True) -> None:
    """x86 and ARM outputs of the two bundles (ARM = x86 + noise at the given level) and check results."""
    rng = np.random.default_rng(0)
    ref = (0.1 * rng.standard_normal(16000)).astype(np.float32)
    checks = {m: [] for m in ("x86", *CPUS)}
    for b in BUNDLES:
        key = b.replace("/", "_")
        sf.write(tmp_path / f"x86-litert-{key}.wav", ref, 16000, subtype="FLOAT")
        for m in checks:
            on = xnnpack_arm if m != "x86" else True
            checks[m].append({"path": b, "status": "pass", "snr_db": 120.0, "xnnpack": {"on": on, "why": "test"}})
        for cpu in CPUS:
            level = (arm_noise or {}).get((b, cpu), 1e-7)
            y = ref + (level * rng.standard_normal(len(ref))).astype(np.float32)
            sf.write(tmp_path / f"{cpu}-litert-{key}.wav", y, 16000, subtype="FLOAT")
    for m, results in checks.items():
        (tmp_path / f"check-litert-{m}.json").write_text(json.dumps({"bundles": results}))


def _run(tmp_path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), str(tmp_path), "--cpus", " ".join(CPUS),
                           "--json", str(tmp_path / "snr.json"), *BUNDLES],
                          capture_output=True, text=True, cwd=REPO, timeout=120)


def test_close_outputs_pass_and_the_table_has_every_bundle_and_cpu(tmp_path):
    _outputs(tmp_path)
    r = _run(tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    rows = json.loads((tmp_path / "snr.json").read_text())["rows"]
    assert {(row["bundle"], row["mode"]) for row in rows} == set(BUNDLES.items())
    for row in rows:
        for cpu in CPUS:
            assert row[cpu]["snr_db"] > 100 and row[cpu]["xnnpack"] is True
    assert "pretrained_model/dtln-16k/float32" in r.stdout


def test_a_floor_missed_fails_naming_bundle_cpu_and_figures(tmp_path):
    # 0.1 * N(0,1) signal, 0.01 noise: 20 dB, under the int8 floor (25 dB)
    _outputs(tmp_path, {("pretrained_model/dtln-16k-int8/int8", "cortex-a76"): 0.01})
    r = _run(tmp_path)
    assert r.returncode == 1
    missed = [line for line in r.stdout.splitlines() if line.startswith("MISSED")]
    assert len(missed) == 1, r.stdout
    assert "dtln-16k-int8/int8 cortex-a76" in missed[0] and "floor 25 dB (int8)" in missed[0]


def test_float_floor_is_stricter_than_int8(tmp_path):
    # 1e-4 noise: ~60 dB, fine for int8 (25 dB), a miss for float32 (100 dB)
    _outputs(tmp_path, {("pretrained_model/dtln-16k/float32", "cortex-a72"): 1e-4,
                        ("pretrained_model/dtln-16k-int8/int8", "cortex-a72"): 1e-4})
    r = _run(tmp_path)
    assert r.returncode == 1
    missed = [line for line in r.stdout.splitlines() if line.startswith("MISSED")]
    assert len(missed) == 1 and "dtln-16k/float32 cortex-a72" in missed[0], r.stdout


def test_xnnpack_off_on_arm_but_on_on_x86_fails(tmp_path):
    _outputs(tmp_path, xnnpack_arm=False)
    r = _run(tmp_path)
    assert r.returncode == 1
    assert sum("XNNPACK OFF" in line for line in r.stdout.splitlines()) == len(BUNDLES) * len(CPUS), r.stdout


def test_a_missing_arm_output_fails(tmp_path):
    _outputs(tmp_path)
    (tmp_path / "cortex-a76-litert-pretrained_model_dtln-16k_float32.wav").unlink()
    r = _run(tmp_path)
    assert r.returncode == 1 and "no ARM output" in r.stdout
