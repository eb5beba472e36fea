"""Where full int8 loses: each DTLN stage int8 alone, against float32 graphs with the same graph changes.

    python bench/int8_stages.py --weights NAME=WEIGHTS.h5 [NAME=WEIGHTS.h5 ...] [--clip-gates 8] [--result NAME]

For each checkpoint: converts it to full int8 with the converter's tolerance switched off (a refused
bundle is what is being measured) and to float32 with the *int8 mode's* graph changes (split states,
cell clip, frame RMS outside, stage 2's bases outside), so the two differ only by integer arithmetic.
Then swaps one submodel at a time: ``mask`` (stage 1) int8 with ``frame`` float32, and the other way
round. Each is scored as the converter's release scores int8 (``convert.release.pooled_snr``): SNR of the
output against the float32 output, pooled over the 23 noisy VBD-23 files. ``--clip-gates`` also clips the LSTM gate
pre-activations in both graphs (exact for a model trained with it, a change for one that was not).
Bundles are kept under the bench work folder; writes bench/results/int8_stages.json (or --result).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
from pathlib import Path

from common import REPO, SHARED, WORK, skip, write_result

VBD = SHARED / "data" / "test" / "vbd_test" / "noisy"


def int8_and_float32(name: str, weights: str, out: Path, clip_gates: float | None = None) -> None:
    """out/int8 and out/float32 (same graph options), converted unless already there."""
    from convert.quiet import import_tensorflow

    import_tensorflow()
    from convert import build, data
    from convert.families import family
    from convert.families.dtln_graphs import stream_options_for

    files = [str(p) for p in build.verification_files("int8")]  # the converter's int8 gate audio
    names = [os.path.basename(f) for f in files]
    made = out / "int8" / "manifest.json"
    if made.exists() and (out / "float32" / "manifest.json").exists() and \
            json.loads(made.read_text())["verification"]["audio"] == names:
        return
    w = family("dtln").load_weights(weights)
    opts = stream_options_for("int8", w.config)
    if clip_gates is not None:
        opts = dataclasses.replace(opts, clip_gates=clip_gates)
    common = dict(verify_audio=data.load_files(files, 16000), verify_names=names,
                  force=True, opts=opts, tolerance_db=-1e9, source=os.path.basename(weights))
    print(f"{name}: converting int8 and float32 with {opts}", file=sys.stderr, flush=True)
    build.convert(w, "int8", out / "int8", calib_audio=data.dev_mixes(), **common)
    build.convert(w, "none", out / "float32", **common)


def _hybrid(out: Path, int8_submodel: str) -> Path:
    """The int8 bundle with every submodel but ``int8_submodel`` taken from the float32 one."""
    dst = out / f"{int8_submodel}-int8-only"
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(out / "int8", dst)
    m = json.loads((dst / "manifest.json").read_text())
    f = json.loads((out / "float32" / "manifest.json").read_text())
    for i, sm in enumerate(m["submodels"]):
        if sm["name"] != int8_submodel:
            m["submodels"][i] = next(x for x in f["submodels"] if x["name"] == sm["name"])
            shutil.copy(out / "float32" / sm["file"], dst / sm["file"])
    m["runtimes"] = sorted(set(m["runtimes"]) & set(f["runtimes"]))
    (dst / "manifest.json").write_text(json.dumps(m, indent=1))
    return dst


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weights", nargs="+", required=True, metavar="NAME=H5")
    p.add_argument("--clip-gates", type=float)
    p.add_argument("--result", default="int8_stages", help="bench/results/NAME.json (default: int8_stages)")
    args = p.parse_args()
    from convert.release import pooled_snr  # the release's own figure: energy pooled over the files

    files = sorted(VBD.glob("*.wav"))
    if not files:
        skip(f"VBD-23 is missing ({VBD})")
    rows = {}
    for item in args.weights:
        name, _, weights = item.partition("=")
        out = WORK / "int8_stages" / (name + (f"-clip{args.clip_gates:g}" if args.clip_gates else ""))
        int8_and_float32(name, weights, out, args.clip_gates)
        snr = pooled_snr({"none": str(out / "float32"), "full_int8_db": str(out / "int8"),
                          "mask_int8_only_db": str(_hybrid(out, "mask")),
                          "frame_int8_only_db": str(_hybrid(out, "frame"))}, files)
        rows[name] = {"weights": os.path.relpath(weights, REPO), **snr}
        print(name, rows[name], flush=True)
    write_result(args.result, {
        "title": "Full int8 of DTLN: SNR against float32 with the same graph changes, pooled over VBD-23",
        "settings": {"clip_gates": args.clip_gates, "files": len(files),
                     "graph": "the int8 mode's graph changes in both (dtln_graphs.stream_options_for)"},
        "results": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
