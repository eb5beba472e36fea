"""``python -m convert.devset --out DIR``: write dev mixes as clean/noisy WAV pairs for ``edge-denoise eval``.

Two sets. The default is the fixed training dev set (speech/dev x noise/dev, the noise categories of
training): it tracks training, but flatters a model on what it has heard. ``--generalisation ESC50_DIR``
writes the set that checkpoints are chosen on instead: unseen speakers (speech/dev) under noise
categories absent from training (the ``ESC50_HELDOUT`` classes, the household recordings of noise/dev,
babble of unseen talkers) at every input SNR of -5, 0, 5, 10, 15 and 20 dB, one mix per category and
SNR, with ``labels.tsv`` naming each mix's category, SNR and speaker. ``--reverberant`` plays each of
those mixes' speech in a simulated room first (``reverberant``): the same set for rooms.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from .data import (
    ESC50_HELDOUT,
    RATE,
    _rms,
    dev_set,
    esc50_class,
    find_audio,
    in_room,
    load_files,
    room_impulse_responses,
    shared_data,
)

GEN_SNRS = (-5.0, 0.0, 5.0, 10.0, 15.0, 20.0)
ROOM_SEED = (4242, 7)
"""Seed of the dev set's rooms: no training run draws these (a run's rooms come from its own --seed)."""


def _fit(rng: np.random.Generator, x: np.ndarray, n: int) -> np.ndarray:
    """A random window of ``n`` samples of ``x``, tiled when ``x`` is shorter."""
    if len(x) < n:
        x = np.tile(x, int(np.ceil(n / len(x))) + 1)
    start = int(rng.integers(0, len(x) - n + 1))
    return x[start:start + n].astype(np.float64)


def generalisation_categories(root: Path, esc50: Path) -> dict[str, list[np.ndarray]]:
    """Noise recordings per unseen category: each held-out ESC-50 class and each household recording."""
    cats: dict[str, list[np.ndarray]] = {}
    clips = [f for f in find_audio([esc50]) if esc50_class(f) in ESC50_HELDOUT]
    for f, x in zip(clips, load_files(clips), strict=True):
        cats.setdefault(f"esc50:{ESC50_HELDOUT[esc50_class(f)]}", []).append(x)
    missing = set(ESC50_HELDOUT.values()) - {c.split(":", 1)[1] for c in cats}
    if missing:
        raise SystemExit(f"python -m convert.devset: error: {esc50} lacks ESC-50 classes {sorted(missing)}")
    household = find_audio([root / "noise" / "dev" / "household"])
    for f, x in zip(household, load_files(household), strict=True):
        cats[f"household:{f.stem}"] = [x]
    return cats


def generalisation_set(root: Path, esc50: Path, seconds: float = 5.0, seed: int = 2026):
    """[(noisy, clean, label)] over every unseen category x ``GEN_SNRS``; label = (category, snr, speaker)."""
    speech_files = find_audio([root / "speech" / "dev"])
    speech = load_files(speech_files)
    speakers = [f.name.split("-")[0] for f in speech_files]
    cats = generalisation_categories(root, esc50)
    names = sorted(cats) + ["babble"]
    n = int(seconds * RATE)
    rng = np.random.default_rng(seed)
    out = []
    for snr in GEN_SNRS:
        for cat in names:
            k = int(rng.integers(len(speech)))
            clean = _fit(rng, speech[k], n)
            if cat == "babble":  # 3-7 other unseen talkers, each within 10 dB
                others = [i for i in range(len(speech)) if speakers[i] != speakers[k]]
                talkers = [_fit(rng, speech[i], n) for i in rng.choice(others, int(rng.integers(3, 8)), False)]
                noise = sum(t / _rms(t) * 10 ** (rng.uniform(-10, 0) / 20) for t in talkers)
            else:
                pool = cats[cat]
                noise = _fit(rng, pool[int(rng.integers(len(pool)))], n)
            clean *= 10 ** (rng.uniform(-35, -15) / 20) / _rms(clean)
            noisy = clean + noise * (_rms(clean) / _rms(noise) / 10 ** (snr / 20))
            peak = float(np.max(np.abs(noisy)))
            if peak > 0.99:
                clean, noisy = clean * 0.99 / peak, noisy * 0.99 / peak
            out.append((noisy.astype(np.float32), clean.astype(np.float32), (cat, snr, speakers[k])))
    return out


def reverberant(mixes, rooms: int = 64, seed=ROOM_SEED):
    """The mixes with their speech played in simulated rooms (``room_impulse_responses``, RT60 0.2-0.6 s by
    Sabine, mix ``i`` in room ``i % rooms``): noisy = reverberant speech + the same noise, clean = the direct
    path and 50 ms of early reflections, scaled to the dry speech's level so the SNR labels still hold.
    Returns [(noisy, clean, (label..., rt60_s))]."""
    rirs = room_impulse_responses(np.random.default_rng(seed), rooms)
    out = []
    for i, (noisy, clean, label) in enumerate(mixes):
        room = rirs[i % len(rirs)]
        noise = noisy.astype(np.float64) - clean
        heard, target = in_room(clean, room)
        gain = _rms(clean) / max(_rms(target), 1e-12)
        noisy, clean = heard * gain + noise, target * gain
        peak = float(max(np.max(np.abs(noisy)), np.max(np.abs(clean))))
        if peak > 0.99:
            clean, noisy = clean * 0.99 / peak, noisy * 0.99 / peak
        out.append((noisy.astype(np.float32), clean.astype(np.float32), (*label, _rt60(room[0]))))
    return out


def _rt60(rir: np.ndarray) -> float:
    """RT60 (s) of an impulse response from its Schroeder decay, -5 to -25 dB extrapolated (T20)."""
    energy = np.cumsum(rir[::-1].astype(np.float64) ** 2)[::-1]
    db = 10 * np.log10(energy / energy[0] + 1e-30)
    t5, t25 = int(np.argmax(db <= -5)), int(np.argmax(db <= -25))
    return round(3 * (t25 - t5) / RATE, 2)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m convert.devset", description=__doc__.split("\n")[0].split(":", 1)[1])
    p.add_argument("--out", metavar="DIR", required=True, help="writes DIR/clean/*.wav and DIR/noisy/*.wav")
    p.add_argument("--data", metavar="DIR", default=None, help="data root (default: ../shared/data)")
    p.add_argument("--count", type=int, default=128, help="mixes of 4 s (default: 128, the training dev set)")
    p.add_argument("--generalisation", metavar="ESC50_DIR", default=None,
                   help="write the generalisation dev set instead, its held-out noise from this ESC-50 folder "
                        "(the esc50_partial set of ../shared/data/extra)")
    p.add_argument("--reverberant", action="store_true",
                   help="with --generalisation: the same mixes with their speech in simulated rooms (64 rooms, "
                        "RT60 0.2-0.6 s by Sabine; target: direct path + 50 ms of early reflections); "
                        "labels.tsv adds each room's measured RT60")
    args = p.parse_args(argv)
    if args.reverberant and not args.generalisation:
        p.error("--reverberant goes with --generalisation ESC50_DIR")
    import soundfile as sf

    root = Path(args.data) if args.data else shared_data()
    if not (root / "speech" / "dev").is_dir():
        print(f"python -m convert.devset: error: no dev speech under {root}/speech/dev", file=sys.stderr)
        return 2
    out = Path(args.out)
    for sub in ("noisy", "clean"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    if args.generalisation:
        mixes = generalisation_set(root, Path(args.generalisation))
        rows = ["file\tcategory\tsnr_db\tspeaker"]
        if args.reverberant:
            mixes = reverberant(mixes)
            rows = [rows[0] + "\trt60_s"]
        for i, (noisy, clean, label) in enumerate(mixes):
            name = f"gen{i:03d}.wav"
            sf.write(out / "noisy" / name, noisy, RATE, subtype="FLOAT")
            sf.write(out / "clean" / name, clean, RATE, subtype="FLOAT")
            rows.append("\t".join([name, label[0], f"{label[1]:g}", *(str(v) for v in label[2:])]))
        (out / "labels.tsv").write_text("\n".join(rows) + "\n")
        print(f"wrote {len(mixes)} {'reverberant ' if args.reverberant else ''}generalisation pairs to {out} "
              f"(labels.tsv: category, SNR, speaker{', RT60' if args.reverberant else ''})")
        return 0
    dev = dev_set(root, count=args.count)
    for sub, arr in (("noisy", dev[0]), ("clean", dev[1])):
        for i, x in enumerate(arr):
            sf.write(out / sub / f"dev{i:03d}.wav", x, RATE, subtype="FLOAT")
    print(f"wrote {len(dev[0])} pairs to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
