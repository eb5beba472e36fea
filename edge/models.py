"""Where bundles are found: the default model, the bundles the wheel carries, and ``edge-denoise models``."""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .bundle import MANIFEST, runtime_listed
from .errors import BundleError

DEFAULT_BUNDLES = ("pretrained_model/dtln-finetuned/float32",)
"""Bundles the runtime wheel carries as package data (``edge/_bundles/``), paths from the checkout root;
the first one found is the default model. ``setup.py`` reads this tuple (as text) at build time."""

ENV = "EDGE_DENOISE_MODEL"
PACKAGE_DIR = Path(__file__).resolve().parent / "_bundles"
"""Package data: ``pretrained_model/X/MODE`` of a default bundle is installed as ``edge/_bundles/X/MODE``."""
CHECKOUT_DIR = Path(__file__).resolve().parents[1] / "pretrained_model"
"""Bundles of the checkout this package runs from (an editable install or ``python -m edge.cli``)."""


@dataclass(frozen=True)
class Found:
    """A bundle folder and where it was found."""

    path: Path
    source: str
    """``env`` ($EDGE_DENOISE_MODEL), ``checkout``, ``package`` (the wheel's data) or ``cwd``."""


def _roots() -> list[tuple[str, Path]]:
    """(source, folder holding FAMILY/MODE bundle folders), in the order the default model is looked up."""
    return [("checkout", CHECKOUT_DIR), ("package", PACKAGE_DIR), ("cwd", Path.cwd() / "pretrained_model")]


def default_model() -> str:
    """``$EDGE_DENOISE_MODEL``, else the first of ``DEFAULT_BUNDLES`` in the checkout, the package data or
    ``./pretrained_model`` whose manifest lists the interpreter installed here (else the first found, which
    the runtime then refuses with the list of interpreters it runs on)."""
    env = os.environ.get(ENV)
    if env:
        return env
    looked, found = [], []
    for _, root in _roots():
        for rel in DEFAULT_BUNDLES:
            folder = root / Path(rel).relative_to("pretrained_model")
            looked.append(str(folder))
            if (folder / MANIFEST).is_file():
                found.append(folder)
    if not found:
        raise BundleError("no --model given and no default bundle found (looked in " + ", ".join(looked)
                          + f"); pass --model DIR or set {ENV}")
    return str(next((f for f in found if runs_here(f)), found[0]))


def runs_here(folder: Path) -> bool:
    """Whether the bundle's manifest lists the interpreter package installed here (unreadable: True, and
    loading it says what is wrong)."""
    from .interpreter import interpreter_package

    try:
        with open(folder / MANIFEST, encoding="utf-8") as f:
            runtimes = json.load(f).get("runtimes")
    except (OSError, ValueError, AttributeError):
        return True
    pkg = interpreter_package()
    return not runtimes or not isinstance(runtimes, list) or runtime_listed(runtimes, pkg.name, pkg.version)


def find_bundles() -> list[Found]:
    """Every bundle folder this process can see: $EDGE_DENOISE_MODEL, then each root's ``*/*/manifest.json``.

    A folder seen from two roots (the checkout is the current directory) is listed once.
    """
    found: list[Found] = []
    seen: set[Path] = set()

    def add(path: Path, source: str) -> None:
        key = path.resolve()
        if key not in seen:
            seen.add(key)
            found.append(Found(path, source))

    env = os.environ.get(ENV)
    if env:
        add(Path(env), "env")
    for source, root in _roots():
        for manifest in sorted(root.glob(f"*/*/{MANIFEST}")):
            add(manifest.parent, source)
    return found


def scores(folder: Path) -> dict[str, float] | None:
    """VBD-23 means (PESQ-WB, STOI, SI-SDR) of a bundle from ``../scores.json`` (written by convert.release)."""
    try:
        with open(folder.parent / "scores.json", encoding="utf-8") as f:
            modes = json.load(f).get("modes", {})
    except (OSError, ValueError, AttributeError):
        return None
    for entry in modes.values() if isinstance(modes, dict) else ():
        if isinstance(entry, dict) and entry.get("folder") == folder.name:
            means = (entry.get("vbd23") or {}).get("means") or {}
            keys = ("pesq_wb", "stoi", "si_sdr")
            return {k: means[k] for k in keys} if all(k in means for k in keys) else None
    return None


def describe(found: Found, default: str | None) -> dict[str, Any]:
    """One row of ``edge-denoise models``: read from the manifest only (nothing is loaded or run)."""
    row: dict[str, Any] = {"path": str(found.path), "source": found.source,
                           "default": default is not None and found.path.resolve() == Path(default).resolve()}
    try:
        with open(found.path / MANIFEST, encoding="utf-8") as f:
            m = json.load(f)
        row.update(name=m.get("name", found.path.name), family=m.get("family"), quantization=m.get("quantization"),
                   latency_ms=round(1000 * m["latency_samples"] / m["sample_rate"], 1),
                   bytes=sum(int(s.get("bytes", 0)) for s in m.get("submodels", [])),
                   golden="golden" in m,
                   runs_here=runs_here(found.path),
                   vbd23=scores(found.path))
    except (OSError, ValueError, KeyError, TypeError, ZeroDivisionError) as exc:
        row["error"] = f"unreadable manifest ({exc.__class__.__name__}: {exc})"
    return row


def register(sub) -> None:
    p = sub.add_parser("models", help="list the bundles this install can see, with their scores",
                       description="List bundle folders: $EDGE_DENOISE_MODEL, the checkout's pretrained_model/, the "
                                   "bundles the package carries, ./pretrained_model. '*' marks the default model; "
                                   "VBD-23 scores come from the release's scores.json beside the bundle.")
    p.add_argument("--json", action="store_true", help="print the list as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        default: str | None = default_model()
    except BundleError:
        default = None
    rows = [describe(f, default) for f in find_bundles()]
    if args.json:
        json.dump({"default": default, "bundles": rows}, sys.stdout, indent=1)
        print()
        return 0
    if not rows:
        print(f"no bundles found; pass --model DIR to the commands or set {ENV}", file=sys.stderr)
        return 2
    print(f"{'':1} {'name':28} {'mode':8} {'MB':>5} {'ms':>4} {'PESQ':>5} {'STOI':>5} {'SI-SDR':>6} "
          f"{'check':6} {'here':5} {'source':8} path")
    for r in rows:
        if "error" in r:
            print(f"  {r['path']}: {r['error']}")
            continue
        s = r["vbd23"]
        sc = f"{s['pesq_wb']:5.2f} {s['stoi']:5.3f} {s['si_sdr']:6.2f}" if s else f"{'-':>5} {'-':>5} {'-':>6}"
        print(f"{'*' if r['default'] else ' '} {r['name']:28} {r['quantization']:8} {r['bytes'] / 1e6:5.1f} "
              f"{r['latency_ms']:4.0f} {sc} {'yes' if r['golden'] else 'no':6} {'yes' if r['runs_here'] else 'no':5} "
              f"{r['source']:8} {r['path']}")
    print("scores: VBD-23 test subset, float32 reference loop; check: the bundle carries a golden pair for "
          "`edge-denoise check`; here: its manifest lists this interpreter", file=sys.stderr)
    return 0
