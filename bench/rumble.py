"""Low-frequency rumble: how much of each set's speech and noise lies below a cutoff, and what a model's
SI-SDR would be without what it left there.

    python bench/rumble.py [--gendev DIR] [--train DIR ...] [--model NAME=BUNDLE ...] [--cutoff 30]
                           [--out rumble]

Part one, per set (VBD-23 at ``../shared/data/test/vbd_test``, the generalisation dev set given as
``--gendev``): the share of the energy below ``--cutoff`` Hz in each clean file and in each file's noise
(noisy - clean), in dB, median and 90th percentile over the files; with ``--train``, the same for every audio
file under each folder (training speech or noise; at most 60 files each, drawn with a fixed seed).

Part two, per ``--model`` and set: the mean SI-SDR of the output as it is, and of the output high-passed
(zero-phase, ``generalisation.highpass``) at 20, 30 and 60 Hz against the unchanged clean reference, with the
paired difference (mean per file, 95 % bootstrap interval) of the 30 Hz figure to the output as it is. A model
that passes rumble through gains here; one that keeps speech the reference holds below the cutoff loses.

Part three, per ``--model`` and set: PESQ-WB, STOI and SI-SDR of the model fed the noisy input as it is and
high-passed (zero-phase) at ``--cutoff``, with the paired differences (a high-passed input that peaks past
full scale is scaled to 0.999 peak on the way in and back on the way out). What the input's low band costs the model
in the bands above it: the most a recipe that teaches the model to ignore rumble could buy there.

This measures what a training recipe should change (``python -m convert.train --rumble``); no shipped model
high-passes its input or output. Writes bench/results/OUT.json and OUT.md.
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

import numpy as np
from common import SHARED, command_line, model_spec, portable, skip, write_result
from generalisation import RATE, highpass, paired
from level import load_set

import edge
from convert.data import find_audio, load_files
from edge.evaluate import scores, si_sdr

HIGHPASS_HZ = (20.0, 30.0, 60.0)
SI_SDR_KEYS = ("as_is", *(f"hp{hz:g}" for hz in HIGHPASS_HZ))


def band_share_db(x: np.ndarray, cutoff_hz: float) -> float:
    """Energy below ``cutoff_hz`` over all energy of ``x``, in dB."""
    power = np.abs(np.fft.rfft(np.asarray(x, np.float64))) ** 2
    f = np.fft.rfftfreq(len(x), 1.0 / RATE)
    return float(10 * np.log10((power[f < cutoff_hz].sum() + 1e-30) / (power.sum() + 1e-30)))


def spread(values: list[float]) -> dict:
    return {"files": len(values), "median_db": round(float(np.median(values)), 1),
            "p90_db": round(float(np.percentile(values, 90)), 1)}


def folder_files(folder: Path, count: int = 60) -> list[Path]:
    files = find_audio([folder])
    return sorted(random.Random(0).sample(files, min(count, len(files))))


def model_rows(bundle, audio: list, cutoff_hz: float) -> list[dict]:
    """Per file: SI-SDR of the output as it is and high-passed at each of ``HIGHPASS_HZ``; every score of the
    output as it is (``in_as_is``) and of the model fed the input high-passed at ``cutoff_hz`` (``in_hp``)."""
    rows = []
    for name, clean, noisy in audio:
        est = edge.denoise(noisy, bundle)
        x = highpass(noisy, cutoff_hz).astype(np.float32)
        peak = float(np.max(np.abs(x)))  # taking the low band out can raise a peak past full scale: scale it back
        gain = 0.999 / peak if peak > 0.999 else 1.0
        est_hp_in = edge.denoise(x * np.float32(gain), bundle) / np.float32(gain)
        rows.append({"file": name, "as_is": round(si_sdr(clean, est), 3),
                     **{f"hp{hz:g}": round(si_sdr(clean, highpass(est, hz)), 3) for hz in HIGHPASS_HZ},
                     "in_as_is": rounded(scores(clean, est)), "in_hp": rounded(scores(clean, est_hp_in))})
    return rows


def rounded(values: dict) -> dict:
    return {k: round(v, 4) for k, v in values.items()}


def input_highpass(rows: list[dict]) -> dict:
    """Mean of each measure with the input as it is and high-passed, and the paired difference."""
    out = {}
    for m in rows[0]["in_as_is"]:
        a = [{"file": r["file"], "v": r["in_hp"][m]} for r in rows]
        b = [{"file": r["file"], "v": r["in_as_is"][m]} for r in rows]
        out[m] = {"as_is": round(float(np.mean([x["v"] for x in b])), 3),
                  "input_highpassed": round(float(np.mean([x["v"] for x in a])), 3), "difference": paired(a, b, "v")}
    return out


def markdown(res: dict) -> str:
    c = res["cutoff_hz"]
    lines = [f"Share of the energy below {c:g} Hz (dB; median / 90th percentile over files):", "",
             "| audio | files | median | p90 |", "|---|---|---|---|"]
    lines += [f"| {k} | {v['files']} | {v['median_db']:.1f} | {v['p90_db']:.1f} |" for k, v in res["band"].items()]
    if res["per_model"]:
        lines += ["", "Mean SI-SDR (dB) of the output as it is and high-passed (zero-phase) against the unchanged "
                  "clean reference; last column: high-passed at 30 Hz minus as it is, mean per file [95 % interval].",
                  "", "| model | set | as is | " + " | ".join(f"{hz:g} Hz" for hz in HIGHPASS_HZ)
                  + " | 30 Hz - as is |",
                  "|---" * (len(HIGHPASS_HZ) + 4) + "|"]
        for name, per_set in res["per_model"].items():
            for s, r in per_set.items():
                d = r["hp30_vs_as_is"]
                lines.append(f"| {name} | {s} | {r['as_is']:.2f} | "
                             + " | ".join(f"{r[f'hp{hz:g}']:.2f}" for hz in HIGHPASS_HZ)
                             + f" | {d['mean']:+.2f} [{d['ci95'][0]:+.2f}, {d['ci95'][1]:+.2f}] |")
        lines += ["", f"The model fed the noisy input as it is and high-passed (zero-phase) at {c:g} Hz: mean "
                  "PESQ-WB, STOI and SI-SDR (dB), as is -> input high-passed, difference per file [95 % interval].",
                  "", "| model | set | PESQ-WB | STOI | SI-SDR |", "|---|---|---|---|---|"]
        for name, per_set in res["per_model"].items():
            for s, r in per_set.items():
                cells = []
                for m, digits in (("pesq_wb", 3), ("stoi", 3), ("si_sdr", 2)):
                    v = r["input_highpass"][m]
                    d = v["difference"]
                    cells.append(f"{v['as_is']:.{digits}f} -> {v['input_highpassed']:.{digits}f}, "
                                 f"{d['mean']:+.{digits}f} [{d['ci95'][0]:+.{digits}f}, {d['ci95'][1]:+.{digits}f}]")
                lines.append(f"| {name} | {s} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gendev", type=Path, default=None, help="generalisation dev set (clean/, noisy/)")
    p.add_argument("--train", type=Path, action="append", default=[], metavar="DIR",
                   help="a training speech or noise folder to measure too (repeatable)")
    p.add_argument("--model", action="append", default=[], metavar="NAME=BUNDLE")
    p.add_argument("--cutoff", type=float, default=30.0, help="band edge in Hz (default: 30)")
    p.add_argument("--out", default="rumble", help="results name: bench/results/OUT.json and OUT.md")
    args = p.parse_args()
    if not 0 < args.cutoff < RATE / 2:
        p.error(f"--cutoff {args.cutoff:g}: a frequency between 0 and {RATE // 2} Hz")
    sets = {"VBD-23": SHARED / "data" / "test" / "vbd_test"}
    if args.gendev is not None:
        sets["generalisation set"] = args.gendev
    for s, root in sets.items():
        if not (root / "noisy").is_dir():
            if s == "VBD-23":
                skip(f"no VBD-23 pairs at {root}")
            p.error(f"{root}: no noisy/ folder")
    for folder in args.train:
        if not folder.is_dir():
            p.error(f"--train {folder}: no such folder")
    models = {}
    for spec in args.model:
        try:
            name, path, _ = model_spec(spec)
        except ValueError as exc:
            p.error(str(exc))
        models[name] = edge.load_bundle(path)

    res = {"title": "Low-frequency rumble in the sets and in the models' outputs", "cutoff_hz": args.cutoff,
           "band": {}, "per_model": {n: {} for n in models},
           "bundles": {n: {"path": str(b.path), "sha256": b.sha256} for n, b in models.items()}}
    for s, root in sets.items():
        audio = load_set(root)
        res["band"][f"{s}, clean"] = spread([band_share_db(c, args.cutoff) for _, c, _ in audio])
        res["band"][f"{s}, noise"] = spread([band_share_db(n - c, args.cutoff) for _, c, n in audio])
        for name, bundle in models.items():
            rows = model_rows(bundle, audio, args.cutoff)
            res["per_model"][name][s] = {
                **{k: round(float(np.mean([r[k] for r in rows])), 3) for k in SI_SDR_KEYS},
                "hp30_vs_as_is": paired([{"file": r["file"], "v": r["hp30"]} for r in rows],
                                        [{"file": r["file"], "v": r["as_is"]} for r in rows], "v"),
                "input_highpass": input_highpass(rows), "per_file": rows}
            print(f"{s}, {name}: SI-SDR {res['per_model'][name][s]['as_is']:.2f} dB, "
                  f"high-passed at 30 Hz {res['per_model'][name][s]['hp30']:.2f}", flush=True)
    for folder in args.train:
        shares = [band_share_db(x, args.cutoff) for x in load_files(folder_files(folder), RATE)]
        res["band"][f"training: {folder.parent.name}/{folder.name}"] = spread(shares)
    md = markdown(res)
    path = write_result(args.out, {**res, "markdown": md})
    path.with_suffix(".md").write_text(f"# {res['title']}\n\n`{portable(command_line())}`\n\n{md}")
    print(md)
    print(f"wrote {path} and {path.with_suffix('.md').name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
