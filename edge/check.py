"""``edge-denoise check``: each bundle's golden input run on this device, compared with its reference output.

The converter stores a short input and the bundle's own output on it (``golden`` in the manifest, both
files covered by their sha256). Loading a bundle is not proof that an interpreter computes it right
(tflite-runtime 2.14 loads PoCoNet's int16x8 graph and computes it at 5 dB SNR); running it is.

Exit codes: 0 every bundle computes within its mode's tolerance; 1 a bundle computes wrongly here (one
line each on stderr, naming the bundle and the figures); 2 a bundle cannot be loaded or its golden pair
is corrupt; 3 nothing wrong found, but a bundle carries no golden pair and could not be checked.
A bundle whose manifest does not list this interpreter is reported as refused: the runtime will not
load it, so it cannot compute wrongly here.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from .bundle import MANIFEST, Bundle, _read_checked, _require, load_bundle, runtime_listed
from .errors import AudioError, BundleError, EdgeError
from .options import Options
from .stream import denoise

GOLDEN = "golden"
"""Manifest key of the golden pair."""
PASS, WRONG, ERROR, UNCHECKED = 0, 1, 2, 3
"""Exit codes; the worst status decides (WRONG before ERROR before UNCHECKED)."""
_RANK = {"fail": WRONG, "error": ERROR, "unchecked": UNCHECKED, "pass": PASS, "refused": PASS}
log = logging.getLogger("edge.check")


@dataclass(frozen=True)
class GoldenPair:
    """A bundle's golden input and the reference output the converter computed from it."""

    input: np.ndarray
    """float32 mono at the bundle's rate, shape (samples,)."""
    output: np.ndarray
    """float32, shape (samples,): ``edge.denoise(input, bundle)`` on the producing machine."""
    tolerance_snr_db: float
    """Minimum SNR (dB) of this device's output against ``output``: the mode's verification tolerance."""
    reference: str
    """Interpreter (and XNNPACK setting) that computed ``output``."""


