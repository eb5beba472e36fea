"""Device facts under emulation: the CPU model qemu runs, the interpreter, and whether XNNPACK came on.

    python aarch64_probe.py CPU_MODEL DISTRIBUTION MODEL.tflite

Exits 1, saying why, when the aux vector does not match the CPU model, when the interpreter is not the
named distribution, when the native library writes "Error in cpuinfo", or when it does not announce the
XNNPACK delegate (the interpreter then runs its reference kernels, silently).
"""

from __future__ import annotations

import os
import platform
import struct
import sys
import tempfile

AT_HWCAP = 16
# Linux arm64 HWCAP bits: the A76 has them, the A72 has neither.
HWCAP_ATOMICS, HWCAP_ASIMDDP = 1 << 8, 1 << 20
EXPECTED = {"cortex-a72": (False, False), "cortex-a76": (True, True)}
BANNER = b"Created TensorFlow Lite XNNPACK delegate for CPU"


def hwcap() -> int:
    with open("/proc/self/auxv", "rb") as f:  # qemu-user serves the guest's own aux vector here
        return dict(struct.iter_unpack("<QQ", f.read())).get(AT_HWCAP, 0)


def interpreter_stderr(model: str) -> tuple[str, str, bytes]:
    """(distribution, version, what the native library wrote on fd 2) for one interpreter, one invoke."""
    from edge.interpreter import interpreter_package

    pkg = interpreter_package()
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            interp = pkg.factory(model_path=model, num_threads=1)
            interp.allocate_tensors()
            interp.invoke()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        tmp.seek(0)
        return pkg.name, pkg.version, tmp.read()


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    cpu, dist, model = argv
    if cpu not in EXPECTED:
        print(f"probe: unknown CPU model {cpu!r}; known: {sorted(EXPECTED)}")
        return 2
    cap = hwcap()
    atomics, dotprod = bool(cap & HWCAP_ATOMICS), bool(cap & HWCAP_ASIMDDP)
    name, version, err = interpreter_stderr(model)
    with open("/proc/cpuinfo") as f:
        part = next((line.split(":")[1].strip() for line in f if line.startswith("CPU part")), "none")
    xnnpack = BANNER in err
    print(f"device: {platform.machine()}, QEMU_CPU={cpu}, hwcap atomics={atomics} asimddp={dotprod}, "
          f"/proc/cpuinfo CPU part {part}, {os.cpu_count()} cpus, Python {platform.python_version()}, "
          f"{name} {version}, XNNPACK {'on' if xnnpack else 'OFF'}")
    problems = []
    if platform.machine() != "aarch64":
        problems.append(f"machine is {platform.machine()}, expected aarch64")
    if (atomics, dotprod) != EXPECTED[cpu]:
        problems.append(f"hwcap atomics={atomics} asimddp={dotprod} does not match {cpu} (expected {EXPECTED[cpu]})")
    if name != dist:
        problems.append(f"interpreter is {name}, expected {dist}")
    if b"Error in cpuinfo" in err:
        problems.append("the native library wrote 'Error in cpuinfo'")
    if not xnnpack:
        problems.append("no XNNPACK delegate was created; the interpreter wrote: "
                        + (err.decode(errors="replace").strip() or "nothing"))
    for p in problems:
        print(f"probe FAIL: {p}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
