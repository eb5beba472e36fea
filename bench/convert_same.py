"""Bit for bit: bundles this checkout converts against those an earlier commit converts, same weights and audio.

For each family and mode, ``python -m convert`` runs in a ``git archive`` export of ``--ref`` and in this
checkout with the same ``--weights``, ``--verify-audio`` and ``--calib-audio``. Every model file
(``.tflite``, ``.npy``) must be byte-identical, the manifests equal but for the producer and the
conversion time, and both bundles' outputs on ``examples/p232_013_noisy.wav`` equal bit for bit. Then every
shipped bundle is run by both commits' ``edge`` on the example: outputs equal bit for bit. Exits 1 on any
difference; writes ``results/convert_same.json``. A refactoring of ``convert/`` or ``edge/`` runs this once.

    python bench/convert_same.py                       # all families and modes against a07fc71 (~25 min here)
    python bench/convert_same.py --families dtln --modes none int8
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from common import EXAMPLE, REPO, WORK, write_result

MODES = ("none", "float16", "dynamic", "int8", "int16x8")
WEIGHTS = {("dtln", "int8"): "pretrained_model/dtln-16k-int8/dtln_weights.h5",
           "dtln": "pretrained_model/dtln-16k/dtln_weights.h5",
           "poconet": "pretrained_model/poconet-16k/poconet_weights.h5"}
"""The shipped weights each bundle is converted from (repository paths, read from the --ref export)."""


def export(ref: str, into: Path) -> Path:
    """The tree of commit ``ref`` as plain files (no .git): ``python -m convert`` there runs that commit's code."""
    if (into / "convert").is_dir():
        return into
    into.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "-C", str(REPO), "archive", ref], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def convert(tree: Path, family: str, mode: str, weights: Path, out: Path) -> float:
    """Run ``python -m convert`` of ``tree`` (its own ``convert`` and ``edge`` first on the path); seconds."""
    probe = subprocess.run([sys.executable, "-c", "import convert; print(convert.__file__)"], cwd=tree,
                           check=True, capture_output=True, text=True).stdout.strip()
    if not Path(probe).resolve().is_relative_to(tree.resolve()):
        sys.exit(f"convert_same.py: in {tree} python imports convert from {probe}, not from that tree")
    cmd = [sys.executable, "-m", "convert", "--family", family, "--quantize", mode, "--weights", str(weights),
           "--verify-audio", str(EXAMPLE), "--calib-audio", str(EXAMPLE), "--output", str(out), "--force", "-q"]
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=tree, check=True, stdout=subprocess.DEVNULL)
    return round(time.perf_counter() - t0, 1)


def _comparable(manifest: dict) -> dict:
    m = {k: v for k, v in manifest.items() if k != "producer"}
    m["verification"] = {k: v for k, v in m["verification"].items() if k != "seconds_to_convert"}
    return m


def compare(a: Path, b: Path) -> dict:
    """Files byte for byte, manifests without the producer and timing, outputs bit for bit."""
    import numpy as np

    import edge
    from edge.audio import read_audio, to_mono_rate

    names = sorted({p.name for p in a.iterdir()} | {p.name for p in b.iterdir()})
    files = {n: (a / n).is_file() and (b / n).is_file() and (a / n).read_bytes() == (b / n).read_bytes()
             for n in names if n != "manifest.json"}
    ma, mb = (json.loads((p / "manifest.json").read_text()) for p in (a, b))
    ba, bb = edge.load_bundle(a), edge.load_bundle(b)
    x, rate, _ = read_audio(str(EXAMPLE))
    x = to_mono_rate(x, rate, ba.sample_rate)
    ya, yb = edge.denoise(x, ba), edge.denoise(x, bb)
    return {"files_identical": files, "manifest_equal": _comparable(ma) == _comparable(mb),
            "output_equal": bool(ya.dtype == yb.dtype and np.array_equal(ya, yb)),
            "output_max_abs_diff": float(np.max(np.abs(ya.astype(np.float64) - yb))) if len(ya) == len(yb) else None}


