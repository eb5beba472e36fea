"""``python -m convert.release``: weights -> every bundle that passes verification + eval scores, in one folder."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

from .errors import ConvertError, VerificationError
from .export import MODES

FOLDER = {"none": "float32", "float16": "float16", "dynamic": "dynamic", "int8": "int8", "int16x8": "int16x8"}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m convert.release", description=__doc__.split(":", 1)[1].strip())
    p.add_argument("--weights", required=True, metavar="FILE",
                   help="h5 to ship: DTLN, or PoCoNet (told apart by the file's contents)")
    p.add_argument("--out", required=True, metavar="DIR", help="e.g. pretrained_model/dtln-16k")
    p.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    p.add_argument("--vbd", metavar="DIR", default=None,
                   help="VoiceBank-DEMAND test folder with clean/ and noisy/ (default: ../shared/data/test/vbd_test)")
    p.add_argument("--devmix", metavar="DIR", default=None, help="dev mixes from python -m convert.devset")
    p.add_argument("--gendev", metavar="DIR", default=None,
                   help="the generalisation dev set from python -m convert.devset --generalisation")
    p.add_argument("--keep-level", action="store_true",
                   help="dtln: ship the output level as trained (default: a model trained on the scale-free SI-SDR "
                        "alone gets its decoder scaled so that its output level matches clean speech on the dev mixes)")
    p.add_argument("--name", default=None, help="bundle name prefix (default: the --out folder's name)")
    args = p.parse_args(argv)
    from .quiet import import_tensorflow

    import_tensorflow()
    from edge.evaluate import evaluate, _pairs
    from edge.options import Options

    from . import build, data

    family = family_of(args.weights)
    out = Path(args.out)
    name = args.name or out.name
    out.mkdir(parents=True, exist_ok=True)
    weights_path = out / f"{family}_weights.h5"
    if Path(args.weights).resolve() != weights_path.resolve():
        shutil.copyfile(args.weights, weights_path)
    if family == "poconet":
        from .poconet import load_weights
        convert = build.convert_poconet
    else:
        from .dtln import load_weights
        convert = build.convert_dtln
    weights = load_weights(str(weights_path))
    level = None
    if family == "dtln" and not args.keep_level:
        weights, level = leveled(weights)
        if level is not None:
            from .dtln import save_weights

            save_weights(weights, str(weights_path))
            print(f"output level: decoder scaled by {level['gain_db']:+.2f} dB"
                  f"{' and inverted' if level['inverted'] else ''} (least squares on the dev mixes)", file=sys.stderr)
    examples = build.example_files()
    verify = data.load_files(examples)
    calib = data.dev_mixes()
    vbd = Path(args.vbd) if args.vbd else data.shared_data() / "test" / "vbd_test"
    results: dict = {"family": family, "weights": weights_path.name, "output_level_fix": level, "modes": {},
                     "scored": time.strftime("%Y-%m-%d")}
    shipped = {}
    for mode in args.modes:
        folder = out / FOLDER[mode]
        try:
            bundle = convert(weights, mode, str(folder), force=True, name=f"{name}-{FOLDER[mode]}",
                                        verify_audio=verify, verify_names=[e.name for e in examples],
                                        calib_audio=calib or None, source=weights_path.name, progress=build.TERMINAL)
        except VerificationError as exc:
            print(f"{mode}: not shipped: {exc}", file=sys.stderr)
            results["modes"][mode] = {"shipped": False, "why": str(exc)}
            if folder.exists():
                shutil.rmtree(folder)
            continue
        entry = {"shipped": True, "folder": folder.name, "verification": bundle.manifest["verification"],
                 "bytes": build.bundle_bytes(folder)}
        for label, root in (("vbd23", vbd), ("devmix", Path(args.devmix) if args.devmix else None),
                            ("gendev", Path(args.gendev) if args.gendev else None)):
            if root is None or not (root / "clean").is_dir():
                continue
            r = evaluate(bundle, Options(), _pairs(str(root / "clean"), str(root / "noisy")))
            entry[label] = {"means": r["means"], "files": r["files"], "real_time_factor": r["real_time_factor"]}
            print(f"{mode} {label}: PESQ {r['means']['pesq_wb']:.3f} STOI {r['means']['stoi']:.3f} "
                  f"SI-SDR {r['means']['si_sdr']:.2f}", file=sys.stderr)
        results["modes"][mode] = entry
        shipped[mode] = bundle
    if "none" in shipped and (vbd / "noisy").is_dir():
        for mode, snr in pooled_snr(shipped, sorted((vbd / "noisy").glob("*.wav"))).items():
            results["modes"][mode]["vbd23_snr_vs_float32_db"] = snr
            print(f"{mode}: {snr:.1f} dB SNR against float32, pooled over VBD-23", file=sys.stderr)
    with open(out / "scores.json", "w") as f:
        json.dump(results, f, indent=1)
        f.write("\n")
    return 0


LEVEL_TOLERANCE_DB = 0.5
"""Output level errors below this are left alone."""


def leveled(weights, dev_count: int = 128):
    """(weights, {gain_db, inverted} or None): DTLN's decoder scaled by the least-squares output gain on the dev mixes.

    SI-SDR is blind to scale and sign, and a magnitude loss to sign, so a model trained on them may come
    out louder or quieter than the speech it estimates, or with its polarity inverted (seen: x -0.5).
    The decoder is linear and last, so scaling its weights scales the output exactly. Returns the
    weights unchanged and None when the gain is positive and within ``LEVEL_TOLERANCE_DB`` of 0 dB,
    or when the dev data is absent.
    """
    import numpy as np

    from .data import dev_set
    from .dtln import DTLNWeights, build_training_model

    dev = dev_set(count=dev_count)
    if dev is None:
        return weights, None
    noisy, clean = dev
    model = build_training_model(weights.config, weights)
    est = np.concatenate([np.asarray(model(noisy[i:i + 16], training=False)) for i in range(0, len(noisy), 16)])
    n = min(est.shape[1], clean.shape[1])
    gain = float(np.sum(clean[:, :n] * est[:, :n]) / np.sum(np.square(est[:, :n], dtype=np.float64)))
    gain_db = 20 * np.log10(abs(gain))
    if gain > 0 and abs(gain_db) < LEVEL_TOLERANCE_DB:
        return weights, None
    arrays = dict(weights.arrays)
    arrays["decoder"] = [a * np.float32(gain) for a in arrays["decoder"]]
    return DTLNWeights(weights.config, arrays), {"gain_db": round(float(gain_db), 2), "inverted": gain < 0}


def family_of(path: str) -> str:
    """``poconet`` for our PoCoNet h5 (attribute ``family``), else ``dtln``; a bad file fails later, by name."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            return "poconet" if f.attrs.get("family") == "poconet" else "dtln"
    except OSError:
        return "dtln"


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
        err = sum(float(np.sum(np.square(edge.denoise(x, bundle) - r, dtype=np.float64))) for x, r in zip(inputs, ref))
        out[mode] = round(float(10 * np.log10(energy / max(err, 1e-30))), 1)
    return out


if __name__ == "__main__":
    try:
        sys.exit(main())
    except ConvertError as exc:
        print(f"python -m convert.release: error: {exc}", file=sys.stderr)
        sys.exit(2)
