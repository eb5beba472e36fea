"""``python -m convert.soup``: average checkpoints of one architecture into one (a weight soup).

Fine-tuning runs that start from the same weights stay in one basin, so the average of their weights (or
of a fine-tuned model and its starting point) is itself a model, often better than each on data none of
them trained on (Wortsman et al., "Model soups", ICML 2022). The shipped ``dtln-finetuned`` is the
average of the published DTLN and a fine-tuning of it (docs/generalisation.md).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

import numpy as np

from .errors import ConvertError


def soup(weights: list, mix: list[float]):
    """The ``mix``-weighted average of ``weights`` (loaded checkpoints of one family and one architecture)."""
    if len(weights) < 2 or len(mix) != len(weights):
        raise ConvertError(f"expected at least 2 checkpoints and one mix weight each, got {len(weights)} "
                           f"checkpoints and {len(mix)} weights")
    if abs(sum(mix) - 1.0) > 1e-6 or min(mix) < 0:
        raise ConvertError(f"mix weights should be >= 0 and sum to 1, got {mix}")
    first = weights[0]
    for k, w in enumerate(weights[1:], 2):
        if type(w) is not type(first) or w.config != first.config:
            raise ConvertError(f"checkpoint {k} is not the architecture of the first: {w.config} vs {first.config}")
        shapes = {n: [a.shape for a in ws] for n, ws in w.arrays.items()}
        if shapes != {n: [a.shape for a in ws] for n, ws in first.arrays.items()}:
            raise ConvertError(f"checkpoint {k} has other layers or shapes than the first")

    def mean(name: str, i: int) -> np.ndarray:
        return sum(np.float64(m) * w.arrays[name][i].astype(np.float64) for m, w in zip(mix, weights, strict=True))

    arrays = {name: [mean(name, i).astype(a.dtype) for i, a in enumerate(ws)] for name, ws in first.arrays.items()}
    return dataclasses.replace(first, arrays=arrays)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m convert.soup",
                                description="average checkpoints of one architecture into one (a weight soup)")
    p.add_argument("weights", nargs="+", metavar="FILE", help="h5 checkpoints of one family and architecture")
    p.add_argument("--out", required=True, metavar="FILE", help="the averaged h5 to write")
    p.add_argument("--mix", nargs="+", type=float, default=None, metavar="W",
                   help="weight of each checkpoint, >= 0, summing to 1 (default: equal)")
    args = p.parse_args(argv)
    from .quiet import import_tensorflow

    import_tensorflow()
    from .families import family_of_file

    try:
        fams = [family_of_file(f) for f in args.weights]
        if len({f.name for f in fams}) != 1:
            raise ConvertError(f"checkpoints of different families: {[f.name for f in fams]}")
        loaded = [fams[0].load_weights(f) for f in args.weights]
        mix = args.mix or [1.0 / len(loaded)] * len(loaded)
        fams[0].save_weights(soup(loaded, mix), args.out)
    except (ConvertError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {args.out}: {' + '.join(f'{m:g} x {f}' for m, f in zip(mix, args.weights, strict=True))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
