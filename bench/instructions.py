"""Instructions per 8 ms block of the whole loop (Python + numpy + interpreter) under emulated Cortex-A72/A76.

A cost figure that does not depend on the machine's load: qemu-user runs an arm64 Python on each shipped
bundle (and the published DTLN loop) with a TCG plugin (bench/qemu/insn_count.c) that counts executed
guest instructions. Two runs per variant, of different length; difference / blocks = instructions per
block (imports, loading and start-up cancel). Writes results/instructions.json and results/instructions.md
with a Raspberry Pi 4 / Pi 5 prediction from an assumed IPC range, labelled as such.

    python bench/instructions.py [--cpus cortex-a72 cortex-a76] [--blocks 50 250] [--jobs 2]

Needs: qemu-user (the dynamic qemu-aarch64; the static one cannot load plugins), a C compiler and glib's
headers (libglib2.0-dev), the qemu-plugin.h of the installed qemu (--plugin-header; from Debian's qemu
source package), and the arm64 Debian root that `.ci/aarch64` builds and caches (--root). The arm64
wheels (numpy, ai-edge-litert, soundfile, soxr) are fetched by the host's pip into the bench work folder.
No root needed.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from common import REFERENCE, REPO, WORK, skip, write_result
from insn_predict import predict, table_markdown

QEMU = "/usr/bin/qemu-aarch64"
PLUGIN_SRC = REPO / "bench" / "qemu" / "insn_count.c"
ROOT_KEY = re.search(r"^ROOT_KEY=(\S+)", (REPO / ".ci" / "aarch64").read_text(), re.M).group(1)
DEFAULT_ROOT = Path("/var/cache/edge-denoise") / f"arm64-root-{ROOT_KEY}"
HEADER_GLOB = "/var/cache/edge-denoise/qemu-src/*/include/qemu/qemu-plugin.h"
DEPS = ["numpy", "ai-edge-litert", "soundfile", "soxr"]
# Fake /proc/cpuinfo per CPU model (as .ci/aarch64 writes it): without it the guest sees the host's x86
# one, and ai-edge-litert runs without XNNPACK, which would count the wrong kernels.
CPUINFO = {"cortex-a72": ("fp asimd evtstrm crc32 cpuid", "0x0", "0xd08", "3"),
           "cortex-a76": ("fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc "
                          "dcpop asimddp", "0x4", "0xd0b", "1")}
PUBLISHED = {"float32": ("model_1.tflite", "model_2.tflite"),
             "dynamic": ("model_quant_1.tflite", "model_quant_2.tflite")}


NOTES = [
    "Device above: the x86 machine that ran qemu. The counts depend neither on it nor on its load: the same "
    "command counted twice differed by 57 instructions in 6.6e8.",
    "The guest runs one thread (one interpreter thread, OPENBLAS_NUM_THREADS=1): the plugin's counter is shared, "
    "and idle BLAS threads spinning would be counted too.",
    "qemu executes each CPU model's instruction set (the A76 has dot-product instructions, so XNNPACK takes other "
    "int8 paths there: fewer instructions for int8 and dynamic) but models no timing: caches, DRAM and pipelines "
    "are what the IPC assumption of the prediction stands for.",
]


def _run(cmd: list[str], **kw) -> str:
    r = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if r.returncode != 0:
        raise SystemExit(f"failed ({r.returncode}): {' '.join(cmd)}\n{r.stdout[-2000:]}{r.stderr[-2000:]}")
    return r.stdout


def build_plugin(header: Path, work: Path) -> Path:
    """Compile the counting plugin against ``header``; the qemu binary checks the API version at load."""
    out = work / "libinsn_count.so"
    glib = _run(["pkg-config", "--cflags", "glib-2.0"]).split()
    _run(["cc", "-O2", "-Wall", "-shared", "-fPIC", f"-I{header.parent}", *glib, str(PLUGIN_SRC), "-o", str(out)])
    return out


def arm_deps(work: Path, py: str) -> tuple[Path, dict[str, str]]:
    """arm64 wheels of the runtime's dependencies for the root's Python, unpacked by the host's pip."""
    target = work / f"arm64-deps-cp{py.replace('.', '')}"
    if not (target / ".complete").is_file():
        shutil.rmtree(target, ignore_errors=True)
        # manylinux_2_27 too: ai-edge-litert 2.x tags its aarch64 wheels so (else pip picks 1.4).
        plats = [a for p in ("manylinux2014_aarch64", "manylinux_2_27_aarch64", "manylinux_2_28_aarch64",
                             "manylinux_2_31_aarch64", "manylinux_2_34_aarch64", "linux_aarch64")
                 for a in ("--platform", p)]
        _run([sys.executable, "-m", "pip", "install", "-q", "--target", str(target), "--only-binary=:all:",
              "--python-version", py, *plats, *DEPS], env=_pip_env())
        (target / ".complete").touch()
    versions = {}
    for d in target.glob("*.dist-info"):
        name, version = d.name[:-len(".dist-info")].rsplit("-", 1)
        versions[name.lower().replace("_", "-")] = version
    return target, versions