_DENOISE = """
import sys, numpy as np, edge
from edge.audio import read_audio, to_mono_rate
b = edge.load_bundle(sys.argv[1])
x, rate, _ = read_audio(sys.argv[2])
np.save(sys.argv[3], edge.denoise(to_mono_rate(x, rate, b.sample_rate), b))
"""


def shipped_outputs(ref_tree: Path, work: Path) -> dict[str, bool]:
    """Every shipped bundle (``pretrained_model/*/*``) run by --ref's ``edge`` and by this checkout's on the
    example: bundle -> outputs equal bit for bit (the runtime's half of "unchanged")."""
    import numpy as np

    out = {}
    for manifest in sorted((REPO / "pretrained_model").glob("*/*/manifest.json")):
        name = str(manifest.parent.relative_to(REPO))
        ys = []
        for label, tree in (("ref", ref_tree), ("new", REPO)):
            npy = work / f"{label}-{name.replace('/', '-')}.npy"
            subprocess.run([sys.executable, "-c", _DENOISE, str(manifest.parent), str(EXAMPLE), str(npy)], cwd=tree,
                           check=True)
            ys.append(np.load(npy))
        out[name] = bool(ys[0].dtype == ys[1].dtype and np.array_equal(ys[0], ys[1]))
        print(f"shipped {name}: {'same' if out[name] else 'DIFFERENT'}", file=sys.stderr, flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ref", default="a07fc71", help="commit to compare against (default: a07fc71)")
    p.add_argument("--families", nargs="+", choices=("dtln", "poconet"), default=["dtln", "poconet"])
    p.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    p.add_argument("--work", type=Path, default=WORK / "convert_same",
                   help="export and bundles (default: $EDGE_BENCH_WORK/convert_same); --ref's bundles are reused")
    p.add_argument("--side", choices=("both", "ref"), default="both",
                   help="ref: only convert with --ref (to run ahead while the new code is being written)")
    args = p.parse_args(argv)
    ref_tree = export(args.ref, args.work / f"tree-{args.ref}")
    rows, ok = [], True
    for family in args.families:
        for mode in args.modes:
            weights = ref_tree / WEIGHTS.get((family, mode), WEIGHTS[family])
            ref_out = args.work / args.ref / f"{family}-{mode}"
            row = {"family": family, "mode": mode, "weights": str(weights.relative_to(ref_tree))}
            if not (ref_out / "manifest.json").is_file():
                row["ref_seconds"] = convert(ref_tree, family, mode, weights, ref_out)
            if args.side == "ref":
                continue
            new_out = args.work / "new" / f"{family}-{mode}"
            row["new_seconds"] = convert(REPO, family, mode, weights, new_out)
            row.update(compare(ref_out, new_out))
            same = all(row["files_identical"].values()) and row["manifest_equal"] and row["output_equal"]
            ok &= same
            print(f"{family} {mode}: {'same' if same else 'DIFFERENT'} {row}", file=sys.stderr, flush=True)
            rows.append(row)
    if args.side == "ref":
        return 0
    shipped = shipped_outputs(ref_tree, args.work)
    ok &= all(shipped.values())
    variants = {f"{r['family']} {r['mode']}": {
        "model files identical": all(r["files_identical"].values()), "manifest equal": r["manifest_equal"],
        "output equal": r["output_equal"], "seconds ref/new": f"{r.get('ref_seconds', '-')}/{r['new_seconds']}"}
        for r in rows}
    variants.update({f"shipped {k}": {"output equal": v} for k, v in shipped.items()})
    write_result("convert_same", {
        "title": f"Converter and runtime against {args.ref}, bit for bit", "ref": args.ref, "all_same": ok,
        "goals": [{"what": "every bundle and every shipped bundle's output unchanged", "value": None,
                   "goal": "all identical", "met": ok}],
        "variants": variants, "bundles": rows, "shipped_outputs": shipped})
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
