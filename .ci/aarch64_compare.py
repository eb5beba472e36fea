"""ARM output vs x86 output per bundle: SNR against a per-mode floor, as a table; exit 1 on a floor missed.

    python aarch64_compare.py OUT_DIR --cpus "cortex-a72 cortex-a76" BUNDLE_DIR...

OUT_DIR holds ``x86-RT-B.wav`` (the reference) and ``CPU-RT-B.wav`` for each runtime RT and bundle B
(its path with ``/`` as ``_``), float32 WAVs of the same denoised example, and ``check-RT-x86.json`` /
``check-RT-CPU.json`` from ``edge-denoise check --json``: every bundle must pass, and XNNPACK must take
the same bundles on ARM as on x86.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import soundfile as sf

# SNR floors (dB) of the ARM output against the x86 output, per quantisation mode. Both sides run
# XNNPACK (int16x8: the reference kernels); they differ by summation order, FMA and which kernels each
# CPU gets, not by the model. Measured by this stage (float32 WAVs, the 3.9 s example, ai-edge-litert
# 2.3.0 and tflite-runtime 2.14.0, A72 and A76; docs/aarch64-ci.md) and margins:
# - none / float16: 128-143 dB (float rounding only). Floor 100: >= 28 dB of margin, and any real
#   fault (a wrong kernel, a wrong weight) lands far below (< 40 dB).
# - int16x8: 75.7 dB DTLN, identical PoCoNet (an int16 activation step now and then). Floor 60.
# - dynamic: 55.6-62.6 dB on our models, 53.3-57.6 dB (A76) and 135 dB (A72) on the published-architecture
#   DTLNs since their stage-2 encoder and decoder stay float32 (42.7-44.0 dB before; activations quantised
#   per call, so a last-bit difference moves a whole step; the published model's larger activations move
#   bigger steps). Floor 40: x86 XNNPACK vs x86 reference kernels already differ by 46 dB on our DTLN,
#   and the mode's own error against float32 is ~32 dB (its verification tolerance 30), so 40 dB
#   between two CPUs is a tenth of what the mode itself costs.
# - int8: 129.9 dB dtln-16k-int8, 41.3 dB PoCoNet; with tflite-runtime 2.14 (no XNNPACK for int8 there, so
#   each CPU's builtin int8 kernels) 35.5 dB PoCoNet; 27.8 dB dtln-finetuned-int8 (session 15). Floor 25, the
#   mode's own tolerance against float32: on x86, XNNPACK and the reference kernels differ by 27.8 dB on
#   dtln-finetuned-int8 (each of them 25.5 and 26.1 dB from float32) and by 38.9 dB on dtln-16k-int8, so two
#   right kernel sets differ about as much as int8 differs from float; tflite-runtime 2.14's wrong int16x8
#   PoCoNet, the fault this stage exists to catch, gives 3.8 dB against its reference.
FLOORS_DB = {"none": 100.0, "float16": 100.0, "int16x8": 60.0, "dynamic": 40.0, "int8": 25.0}


def snr_db(ref: np.ndarray, est: np.ndarray) -> float:
    ref = ref.astype(np.float64)
    err = float(np.sum((ref - est.astype(np.float64)) ** 2))
    return float("inf") if err == 0.0 else 10.0 * float(np.log10(np.sum(ref**2) / err))


def table(rows: list[dict], cpus: list[str]) -> str:
    """Per bundle and CPU: SNR vs x86 (dB; inf = identical), max difference (16-bit LSB), check's SNR
    against the bundle's golden output (dB), XNNPACK on or off (from check)."""
    def cell(r: dict, c: str) -> str:
        if c not in r:
            return f" {'-':>31}"
        v = r[c]
        snr = "inf" if v["snr_db"] is None else f"{v['snr_db']:.1f}"
        chk = {None: "inf", "missing": "-"}.get(v["check_snr_db"]) or f"{v['check_snr_db']:.1f}"
        x = {True: "on", False: "off", None: "?"}[v["xnnpack"]]
        return f" {snr:>9} {v['max_lsb']:>7.1f} {chk:>8} {x:>4}"

    head = f"{'runtime':<7} {'bundle':<38} {'mode':<8} {'floor':>5}" + "".join(f" {c:>31}" for c in cpus)
    sub = f"{'':<7} {'':<38} {'':<8} {'dB':>5}" + " vs x86 dB max LSB check dB XNNP" * len(cpus)
    lines = [head, sub] + [f"{r['runtime']:<7} {r['bundle']:<38} {r['mode']:<8} {r['floor_db']:>5.0f}"
                           + "".join(cell(r, c) for c in cpus) for r in rows]
    return "\n".join(lines)