def _pip_env() -> dict[str, str]:
    import os

    env = dict(os.environ)
    env["PIP_CONSTRAINT"] = ""  # a host-wide constraints file pins host packages, not these
    return env


def prefix_for(root: Path, cpu: str, work: Path) -> Path:
    """A qemu -L prefix: the root's folders by symlink, and a fake aarch64 /proc/cpuinfo for ``cpu``."""
    import os

    feat, variant, part, rev = CPUINFO[cpu]
    pre = work / f"prefix-{cpu}"
    shutil.rmtree(pre, ignore_errors=True)
    (pre / "proc").mkdir(parents=True)
    for entry in root.iterdir():
        if entry.name not in ("proc", "sys", "dev", "ci"):
            (pre / entry.name).symlink_to(entry)
    cpus = "".join(f"processor\t: {i}\nBogoMIPS\t: 108.00\nFeatures\t: {feat}\nCPU implementer\t: 0x41\n"
                   f"CPU architecture: 8\nCPU variant\t: {variant}\nCPU part\t: {part}\nCPU revision\t: {rev}\n\n"
                   for i in range(os.cpu_count() or 1))
    (pre / "proc" / "cpuinfo").write_text(cpus)
    return pre


def count(plugin: Path, prefix: Path, cpu: str, deps: Path, args: list[str], tmp: Path) -> int:
    """Instructions the guest executes for ``python bench/insn_loop.py ARGS``."""
    out = Path(tempfile.mkstemp(dir=tmp, suffix=".count")[1])
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp), "LANG": "C.UTF-8", "PYTHONHASHSEED": "0",
           "PYTHONPATH": str(deps), "PYTHONDONTWRITEBYTECODE": "1", "OPENBLAS_NUM_THREADS": "1",
           "OMP_NUM_THREADS": "1", "TF_CPP_MIN_LOG_LEVEL": "0"}
    cmd = [QEMU, "-L", str(prefix), "-cpu", cpu, "-plugin", f"{plugin},outfile={out}",
           str(prefix / "usr" / "bin" / "python3"), str(REPO / "bench" / "insn_loop.py"), *args]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
    text = out.read_text().strip()
    out.unlink()
    if r.returncode != 0 or not text:
        raise SystemExit(f"failed ({r.returncode}): {' '.join(cmd)}\n{r.stderr[-3000:]}")
    if "Error in cpuinfo" in r.stderr:
        raise SystemExit(f"'Error in cpuinfo' under {cpu}: the fake /proc/cpuinfo was not seen\n{r.stderr[-2000:]}")
    return int(text)


def variants(bundles: list[str], published: bool = True) -> dict[str, list[str]]:
    out = {b: ["ours", str(REPO / b)] for b in bundles}
    for mode, files in PUBLISHED.items() if published else ():
        paths = [REFERENCE / f for f in files]
        if all(p.is_file() for p in paths):
            out[f"published DTLN loop, {mode} ({' + '.join(files)})"] = ["published", *map(str, paths)]
        else:
            print(f"published {mode}: not counted, missing {[str(p) for p in paths if not p.is_file()]}",
                  file=sys.stderr)
    return out


