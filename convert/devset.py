"""``python -m convert.devset --out DIR``: write the fixed dev mixes as clean/noisy WAV pairs for ``edge-denoise eval``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .data import RATE, dev_set, shared_data


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m convert.devset", description=__doc__.split(":", 1)[1].strip())
    p.add_argument("--out", metavar="DIR", required=True, help="writes DIR/clean/*.wav and DIR/noisy/*.wav")
    p.add_argument("--data", metavar="DIR", default=None, help="data root (default: ../shared/data)")
    p.add_argument("--count", type=int, default=128, help="mixes of 4 s (default: 128, the training dev set)")
    args = p.parse_args(argv)
    import soundfile as sf

    root = Path(args.data) if args.data else shared_data()
    dev = dev_set(root, count=args.count)
    if dev is None:
        print(f"python -m convert.devset: error: no dev speech under {root}/speech/dev", file=sys.stderr)
        return 2
    out = Path(args.out)
    for sub, arr in (("noisy", dev[0]), ("clean", dev[1])):
        (out / sub).mkdir(parents=True, exist_ok=True)
        for i, x in enumerate(arr):
            sf.write(out / sub / f"dev{i:03d}.wav", x, RATE, subtype="FLOAT")
    print(f"wrote {len(dev[0])} pairs to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
