"""Quality against input level: the same mixes played quieter, each bundle's scores per gain.

    python bench/level.py --model NAME=BUNDLE [--model NAME=BUNDLE ...] [--gendev DIR]
                          [--gains -18 -12 -6 0] [--reference NAME] [--out level]

``--model NAME=BUNDLE+auto-level`` runs the bundle with ``Options(auto_level=True)`` (``edge.level``).

A microphone's gain is the user's choice, and DTLN's first stage sees raw magnitudes: its output depends
on the input level, not only on the speech and noise in it. Each noisy file of VBD-23
(``../shared/data/test/vbd_test``) and, given, the generalisation dev set (``python -m convert.devset
--generalisation``) is scaled by each gain (dB, at most 0: louder would clip some files) before the bundle
and its output scaled back, then scored against the clean reference with ``edge.evaluate.scores`` (the
scorer of ``edge-denoise eval``: PESQ-WB, STOI, SI-SDR; the first and last do not depend on the level of
what they score, so the scaling back only keeps the numbers comparable). Per bundle, set and gain: the
means and the paired difference to the same bundle at 0 dB (mean per file, 95 % bootstrap interval), with
``--reference`` the paired difference of every other bundle to that one at the same gain, and for a bundle run
with ``+auto-level`` its paired difference to the same bundle run without (given as another ``--model``). Scores
are cached per bundle, set and gain under the bench work folder. Writes bench/results/OUT.json and OUT.md.

This is a measurement, not a tuning knob: no gain here is chosen on VBD-23 (the test set) for a shipped
model.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from common import SHARED, WORK, command_line, model_spec, options_key, portable, skip, write_result
from generalisation import METRICS, cached, output_key, paired

import edge
from edge.evaluate import pairs, read_pair, scores
from edge.options import Options


def load_set(root: Path) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(file name, clean, noisy) of every pair under ``root``, cut to the shorter side."""
    return [(n.name, *read_pair(c, n)) for c, n in pairs(str(root / "clean"), str(root / "noisy"))]


def score_gain(bundle, audio: list, gain_db: float, options: Options | None = None) -> list[dict]:
    """Per-file scores of the bundle's output for the noisy side scaled by ``gain_db``, scaled back."""
    k = np.float32(10 ** (gain_db / 20))
    rows = []
    for name, clean, noisy in audio:
        est = edge.denoise(noisy * k, bundle, options) / k
        rows.append({"file": name, **{m: round(v, 4) for m, v in scores(clean, est).items()}})
    return rows


def _interval(p: dict) -> str:
    return f"{p['mean']:+.3f} [{p['ci95'][0]:+.3f}, {p['ci95'][1]:+.3f}]"