def _kept(args: argparse.Namespace, counts: list[dict], settings: dict) -> list[dict]:
    """With --update: the rows of the existing result that were not counted again (same settings only)."""
    path = REPO / "bench" / "results" / f"{args.output}.json"
    if not args.update or not path.is_file():
        return []
    old = json.loads(path.read_text())
    if old.get("settings") != settings:
        raise SystemExit(f"--update: {path} was counted with other settings ({old.get('settings')}); count all again")
    new = {(c["cpu"], c["what"]) for c in counts}
    return [c for c in old["counts"] if (c["cpu"], c["what"]) not in new]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cpus", nargs="+", default=["cortex-a72", "cortex-a76"], choices=sorted(CPUINFO))
    p.add_argument("--blocks", nargs=2, type=int, default=[50, 250], metavar=("SHORT", "LONG"),
                   help="blocks in the two runs per variant (default: 50 250)")
    p.add_argument("--bundles", nargs="*", default=None, help="bundle folders (default: pretrained_model/*/*)")
    p.add_argument("--root", type=Path, default=DEFAULT_ROOT, help=f"arm64 root (default: {DEFAULT_ROOT})")
    p.add_argument("--plugin-header", type=Path, default=None, help=f"qemu-plugin.h (default: {HEADER_GLOB})")
    p.add_argument("--jobs", type=int, default=2, help="qemu processes at a time (default: 2)")
    p.add_argument("--output", default="instructions", help="results/NAME.json and .md (default: instructions)")
    p.add_argument("--update", action="store_true",
                   help="keep the other rows of results/NAME.json (same settings required); with --bundles: count "
                        "only those, not the published loop")
    args = p.parse_args()
    short, long_ = sorted(args.blocks)
    if short < 1 or long_ - short < 50:
        p.error(f"--blocks: need 1 <= SHORT and LONG - SHORT >= 50, got {args.blocks}")
    if not Path(QEMU).is_file():
        skip(f"{QEMU} not found (apt-get install qemu-user; the static build cannot load plugins)")
    header = args.plugin_header or next(iter(sorted(Path("/").glob(HEADER_GLOB.lstrip("/")))), None)
    if header is None or not header.is_file():
        skip("qemu-plugin.h not found: with deb-src enabled, `apt-get source --download-only qemu` and unpack "
             "include/qemu/qemu-plugin.h from its orig tarball (same version as qemu-aarch64), then --plugin-header")
    python = args.root / "usr" / "bin" / "python3"
    if not python.exists():
        skip(f"no arm64 root at {args.root}: `sudo bash .ci/aarch64` builds and caches it")
    py = re.search(r"python3\.(\d+)", str(python.resolve())).group(0)[len("python"):]
    work = WORK / "qemu"
    work.mkdir(parents=True, exist_ok=True)
    plugin = build_plugin(header, work)
    deps, versions = arm_deps(work, py)
    bundles = args.bundles if args.bundles is not None else sorted(
        str(m.parent.relative_to(REPO)) for m in REPO.glob("pretrained_model/*/*/manifest.json"))
    todo = variants(bundles, published=args.bundles is None)
    qemu_version = _run([QEMU, "--version"]).splitlines()[0]
    api = re.search(r"#define QEMU_PLUGIN_VERSION (\d+)", header.read_text()).group(1)
    counts = []
    with tempfile.TemporaryDirectory() as tmp, ThreadPoolExecutor(args.jobs) as pool:
        for cpu in args.cpus:
            prefix = prefix_for(args.root, cpu, work)
            jobs = {(name, n): pool.submit(count, plugin, prefix, cpu, deps, ["--blocks", str(n), *a], Path(tmp))
                    for name, a in todo.items() for n in (short, long_)}
            for name in todo:
                a, b = jobs[(name, short)].result(), jobs[(name, long_)].result()
                per_block = (b - a) / (long_ - short)
                counts.append({"cpu": cpu, "what": name, "insns_short": a, "insns_long": b,
                             "minsn_per_block": round(per_block / 1e6, 3)})
                print(f"{cpu} {name}: {per_block / 1e6:.3f} M instructions per block", file=sys.stderr, flush=True)
    settings = {"blocks": [short, long_], "method": "(count(LONG) - count(SHORT)) / (LONG - SHORT)",
                "loop": "bench/insn_loop.py: ours = StreamingDenoiser.process() one 128-sample block per "
                        "call; published = the published DTLN tflite loop; one thread, XNNPACK on",
                "qemu": qemu_version, "plugin": f"bench/qemu/insn_count.c, plugin API {api}",
                "arm64 root": f"{ROOT_KEY} (Debian bookworm, Python {py})", "arm64 wheels": versions}
    result = {
        "title": "Instructions per 8 ms block, whole loop (Python + numpy + interpreter), emulated ARM CPUs",
        "settings": settings,
        "counts": _kept(args, counts, settings) + counts,
        "prediction": None,
        "notes": NOTES,
    }
    result["counts"].sort(key=lambda c: (c["cpu"], c["what"].startswith("published"), c["what"]))
    result["prediction"] = predict(result["counts"])
    result["markdown"] = table_markdown(result)
    write_result(args.output, result)
    (REPO / "bench" / "results" / f"{args.output}.md").write_text(result["markdown"])
    print(result["markdown"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
