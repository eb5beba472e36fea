"""``python -m convert.release``: weights -> every bundle that passes verification + eval scores, in one folder."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

from .errors import ConvertError, VerificationError
from .modes import MODES, NAMES, Mode


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m convert.release", description=__doc__.split(":", 1)[1].strip())
    p.add_argument("--weights", required=True, metavar="FILE",
                   help="h5 to ship: DTLN, or PoCoNet (told apart by the file's contents)")
    p.add_argument("--out", required=True, metavar="DIR", help="e.g. pretrained_model/dtln-16k")
    p.add_argument("--modes", nargs="+", choices=NAMES, default=list(NAMES))
    p.add_argument("--vbd", metavar="DIR", default=None,
                   help="VoiceBank-DEMAND test folder with clean/ and noisy/ (default: ../shared/data/test/vbd_test)")
    p.add_argument("--devmix", metavar="DIR", default=None, help="dev mixes from python -m convert.devset")
    p.add_argument("--gendev", metavar="DIR", default=None,
                   help="the generalisation dev set from python -m convert.devset --generalisation")
    p.add_argument("--keep-level", action="store_true",
                   help="ship the output level as trained (default, for a family that can fix it (dtln): a model "
                        "trained on the scale-free SI-SDR alone gets its decoder scaled so that its output level "
                        "matches clean speech on the dev mixes)")
    p.add_argument("--name", default=None, help="bundle name prefix (default: the --out folder's name)")
    args = p.parse_args(argv)
    from .quiet import import_tensorflow

    import_tensorflow()
    from . import build, data
    from .families import family_of_file

    fam = family_of_file(args.weights)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    weights_path = out / f"{fam.name}_weights.h5"
    if Path(args.weights).resolve() != weights_path.resolve():
        shutil.copyfile(args.weights, weights_path)
    weights = fam.load_weights(str(weights_path))
    level = None
    if fam.release_fix is not None and not args.keep_level:
        weights, level = fam.release_fix(weights)
        if level is not None:
            fam.save_weights(weights, str(weights_path))
            print(f"output level: decoder scaled by {level['gain_db']:+.2f} dB"
                  f"{' and inverted' if level['inverted'] else ''} (least squares on the dev mixes)", file=sys.stderr)
    name = args.name or out.name
    job = {"calib_audio": data.dev_mixes() or None, "source": weights_path.name, "progress": build.TERMINAL,
           "force": True}
    vbd = Path(args.vbd) if args.vbd else data.vbd23()
    scored = {"vbd23": vbd, "devmix": Path(args.devmix) if args.devmix else None,
              "gendev": Path(args.gendev) if args.gendev else None}
    results: dict = {"family": fam.name, "weights": weights_path.name, "output_level_fix": level, "modes": {},
                     "scored": time.strftime("%Y-%m-%d")}
    shipped = {}
    for mode in args.modes:
        files = build.verification_files(mode)  # int8: VBD-23 pooled where the shared data has it
        audio = {"verify_audio": data.load_files(files, weights.config.sample_rate),
                 "verify_names": [f.name for f in files]}
        results["modes"][mode], bundle = _ship(weights, MODES[mode], out, name, {**job, **audio}, scored)
        if bundle is not None:
            shipped[mode] = bundle
    if "none" in shipped and (vbd / "noisy").is_dir():
        for mode, snr in pooled_snr(shipped, sorted((vbd / "noisy").glob("*.wav"))).items():
            results["modes"][mode]["vbd23_snr_vs_float32_db"] = snr
            print(f"{mode}: {snr:.1f} dB SNR against float32, pooled over VBD-23", file=sys.stderr)
    with open(out / "scores.json", "w") as f:
        json.dump(results, f, indent=1)
        f.write("\n")
    return 0


def _ship(weights, mode: Mode, out: Path, name: str, job: dict, scored: dict[str, Path | None]):
    """(scores entry, bundle or None): one mode converted into its release folder and scored, or why not."""
    from edge.evaluate import evaluate, pairs
    from edge.options import Options

    from .build import bundle_bytes, convert

    folder = out / mode.folder
    try:
        bundle = convert(weights, mode, folder, name=f"{name}-{mode.folder}", **job)
    except VerificationError as exc:
        print(f"{mode.name}: not shipped: {exc}", file=sys.stderr)
        if folder.exists():
            shutil.rmtree(folder)
        return {"shipped": False, "why": str(exc)}, None
    entry = {"shipped": True, "folder": folder.name, "verification": bundle.manifest["verification"],
             "bytes": bundle_bytes(folder)}
    for label, root in scored.items():
        if root is None or not (root / "clean").is_dir():
            continue
        r = evaluate(bundle, Options(), pairs(str(root / "clean"), str(root / "noisy")))
        entry[label] = {"means": r["means"], "files": r["files"], "real_time_factor": r["real_time_factor"]}
        print(f"{mode.name} {label}: PESQ {r['means']['pesq_wb']:.3f} STOI {r['means']['stoi']:.3f} "
              f"SI-SDR {r['means']['si_sdr']:.2f}", file=sys.stderr)
    return entry, bundle


def pooled_snr(bundles: dict, files: list[Path]) -> dict[str, float]:
    """Each mode's output against the float32 bundle's (``bundles["none"]``), energy pooled over ``files``."""
    import numpy as np

    import edge

    from .data import load_files

    inputs = load_files(files)
    ref = [edge.denoise(x, bundles["none"]) for x in inputs]
    energy = sum(float(np.sum(np.square(r, dtype=np.float64))) for r in ref)
    out = {}
    for mode, bundle in bundles.items():
        if mode == "none":
            continue
        err = sum(float(np.sum(np.square(edge.denoise(x, bundle) - r, dtype=np.float64)))
                  for x, r in zip(inputs, ref, strict=True))
        out[mode] = round(float(10 * np.log10(energy / max(err, 1e-30))), 1)
    return out


if __name__ == "__main__":
    try:
        sys.exit(main())
    except ConvertError as exc:
        print(f"python -m convert.release: error: {exc}", file=sys.stderr)
        sys.exit(2)