def markdown(res: dict) -> str:
    """The tables: per set, each bundle's scores per gain and the paired differences."""
    gains = res["gains_db"]
    lines = []
    for set_name, per_model in res["sets"].items():
        lines += [f"### {set_name}", "", "PESQ-WB / STOI / SI-SDR dB per input gain; below, PESQ-WB against the "
                  "same bundle at 0 dB, then PESQ-WB and SI-SDR of each bundle run with the automatic level against "
                  "the same bundle without it, and against the reference, at the same gain (mean per file [95 % "
                  "interval]).", "",
                  "| model | " + " | ".join(f"{g:+g} dB" for g in gains) + " |",
                  "|---" * (len(gains) + 1) + "|"]
        for name, r in per_model.items():
            cells = [" / ".join(f"{r['means'][str(g)][m]:.3f}" if m != "si_sdr" else f"{r['means'][str(g)][m]:.2f}"
                                for m in METRICS) for g in gains]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        for name, r in per_model.items():
            cells = [_interval(r["vs_0db"][str(g)]["pesq_wb"]) if str(g) in r["vs_0db"] else "" for g in gains]
            lines.append(f"| {name}, vs 0 dB | " + " | ".join(cells) + " |")
        for name, r in per_model.items():
            for m in ("pesq_wb", "si_sdr"):
                if "vs_plain" in r:
                    cells = [_interval(r["vs_plain"][str(g)][m]) for g in gains]
                    lines.append(f"| {name} - {r['vs_plain']['name']}, {m} | " + " | ".join(cells) + " |")
        for name, r in per_model.items():
            for m in ("pesq_wb", "si_sdr"):
                if "vs_reference" in r and r.get("vs_plain", {}).get("name") != res["reference"]:  # not twice
                    cells = [_interval(r["vs_reference"][str(g)][m]) for g in gains]
                    lines.append(f"| {name} - {res['reference']}, {m} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", action="append", required=True, metavar="NAME=BUNDLE")
    p.add_argument("--gendev", type=Path, default=None, help="generalisation dev set (clean/, noisy/)")
    p.add_argument("--gains", type=float, nargs="+", default=[-18.0, -12.0, -6.0, 0.0], metavar="DB")
    p.add_argument("--reference", metavar="NAME", default=None,
                   help="also pair every other --model against this one at each gain")
    p.add_argument("--out", default="level", help="results name: bench/results/OUT.json and OUT.md")
    args = p.parse_args()
    if any(g > 0 for g in args.gains):
        p.error(f"--gains must be <= 0 dB (louder would clip some inputs): {args.gains}")
    gains = sorted(set(args.gains) | {0.0})
    models, options = {}, {}
    for spec in args.model:
        try:
            name, path, options[name] = model_spec(spec)
        except ValueError as exc:
            p.error(str(exc))
        models[name] = edge.load_bundle(path)
    if args.reference is not None and args.reference not in models:
        p.error(f"--reference {args.reference}: not one of the --model names {sorted(models)}")
    sets = {"VBD-23": SHARED / "data" / "test" / "vbd_test"}
    if args.gendev is not None:
        sets["generalisation set"] = args.gendev
    for s, root in list(sets.items()):
        if not (root / "noisy").is_dir():
            if s == "VBD-23":
                skip(f"no VBD-23 pairs at {root}")
            p.error(f"{root}: no noisy/ folder")
    res = {"title": "Quality against input level (noisy input scaled before the bundle, output scaled back)",
           "gains_db": gains,
           "bundles": {n: {"path": str(b.path), "sha256": b.sha256, "auto_level": options[n].auto_level}
                       for n, b in models.items()},
           "reference": args.reference, "sets": {}}
    for s, root in sets.items():
        audio = load_set(root)
        res["sets"][s] = {}
        for name, bundle in models.items():
            per = {}
            for g in gains:
                stem = f"{output_key(bundle)}{options_key(options[name])}-{root.name}-{len(audio)}-{g:+g}"
                key = WORK / "level" / f"{stem}.json"
                per[g] = cached(key, lambda b=bundle, a=audio, g=g, o=options[name]: score_gain(b, a, g, o))
                print(f"{s}, {name}, {g:+g} dB: PESQ-WB {np.mean([r['pesq_wb'] for r in per[g]]):.3f}", flush=True)
            res["sets"][s][name] = {
                "means": {str(g): {m: round(float(np.mean([r[m] for r in per[g]])), 4) for m in METRICS}
                          for g in gains},
                "vs_0db": {str(g): {m: paired(per[g], per[0.0], m) for m in METRICS} for g in gains if g != 0},
                "per_file": {str(g): per[g] for g in gains}}
        ref = res["sets"][s].get(args.reference)
        for name, r in res["sets"][s].items():
            if ref is not None and name != args.reference:
                r["vs_reference"] = {str(g): {m: paired(r["per_file"][str(g)], ref["per_file"][str(g)], m)
                                              for m in METRICS} for g in gains}
            plain = next((n for n, b in models.items() if options[name].auto_level and not options[n].auto_level
                          and b.path == models[name].path), None)
            if plain is not None:  # the same bundle without the automatic level: what the option buys
                r["vs_plain"] = {"name": plain, **{str(g): {m: paired(r["per_file"][str(g)],
                                                                       res["sets"][s][plain]["per_file"][str(g)], m)
                                                            for m in METRICS} for g in gains}}
    md = markdown(res)
    path = write_result(args.out, {**res, "markdown": md})
    path.with_suffix(".md").write_text(f"# {res['title']}\n\n`{portable(command_line())}`\n\n{md}")
    print(f"wrote {path} and {path.with_suffix('.md').name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