def _golden_array(path: str, d: Any, where: str) -> np.ndarray:
    if not isinstance(d, Mapping):
        raise BundleError(f"{where}: should be an object with file, sha256, shape, dtype; got {d!r}")
    fname = _require(d, "file", str, where)
    content = _read_checked(path, fname, _require(d, "sha256", str, where), where)
    try:
        a = np.load(BytesIO(content), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise BundleError(f"{os.path.join(path, fname)}: not a numpy .npy array ({exc})") from None
    shape = tuple(int(s) for s in _require(d, "shape", list, where))
    dtype = _require(d, "dtype", str, where)
    if a.shape != shape or a.dtype.name != dtype or a.ndim != 1 or dtype not in ("int16", "float32"):
        raise BundleError(f"{os.path.join(path, fname)}: holds {a.dtype.name}{list(a.shape)}, manifest says "
                          f"{dtype}{list(shape)} (expected 1-D int16 or float32)")
    return a.astype(np.float32) / 32768.0 if dtype == "int16" else a


def load_golden(bundle: Bundle) -> GoldenPair | None:
    """The bundle's golden pair, files read and checksums checked; None when the manifest has none."""
    g = bundle.manifest.get(GOLDEN)
    if g is None:
        return None
    where = f"{os.path.join(bundle.path, MANIFEST)} {GOLDEN}"
    if not isinstance(g, Mapping):
        raise BundleError(f"{where}: should be an object, got {type(g).__name__}")
    x = _golden_array(bundle.path, _require(g, "input", dict, where), f"{where}.input")
    y = _golden_array(bundle.path, _require(g, "output", dict, where), f"{where}.output")
    if len(x) != len(y) or not len(x):
        raise BundleError(f"{where}: input and output should have the same non-zero length, got {len(x)} and "
                          f"{len(y)} samples")
    tol = _require(g, "tolerance_snr_db", (int, float), where)
    return GoldenPair(x, y, float(tol), str(g.get("reference", "unknown")))


def compare(ref: np.ndarray, test: np.ndarray) -> tuple[float, float]:
    """(SNR in dB of ``test`` against ``ref``, inf when equal; max abs sample error)."""
    err = ref.astype(np.float64) - test
    e = float(np.sum(err * err))
    s = float(np.sum(np.square(ref, dtype=np.float64)))
    snr = float("inf") if e == 0.0 else 10.0 * np.log10(max(s, 1e-30) / e)
    return snr, float(np.max(np.abs(err)))


def xnnpack_facts(bundle: Bundle, options: Options) -> dict[str, Any]:
    """Whether XNNPACK runs this bundle here, and why not when it does not (from the delegated graph)."""
    from .interpreter import first_native_output, make_interpreter

    delegated = other = 0
    for sm in bundle.submodels:
        it = make_interpreter(sm.content, options.num_threads, options.xnnpack)
        ops = getattr(it, "_get_ops_details", None)
        if ops is None:
            return {"requested": options.xnnpack, "on": None, "why": "this interpreter does not list its nodes"}
        names = [d["op_name"] for d in ops()]
        delegated += names.count("DELEGATE")
        other += len(names) - names.count("DELEGATE")
    native = first_native_output()
    cpuinfo = [line for line in native if "cpuinfo" in line.lower()]
    if not options.xnnpack:
        why = "not requested (--no-xnnpack): builtin kernels only"
    elif delegated:
        why = f"{delegated} delegate partition(s) in a graph of {other} node(s)"
    elif cpuinfo:
        why = f"the interpreter's CPU detection failed ({cpuinfo[0]!r}), so XNNPACK took no node"
    else:
        why = (f"the interpreter delegated no node: XNNPACK has no kernel for the ops or types of this "
               f"{bundle.quantization} graph, or this build applies no default delegate")
    return {"requested": options.xnnpack, "on": bool(delegated), "delegate_partitions": delegated,
            "graph_nodes": other, "why": why, "cpuinfo_error": cpuinfo or None}


def _refusal(path: Path) -> tuple[str, str] | None:
    """(bundle name, why) when the runtime would refuse the bundle here (its manifest does not list this
    interpreter), else None."""
    from .interpreter import interpreter_package

    try:
        with open(path / MANIFEST, encoding="utf-8") as f:
            m = json.load(f)
        runtimes, name = m.get("runtimes"), str(m.get("name", path.name))
    except (OSError, ValueError, AttributeError):
        return None  # load_bundle says what is wrong with it
    pkg = interpreter_package()
    if runtimes and isinstance(runtimes, list) and not runtime_listed(runtimes, pkg.name, pkg.version):
        return name, f"its manifest lists {', '.join(map(str, runtimes))}, not {pkg.name} {pkg.version}"
    return None


def check_bundle(path: str | os.PathLike[str], options: Options | None = None,
                 bundle: Bundle | None = None) -> dict[str, Any]:
    """Run one bundle's golden input here. Returns a result with ``status``: pass, fail, unchecked
    (no golden pair), refused (the manifest does not list this interpreter) or error (cannot load)."""
    options = options or Options()
    path = Path(path)
    r: dict[str, Any] = {"path": str(path), "name": path.name}
    refused = _refusal(path) if bundle is None else None
    if refused:
        return {**r, "name": refused[0], "status": "refused", "message": f"refused here: {refused[1]}"}
    try:
        bundle = bundle or load_bundle(path)
        r.update(name=bundle.name, quantization=bundle.quantization, sha256=bundle.sha256)
        golden = load_golden(bundle)
        if golden is None:
            return {**r, "status": "unchecked", "message": "no golden pair in its manifest: cannot check it "
                    "(re-release it, or add one: python -m convert.golden --add DIR)"}
        y = denoise(golden.input, bundle, options)
        r["xnnpack"] = xnnpack_facts(bundle, options)
    except (BundleError, AudioError, ValueError, RuntimeError) as exc:
        return {**r, "status": "error", "message": str(exc)}
    snr, mae = compare(golden.output, y)
    ok = bool(np.isfinite(y).all() and snr >= golden.tolerance_snr_db)
    return {**r, "status": "pass" if ok else "fail", "snr_db": round(snr, 2) if np.isfinite(snr) else None,
            "max_abs_error": mae, "tolerance_snr_db": golden.tolerance_snr_db, "seconds":
            round(len(y) / bundle.sample_rate, 3), "reference": golden.reference}


def _snr_text(r: Mapping[str, Any]) -> str:
    return "identical" if r["snr_db"] is None else f"SNR {r['snr_db']:.1f} dB"


def failure_line(r: Mapping[str, Any], options: Options) -> str:
    """The one line naming a bundle that computes wrongly here, and the figures."""
    from .interpreter import interpreter_package

    pkg = interpreter_package()
    x = r.get("xnnpack") or {}
    return (f"edge-denoise check: FAIL {r['name']} ({r['path']}) computes wrongly on {pkg.name} {pkg.version}: "
            f"{_snr_text(r)} against its reference output, needs >= {r['tolerance_snr_db']:g} dB; max abs error "
            f"{r['max_abs_error']:.3g}; XNNPACK {'on' if x.get('on') else 'off'}, {options.num_threads} thread(s)")


def result_line(r: Mapping[str, Any]) -> str:
    status = r["status"]
    if status in ("pass", "fail"):
        x = r.get("xnnpack") or {}
        body = (f"{_snr_text(r)} (needs >= {r['tolerance_snr_db']:g}), max abs error {r['max_abs_error']:.2g}, "
                f"XNNPACK {'on' if x.get('on') else 'off'}: {x.get('why', 'unknown')}")
    else:
        body = r["message"]
    return f"{status:9} {r['name']:28} {body}  [{r['path']}]"


def device_lines(facts: Mapping[str, Any]) -> list[str]:
    from .interpreter import first_native_output

    native = [line for line in first_native_output() if line.strip()]
    return [f"device: {facts['machine']}, {facts['cpu_model'] or 'CPU model not shown'}"
            f"{', ' + facts['board'] if facts.get('board') else ''}, {facts['cores_usable']} of {facts['cores']} "
            f"cores; {facts['os']}; Python {facts['python']}, numpy {facts['numpy']}",
            f"interpreter: {facts['interpreter']} {facts['interpreter_version']}, {facts['threads']} thread(s), "
            f"XNNPACK {'requested' if facts['xnnpack'] else 'not requested (--no-xnnpack)'}"
            + (f"; native log at first load: {' | '.join(native)}" if native else "")]


def add_check_option(p: argparse.ArgumentParser, default: bool) -> None:
    """``--check/--no-check`` for commands that load a bundle (serve, live: on; denoise: off)."""
    p.add_argument("--check", action=argparse.BooleanOptionalAction, default=default,
                   help="run the bundle's golden pair first and stop with exit 1 if this device computes it "
                        f"wrongly, as `edge-denoise check` does (default: {'on' if default else 'off'})")


def check_at_start(args: argparse.Namespace, bundle: Bundle, options: Options) -> bool:
    """For serve/live/denoise: False (after printing the one failure line) when the bundle computes wrongly."""
    if not getattr(args, "check", False):
        return True
    r = check_bundle(bundle.path, options, bundle=bundle)
    if r["status"] == "fail":
        print(failure_line(r, options), file=sys.stderr)
        return False
    if r["status"] == "error":
        raise BundleError(f"check: {r['message']}")
    level = logging.WARNING if r["status"] == "unchecked" else logging.INFO
    log.log(level, "check: %s", result_line(r))
    return True


def register(sub) -> None:
    p = sub.add_parser("check", help="run each bundle's golden pair on this device; exit 1 if it computes wrongly",
                       description=__doc__.split("\n\n", 1)[1].replace("\n", " ").strip())
    p.add_argument("--model", "-m", action="append", default=None, metavar="DIR",
                   help="bundle folder; repeat for several (default: every bundle `edge-denoise models` lists)")
    p.add_argument("--json", metavar="FILE", default=None, help="also write device facts and results as JSON "
                                                               "('-' for stdout)")
    p.add_argument("--threads", type=int, default=1, help="interpreter threads per stream (default: 1)")
    p.add_argument("--xnnpack", action=argparse.BooleanOptionalAction, default=True,
                   help="use the XNNPACK delegate (default: on)")
    p.add_argument("--quiet", "-q", action="store_true", help="print failure lines only")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from .models import find_bundles
    from .profile import device_facts

    if args.threads < 1:
        raise EdgeError(f"--threads must be >= 1, got {args.threads}")
    options = Options(num_threads=args.threads, xnnpack=args.xnnpack)
    paths = [Path(m) for m in args.model] if args.model else [f.path for f in find_bundles()]
    if not paths:
        raise BundleError("no bundle to check: pass --model DIR or set EDGE_DENOISE_MODEL")
    facts = device_facts(options)
    results = [check_bundle(p, options) for p in paths]
    out = sys.stdout if args.json != "-" else sys.stderr
    if not args.quiet:
        for line in device_lines(facts) + [result_line(r) for r in results]:
            print(line, file=out)
    for r in results:
        if r["status"] == "fail":
            print(failure_line(r, options), file=sys.stderr)
        elif r["status"] == "error" and args.quiet:
            print(f"edge-denoise check: error: {r['name']}: {r['message']}", file=sys.stderr)
    code = max((_RANK[r["status"]] for r in results), key=lambda c: (c == WRONG, c == ERROR, c == UNCHECKED))
    if args.json:
        from .interpreter import first_native_output

        doc = {"schema": "edge-denoise-check", "schema_version": 1, "exit_code": code, "device": facts,
               "native_log": first_native_output(), "bundles": results}
        if args.json == "-":
            json.dump(doc, sys.stdout, indent=1)
            print()
        else:
            with open(args.json, "w", encoding="utf-8") as f:
                json.dump(doc, f, indent=1)
                f.write("\n")
    return code
