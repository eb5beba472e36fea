"""Choose a full-int8 checkpoint on dev audio: each checkpoint's real int8 graph, scored on the generalisation dev set.

    python bench/int8_select.py --gendev DIR --weights RUN/epoch-*.h5 [--gate 25] [--min-dev-fidelity DB]
                                [--result NAME]

The QAT runs' own dev figures come from the training graph's int8 *simulation*, which ranked checkpoints
wrongly near the converter's gate (docs/generalisation.md, session 16). This scores the real thing. For each
checkpoint (``NAME=H5``, or a path: its file name is the name) the int8 bundle and a float32 bundle with the int8
mode's graph changes, as ``bench/int8_stages.py`` makes them (tolerance off; kept under the bench work folder by
name and checkpoint hash, so a rerun only scores), then:

- ``gate_db``: the int8 bundle's verification SNR against the Keras float reference on the converter's int8
  verification audio (``convert.build.verification_files``: the VBD-23 noisy files pooled where the shared data
  has them, else the example recording), the figure ``python -m convert.release`` refuses below 25 dB;
- ``dev_fidelity_db``: the int8 output against the float32 output, energy pooled over the dev set's noisy files
  (``convert.release.pooled_snr``, the release's VBD-23 figure on dev audio instead);
- the int8 output's PESQ-WB / STOI / SI-SDR on the dev set (``edge.evaluate``, as ``edge-denoise eval``).

The table ranks by dev PESQ-WB the checkpoints the release would take (``gate_db`` >= ``--gate``) and, with
``--min-dev-fidelity``, at least that close to their float32 on the dev set; then the rest. The dev set is
harder on int8 than VBD-23 (the shipped ``dtln-finetuned-int8``: 21.8 dB pooled over it, 25.9 dB over VBD-23),
so its fidelity is a figure to compare checkpoints by, not the converter's 25 dB. VBD-23 ranks nothing: it enters
only through the gate, issue 17's pass/fail bar for full int8 (>= 25 dB against float32 pooled over it); the
ranking is the dev set's. Writes bench/results/NAME.json (default int8_select).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

from common import REPO, WORK, skip, write_result
from int8_stages import int8_and_float32


def score(name: str, weights: str, gendev: Path) -> dict:
    import edge
    from convert.release import pooled_snr
    from edge.evaluate import evaluate, pairs
    from edge.options import Options

    # keyed by content: a rerun with other weights under the same name converts again
    out = WORK / "int8_select" / f"{name}-{hashlib.sha256(Path(weights).read_bytes()).hexdigest()[:12]}"
    int8_and_float32(name, weights, out)
    gate = json.loads((out / "int8" / "manifest.json").read_text())["verification"]["snr_db"]
    noisy = sorted((gendev / "noisy").glob("*.wav"))
    fidelity = pooled_snr({"none": str(out / "float32"), "int8": str(out / "int8")}, noisy)["int8"]
    r = evaluate(edge.load_bundle(out / "int8"), Options(), pairs(str(gendev / "clean"), str(gendev / "noisy")))
    means = {k: round(float(r["means"][k]), 4) for k in ("pesq_wb", "stoi", "si_sdr")}
    return {"weights": _shown(weights), "gate_db": gate, "dev_fidelity_db": fidelity, **means}


def _shown(path: str) -> str:
    """The path relative to the repository when it is inside it, else as given."""
    p = Path(path).resolve()
    return str(p.relative_to(REPO)) if p.is_relative_to(REPO) else path


def table(rows: dict[str, dict], gate: float, min_dev: float | None) -> str:
    def ok(r: dict) -> bool:
        return r["gate_db"] >= gate and (min_dev is None or r["dev_fidelity_db"] >= min_dev)

    order = sorted(rows, key=lambda n: (not ok(rows[n]), -rows[n]["pesq_wb"]))
    lines = ["| checkpoint | gate dB | dev fidelity dB | dev int8 PESQ-WB / STOI / SI-SDR | passes |",
             "|---|---|---|---|---|"]
    for n in order:
        r = rows[n]
        lines.append(f"| {n} | {r['gate_db']:.1f} | {r['dev_fidelity_db']:.1f} | {r['pesq_wb']:.3f} / "
                     f"{r['stoi']:.3f} / {r['si_sdr']:.2f} | {'yes' if ok(r) else 'no'} |")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gendev", required=True, type=Path, help="python -m convert.devset --generalisation output")
    p.add_argument("--weights", nargs="+", required=True, metavar="[NAME=]H5")
    p.add_argument("--gate", type=float, default=25.0,
                   help="the converter's int8 gate (default 25 dB, the int8 mode's)")
    p.add_argument("--min-dev-fidelity", type=float, metavar="DB",
                   help="also require this SNR against float32 pooled over the dev set (default: not required)")
    p.add_argument("--result", default="int8_select", help="bench/results/NAME.json (default: int8_select)")
    args = p.parse_args()
    if not (args.gendev / "clean").is_dir() or not any((args.gendev / "noisy").glob("*.wav")):
        skip(f"{args.gendev}: no clean/ and noisy/ WAV pairs (python -m convert.devset --generalisation)")
    rows = {}
    for item in args.weights:
        name, sep, weights = item.partition("=")
        if not sep:
            name, weights = Path(item).stem, item
        if not Path(weights).is_file():
            raise SystemExit(f"{weights}: no such checkpoint")
        rows[name] = score(name, weights, args.gendev)
        print(name, rows[name], file=sys.stderr, flush=True)
    md = table(rows, args.gate, args.min_dev_fidelity)
    print(md)
    write_result(args.result, {
        "title": "Full-int8 checkpoints scored on the generalisation dev set through the real int8 graph",
        "settings": {"gendev_files": len(list((args.gendev / "noisy").glob("*.wav"))), "gate_db": args.gate,
                     "min_dev_fidelity_db": args.min_dev_fidelity},
        "results": rows, "markdown": md})
    return 0


if __name__ == "__main__":
    sys.exit(main())
