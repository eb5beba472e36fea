"""The per-block loop that bench/instructions.py counts under qemu: load, then N blocks, one per call.

    python bench/insn_loop.py --blocks N ours BUNDLE_DIR
    python bench/insn_loop.py --blocks N published MODEL_1.tflite MODEL_2.tflite

Everything outside the loop (imports, loading, the audio) is the same for every N, so the difference
of two runs' instruction counts divided by the difference of their N is the cost of one 8 ms block.
``ours`` is ``edge.StreamingDenoiser.process()`` fed one 128-sample block per call, as a live audio
callback would; ``published`` is the published DTLN tflite loop (bench/published_loop.py). One thread.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from common import EXAMPLE
from published_loop import BLOCK_SHIFT, Ours, PublishedLoop

MAX_BLOCKS = 5000
"""The audio is built for this many blocks whatever N is, so that its cost does not depend on N."""


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--blocks", type=int, required=True, help=f"8 ms blocks to run, 1..{MAX_BLOCKS}")
    p.add_argument("variant", choices=("ours", "published"))
    p.add_argument("files", nargs="+", help="ours: a bundle folder; published: model_1.tflite model_2.tflite")
    args = p.parse_args()
    if not 1 <= args.blocks <= MAX_BLOCKS:
        p.error(f"--blocks must be in 1..{MAX_BLOCKS}, got {args.blocks}")
    if args.variant == "ours" and len(args.files) == 1:
        loop = Ours(args.files[0])
        rate = loop.den.sample_rate
        if loop.den.block_shift != BLOCK_SHIFT:
            p.error(f"{args.files[0]}: block shift {loop.den.block_shift}, this loop feeds {BLOCK_SHIFT}")
    elif args.variant == "published" and len(args.files) == 2:
        loop, rate = PublishedLoop(Path(args.files[0]), Path(args.files[1])), 16000
    else:
        p.error(f"{args.variant} takes {'one bundle folder' if args.variant == 'ours' else 'two .tflite files'}, "
                f"got {args.files}")
    from edge.audio import read_audio, to_mono_rate

    x, sr, _ = read_audio(str(EXAMPLE))
    audio = np.resize(to_mono_rate(x, sr, rate), MAX_BLOCKS * BLOCK_SHIFT).astype(np.float32)
    y = loop.run(audio[:args.blocks * BLOCK_SHIFT])
    if not np.all(np.isfinite(y)):
        print("insn_loop: output is not finite", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