def load_checks(out: Path, rt: str, cpus: list[str]) -> tuple[dict[str, dict], list[str]]:
    """``edge-denoise check --json`` results: {machine: {bundle path: result}}, and what is wrong with them.

    Wrong: a bundle that did not pass, a cpuinfo error, or XNNPACK taking a bundle on x86 but not on ARM
    (XNNPACK silently off) or the other way round.
    """
    checks, wrong = {}, []
    for machine in ["x86", *cpus]:
        path = out / f"check-{rt}-{machine}.json"
        if not path.is_file():
            wrong.append(f"{rt} {machine}: no edge-denoise check result at {path}")
            continue
        checks[machine] = {r["path"].rstrip("/"): r for r in json.loads(path.read_text())["bundles"]}
    for cpu in cpus:
        for b, r in checks.get(cpu, {}).items():
            x86 = checks.get("x86", {}).get(b, {}).get("xnnpack") or {}
            arm = r.get("xnnpack") or {}
            if r["status"] != "pass":
                wrong.append(f"{rt} {b} {cpu}: edge-denoise check {r['status']}: {r.get('message', r.get('snr_db'))}")
            if arm.get("cpuinfo_error"):
                wrong.append(f"{rt} {b} {cpu}: cpuinfo error: {arm['cpuinfo_error']}")
            if arm.get("on") != x86.get("on"):
                wrong.append(f"{rt} {b} {cpu}: XNNPACK {'on' if arm.get('on') else 'OFF'} ({arm.get('why')}), "
                             f"on x86 {'on' if x86.get('on') else 'off'} ({x86.get('why')})")
    return checks, wrong


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path, help="folder with the x86 and ARM outputs")
    p.add_argument("--cpus", required=True, help="space-separated QEMU_CPU models that must have outputs")
    p.add_argument("--json", type=Path, default=None, help="also write the table here")
    p.add_argument("bundles", nargs="+", help="bundle folders (for their quantisation mode)")
    args = p.parse_args(argv)
    cpus = args.cpus.split()
    rows, missed = [], []
    for rt in ("litert", "tflite"):
        checks, wrong = load_checks(args.out, rt, cpus) if any(args.out.glob(f"x86-{rt}-*.wav")) else ({}, [])
        missed += wrong
        for b in args.bundles:
            key = b.rstrip("/").replace("/", "_")
            ref_path = args.out / f"x86-{rt}-{key}.wav"
            if not ref_path.is_file():
                continue  # the manifest does not list this runtime
            mode = json.loads((Path(b) / "manifest.json").read_text())["quantization"]
            floor = FLOORS_DB[mode]
            ref, sr = sf.read(ref_path, dtype="float32")
            row = {"runtime": rt, "bundle": b, "mode": mode, "floor_db": floor}
            for cpu in cpus:
                path = args.out / f"{cpu}-{rt}-{key}.wav"
                if not path.is_file():
                    missed.append(f"{rt} {b} {cpu}: no ARM output at {path}")
                    continue
                y, sr_y = sf.read(path, dtype="float32")
                if y.shape != ref.shape or sr_y != sr:
                    missed.append(f"{rt} {b} {cpu}: shape {y.shape} @ {sr_y} Hz, x86 has {ref.shape} @ {sr} Hz")
                    continue
                s = snr_db(ref, y)
                c = checks.get(cpu, {}).get(b.rstrip("/"), {})
                # None = identical (check writes it so too); JSON has no infinity
                check_snr = "missing" if "status" not in c else c.get("snr_db")
                row[cpu] = {"snr_db": round(s, 1) if np.isfinite(s) else None,
                            "max_lsb": round(float(np.max(np.abs(ref - y))) * 32768, 1),
                            "check_snr_db": check_snr, "xnnpack": (c.get("xnnpack") or {}).get("on")}
                if s < floor:
                    missed.append(f"{rt} {b} {cpu}: SNR {s:.1f} dB vs x86, floor {floor:.0f} dB ({mode})")
            rows.append(row)
    print(table(rows, cpus))
    if args.json:
        args.json.write_text(json.dumps({"floors_db": FLOORS_DB, "rows": rows}, indent=1, allow_nan=False) + "\n")
    if not rows:
        missed.append("no x86 reference outputs found")
    for m in missed:
        print(f"MISSED: {m}")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
