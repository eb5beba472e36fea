"""Quality on what no model here trained or was tuned on: per set, per input SNR, per noise category, clean in.

    python bench/generalisation.py --gendev DIR --devmix DIR [--reverberant DIR] --model NAME=BUNDLE
                                   [--model NAME=BUNDLE ...] [--reference NAME] [--out generalisation]

``--model NAME=BUNDLE+auto-level`` scores the bundle with ``Options(auto_level=True)`` (``edge.level``).

Scores every bundle with ``edge.evaluate`` (PESQ-WB, STOI, SI-SDR; the same scorer as ``edge-denoise
eval``) on VBD-23 (``../shared/data/test/vbd_test``), the generalisation dev set (unseen speakers x noise
categories absent from training, ``python -m convert.devset --generalisation``; its ``labels.tsv`` gives
each mix's category and SNR), the fixed dev mixes (``python -m convert.devset``) and, given, the
reverberant generalisation set (the same mixes in simulated rooms, ``--reverberant``). Scores are cached
per bundle and set under the bench work folder: adding a model or a set scores only what is new.
Then, per bundle:
- means per input SNR and per noise category on the generalisation sets, beside the noisy input;
- transparency: clean speech in (unseen speakers: speech/dev and VBD-23's clean side), PESQ-WB and
  SI-SDR of the output against the input, both high-passed at 60 Hz;
- paired comparisons against ``--reference``: mean per-file difference with a 95 % bootstrap interval
  (10 000 resamples) and the count of files ahead.
Writes bench/results/OUT.json (means and per-file scores) and OUT.md (the tables).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
from pathlib import Path

import numpy as np
from common import REPO, SHARED, WORK, model_spec, options_key, skip, write_result

import edge
from edge.audio import read_audio, to_mono_rate
from edge.evaluate import evaluate, pairs, scores
from edge.options import Options

METRICS = ("pesq_wb", "stoi", "si_sdr")
RATE = 16000


def highpass(x: np.ndarray, cutoff_hz: float = 60.0) -> np.ndarray:
    """Zero-phase high-pass (gain 1 / (1 + (fc/f)^8) on the spectrum), as ``convert.data.highpass``."""
    f = np.fft.rfftfreq(len(x), 1.0 / RATE)
    gain = 1.0 / (1.0 + (cutoff_hz / np.maximum(f, 1e-3)) ** 8)
    return np.fft.irfft(np.fft.rfft(x.astype(np.float64)) * gain, len(x)).astype(np.float32)


def transparency(bundle, files: list[Path], options: Options | None = None) -> dict:
    """Clean speech in: the output scored against its own input, both high-passed at 60 Hz."""
    rows = []
    for f in files:
        x, sr, _ = read_audio(str(f))
        x = to_mono_rate(x, sr, RATE)
        y = edge.denoise(x, bundle, options)
        s = scores(highpass(x), highpass(y))
        rows.append({"file": f.name, "pesq_wb": round(s["pesq_wb"], 4), "si_sdr": round(s["si_sdr"], 3)})
    return {"files": len(rows), "pesq_wb": round(float(np.mean([r["pesq_wb"] for r in rows])), 4),
            "si_sdr": round(float(np.mean([r["si_sdr"] for r in rows])), 3), "per_file": rows}


def by_label(per_file: list[dict], labels: dict[str, dict], key: str) -> dict:
    """Means of output and noisy-input metrics grouped by a column of labels.tsv."""
    groups: dict[str, list[dict]] = {}
    for r in per_file:
        groups.setdefault(labels[r["file"]][key], []).append(r)
    order = sorted(groups, key=lambda g: (float(g) if key == "snr_db" else 0, g))
    return {g: {"n": len(groups[g]), **{m: round(float(np.mean([r[m] for r in groups[g]])), 4)
                                        for m in METRICS + tuple(f"noisy_{m}" for m in METRICS)}}
            for g in order}


def paired(a: list[dict], b: list[dict], metric: str, resamples: int = 10000, seed: int = 0) -> dict:
    """Mean of a - b per file, its 95 % bootstrap interval and how many files a is ahead on."""
    bm = {r["file"]: r[metric] for r in b}
    d = np.array([r[metric] - bm[r["file"]] for r in a])
    rng = np.random.default_rng(seed)
    boot = d[rng.integers(0, len(d), (resamples, len(d)))].mean(axis=1)
    lo, hi = np.percentile(boot, [2.5, 97.5])
    return {"mean": round(float(d.mean()), 4), "ci95": [round(float(lo), 4), round(float(hi), 4)],
            "ahead": int((d > 0).sum()), "of": len(d)}


def score_set(bundle, root: Path, labels: dict, options: Options | None = None) -> dict:
    """One set's means and per-file scores; with labels (labels.tsv), means per input SNR and category."""
    r = evaluate(bundle, options or Options(), pairs(str(root / "clean"), str(root / "noisy")))
    rows = [{k: v for k, v in row.items() if not k.startswith("gain_")} for row in r["per_file"]]
    out = {"means": {k: v for k, v in r["means"].items() if not k.startswith("gain_")}, "per_file": rows}
    if labels:
        out["by_snr"] = by_label(rows, labels, "snr_db")
        out["by_category"] = by_label(rows, labels, "category")
    return out


def cached(path: Path, make):
    """``make()``, kept in ``path`` between runs: adding a model or a set scores only what is new."""
    if path.is_file():
        return json.loads(path.read_text())
    value = make()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value))
    return value


