"""Shared by the bench scripts: paths, our bundles of the published DTLN weights, result files."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
SHARED = Path(os.environ.get("EDGE_SHARED", REPO.parent / "shared"))
REFERENCE = SHARED / "reference" / "dtln" / "pretrained_model"
EXAMPLE = REPO / "examples" / "p232_013_noisy.wav"
WORK = Path(os.environ.get("EDGE_BENCH_WORK", "/tmp/edge-bench"))
"""Where converted bundles and generated audio live between runs (not committed)."""
MODES = {"float32": "none", "dynamic": "dynamic"}
"""Bundle suffix -> ``python -m convert --quantize`` mode."""

if str(REPO) not in sys.path:  # run as `python bench/x.py` from a checkout: use this checkout's edge
    sys.path.insert(0, str(REPO))


def skip(message: str) -> None:
    """Leave visibly without a result: an absent optional asset is not a pass."""
    print(f"{Path(sys.argv[0]).name}: SKIPPED: {message}", file=sys.stderr)
    sys.exit(0)


def published_bundles(modes: Sequence[str] = ("float32", "dynamic"), work: Path = WORK) -> dict[str, str]:
    """Our bundles of the published ``model.h5``: suffix -> folder, converted once into ``work``."""
    weights = REFERENCE / "model.h5"
    if not weights.is_file():
        skip(f"the published DTLN weights are not at {weights} (set EDGE_SHARED to the shared folder)")
    out = {}
    for suffix in modes:
        folder = work / f"dtln-{suffix}"
        manifest = folder / "manifest.json"
        if manifest.is_file():
            m = json.loads(manifest.read_text())
            if m.get("quantization") == MODES[suffix] and m.get("model", {}).get("source") == weights.name:
                out[suffix] = str(folder)
                continue
        cmd = [sys.executable, "-m", "convert", "--weights", str(weights), "--quantize", MODES[suffix],
               "--output", str(folder), "--force", "--quiet"]
        print("building", " ".join(cmd), file=sys.stderr, flush=True)
        subprocess.run(cmd, cwd=REPO, check=True, stdout=subprocess.DEVNULL)
        out[suffix] = str(folder)
    return out


AUTO_LEVEL = "+auto-level"
"""Suffix of a quality bench's ``--model NAME=BUNDLE``: run the bundle with ``Options(auto_level=True)``."""


def model_spec(spec: str) -> tuple[str, str, Any]:
    """``NAME=BUNDLE`` or ``NAME=BUNDLE+auto-level`` -> (name, bundle folder, stream options); ValueError otherwise."""
    from edge.options import Options

    name, sep, path = spec.partition("=")
    if not sep or not name or not path:
        raise ValueError(f"--model takes NAME=BUNDLE or NAME=BUNDLE{AUTO_LEVEL}, got {spec!r}")
    auto = path.endswith(AUTO_LEVEL)
    return name, path[: -len(AUTO_LEVEL)] if auto else path, Options(auto_level=auto)


def options_key(options: Any) -> str:
    """The part of a cached score's name that the stream options change ("" for the defaults); with
    ``auto_level``, a digest of ``edge.level``'s constants, so that changing them scores afresh."""
    if not options.auto_level:
        return ""
    import hashlib

    from edge import level

    facts = [level.TARGET_DBFS, level.MAX_BOOST_DB, level.GATE_DBFS, level.RISE_S, level.FALL_S]
    return "-auto-level-" + hashlib.sha256(repr(facts).encode()).hexdigest()[:8]


def summary(values: Sequence[float], digits: int = 6) -> dict[str, float]:
    """median, min, max and count of repeated measurements."""
    return {"median": round(statistics.median(values), digits), "min": round(min(values), digits),
            "max": round(max(values), digits), "n": len(values)}


def command_line() -> str:
    return " ".join(["python", os.path.relpath(sys.argv[0], REPO), *sys.argv[1:]])


def device() -> dict[str, Any]:
    from edge.options import Options
    from edge.profile import device_facts

    return device_facts(Options(num_threads=1))


def portable(value: Any) -> Any:
    """``value`` with this machine's paths made generic, for committed results.

    The interpreter's bin folder goes (``python``, ``edge-denoise`` remain), the checkout becomes
    relative, ``WORK`` becomes ``$EDGE_BENCH_WORK`` and any other temporary folder ``$TMPDIR``.
    """
    if isinstance(value, dict):
        return {k: portable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [portable(v) for v in value]
    if not isinstance(value, str):
        return value
    for path, generic in ((os.path.dirname(sys.executable) + os.sep, ""), (str(REPO) + os.sep, ""),
                          (str(REPO), "."), (str(WORK), "$EDGE_BENCH_WORK"), (tempfile.gettempdir(), "$TMPDIR")):
        value = value.replace(path, generic)
    return value


def write_result(name: str, payload: dict[str, Any]) -> Path:
    """bench/results/NAME.json with the envelope every bench result shares (machine paths made generic)."""
    doc = portable({"bench": name, "schema_version": 1,
                    "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                    "command": command_line(), "device": device(), **payload})
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {os.path.relpath(path, REPO)}", file=sys.stderr)
    return path


def example_hops(seconds: float, hop: int = 128):
    """The example recording at 16 kHz, repeated to ``seconds``, cut into hops of ``hop`` samples."""
    import numpy as np

    from edge.audio import read_audio, to_mono_rate

    x, sr, _ = read_audio(str(EXAMPLE))
    x = to_mono_rate(x, sr, 16000)
    n = int(seconds * 16000) // hop * hop
    audio = np.resize(x, n).astype(np.float32)
    return [audio[i:i + hop] for i in range(0, n, hop)]


def interleaved(dens: dict[str, Any], hops: list, rounds: int, reference: str,
                ) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Whole-loop ms per hop of each streaming denoiser, rounds in alternating order.

    Returns (times, ratios): per name the ms/hop of every round, and its ratio to ``reference``
    taken within the same round (the noise of a shared machine mostly cancels in the ratio).
    """
    import time

    times: dict[str, list[float]] = {m: [] for m in dens}
    ratios: dict[str, list[float]] = {m: [] for m in dens}
    for den in dens.values():  # warm-up
        for h in hops[:200]:
            den.process(h)
    for r in range(rounds):
        this = {}
        for m in (list(dens) if r % 2 == 0 else list(dens)[::-1]):
            den = dens[m]
            den.reset()
            t0 = time.perf_counter()
            for h in hops:
                den.process(h)
            this[m] = (time.perf_counter() - t0) * 1e3 / len(hops)
            times[m].append(this[m])
        for m in dens:
            ratios[m].append(this[m] / this[reference])
        print(f"round {r + 1}: " + "  ".join(f"{m} {this[m]:.4f}" for m in dens), file=sys.stderr)
    return times, ratios