def markdown(res: dict, ref: str) -> str:
    head = " | ".join(f"{s} PESQ-WB / STOI / SI-SDR" for s in res["sets"])
    lines = [f"| model | {head} | clean in PESQ / SI-SDR |",
             "|---|" + "---|" * (len(res["sets"]) + 1)]
    first = next(iter(res["scored"].values()))
    lines.append("| noisy input | " + " | ".join(
        "{noisy_pesq_wb:.3f} / {noisy_stoi:.3f} / {noisy_si_sdr:.2f}".format(**first[s]["means"])
        for s in res["sets"]) + " | |")
    for name, m in res["scored"].items():
        t = m["transparency"]
        lines.append(f"| {name} | " + " | ".join(
            "{pesq_wb:.3f} / {stoi:.3f} / {si_sdr:.2f}".format(**m[s]["means"]) for s in res["sets"])
            + f" | {t['pesq_wb']:.2f} / {t['si_sdr']:.1f} |")
    if "gendev" in res["sets"] and "by_snr" in first["gendev"]:
        snrs = list(first["gendev"]["by_snr"])
        lines += ["", "Generalisation set, SI-SDR dB by input SNR (noisy input first):", "",
                  "| model | " + " | ".join(f"{s} dB" for s in snrs) + " |", "|---|" + "---|" * len(snrs),
                  "| noisy input | " + " | ".join(f"{first['gendev']['by_snr'][s]['noisy_si_sdr']:.2f}"
                                                  for s in snrs) + " |"]
        for name, m in res["scored"].items():
            lines.append(f"| {name} | " + " | ".join(f"{m['gendev']['by_snr'][s]['si_sdr']:.2f}" for s in snrs) + " |")
    if ref in res["scored"]:
        lines += ["", f"Paired against {ref}: mean difference [95 % bootstrap interval], files ahead:", "",
                  "| model | set | PESQ-WB | STOI | SI-SDR dB |", "|---|---|---|---|---|"]
        for name, m in res["scored"].items():
            for s in res["sets"]:
                if name == ref:
                    continue
                cells = [m["paired"][s][k] for k in METRICS]
                lines.append(f"| {name} | {s} | " + " | ".join(
                    f"{c['mean']:+.3f} [{c['ci95'][0]:+.3f}, {c['ci95'][1]:+.3f}] {c['ahead']}/{c['of']}"
                    for c in cells) + " |")
    return "\n".join(lines) + "\n"


def output_key(bundle) -> str:
    """What the output depends on (graphs, arrays, options), not the manifest's other facts: a bundle
    given a golden pair or new verification figures keeps its cached scores."""
    m = bundle.manifest
    facts = {"submodels": [s["sha256"] for s in m["submodels"]], "arrays": [a["sha256"] for a in m.get("arrays", [])],
             "family_options": m.get("family_options", {}), "framing": [m.get(k) for k in
                                                                       ("block_len", "block_shift", "window")]}
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:16]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", action="append", required=True, metavar="NAME=BUNDLE")
    p.add_argument("--gendev", metavar="DIR", help="python -m convert.devset --generalisation output")
    p.add_argument("--devmix", metavar="DIR", help="python -m convert.devset output")
    p.add_argument("--reverberant", metavar="DIR",
                   help="python -m convert.devset --generalisation ESC50_DIR --reverberant output")
    p.add_argument("--reference", default=None, help="model NAME the others are paired against (default: first)")
    p.add_argument("--out", default="generalisation", help="result name under bench/results/")
    args = p.parse_args()
    data = SHARED / "data"
    sets = {"vbd23": data / "test" / "vbd_test"}
    sets.update({k: Path(v) for k, v in (("gendev", args.gendev), ("devmix", args.devmix),
                                         ("reverberant", args.reverberant)) if v})
    for label, root in sets.items():
        if not (root / "clean").is_dir():
            skip(f"{label}: no clean/ under {root}")
    labels: dict[str, dict] = {}
    for label in ("gendev", "reverberant"):
        if label in sets and (sets[label] / "labels.tsv").is_file():
            with open(sets[label] / "labels.tsv") as f:
                labels[label] = {r["file"]: r for r in csv.DictReader(f, delimiter="\t")}
    clean_files = sorted((data / "speech" / "dev").rglob("*.flac")) + sorted((sets["vbd23"] / "clean").glob("*.wav"))
    try:
        models = {name: (path, options) for name, path, options in map(model_spec, args.model)}
    except ValueError as exc:
        p.error(str(exc))
    ref = args.reference or next(iter(models))
    res = {"sets": list(sets), "reference": ref, "scored": {}}
    for name, (path, options) in models.items():
        bundle = edge.load_bundle(REPO / path)
        key = WORK / "generalisation" / (output_key(bundle) + options_key(options))
        print(f"{name} ({path})", flush=True)
        m = {"bundle": bundle.name, "sha256": bundle.sha256, "quantization": bundle.quantization,
             "auto_level": options.auto_level}
        for label, root in sets.items():
            found = labels.get(label, {})
            m[label] = cached(Path(f"{key}-{label}.json"),
                              lambda b=bundle, r=root, t=found, o=options: score_set(b, r, t, o))
        m["transparency"] = cached(Path(f"{key}-transparency.json"),
                                   lambda b=bundle, o=options: transparency(b, clean_files, o))
        res["scored"][name] = m
    for m in res["scored"].values():
        m["paired"] = {s: {k: paired(m[s]["per_file"], res["scored"][ref][s]["per_file"], k) for k in METRICS}
                       for s in sets}
    md = markdown(res, ref)
    write_result(args.out, {**res, "markdown": md})
    (REPO / "bench" / "results" / f"{args.out}.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
