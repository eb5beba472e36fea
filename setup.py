"""Build hook: the wheel carries the default bundles (``edge.models.DEFAULT_BUNDLES``) as package data.

``pretrained_model/X/MODE`` goes to ``edge/_bundles/X/MODE``: the manifest and exactly the files it names
(submodels, arrays, golden pair), plus ``X/scores.json``, ``X/MODEL_CARD.md`` and ``X/LICENSE`` beside them.
The tuple is read as text (``ast``), so building needs nothing of ``edge``'s dependencies. Everything else is in
``pyproject.toml``.
"""

from __future__ import annotations

import ast
import json
import os
import shutil

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = os.path.dirname(os.path.abspath(__file__))
SIDE_FILES = ("scores.json", "MODEL_CARD.md", "LICENSE")  # LICENSE: a bundle of weights under MIT carries it


def default_bundles() -> tuple[str, ...]:
    with open(os.path.join(ROOT, "edge", "models.py"), encoding="utf-8") as f:
        tree = ast.parse(f.read())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "DEFAULT_BUNDLES" for t in node.targets):
            return tuple(ast.literal_eval(node.value))
    raise RuntimeError("edge/models.py: no DEFAULT_BUNDLES tuple")


def bundle_files(rel: str) -> list[str]:
    """Paths under pretrained_model/ of one bundle: its manifest, the files it names, the family's side files."""
    folder = os.path.join(ROOT, rel)
    with open(os.path.join(folder, "manifest.json"), encoding="utf-8") as f:
        m = json.load(f)
    names = ["manifest.json"] + [s["file"] for s in m["submodels"]] + [a["file"] for a in m.get("arrays", [])]
    names += [m["golden"][k]["file"] for k in ("input", "output")] if "golden" in m else []
    sub = os.path.relpath(folder, os.path.join(ROOT, "pretrained_model"))
    files = [os.path.join(sub, n) for n in names]
    family = os.path.dirname(sub)
    files += [os.path.join(family, n) for n in SIDE_FILES
              if os.path.isfile(os.path.join(ROOT, "pretrained_model", family, n))]
    return files


class BuildWithBundles(build_py):
    """build_py that adds the default bundles to package ``edge``; sdist's file list takes the same entries."""

    def _bundles(self) -> list[tuple[str, str, str, list[str]]]:
        if getattr(self, "editable_mode", False):
            return []  # an editable install runs from the checkout, which has pretrained_model/ itself
        names = sorted({f for rel in default_bundles() for f in bundle_files(rel)})
        return [("edge", "pretrained_model", os.path.join(self.build_lib, "edge", "_bundles"), names)]

    def run(self):
        if not getattr(self, "editable_mode", False):  # a reused build/ must not carry an earlier default
            shutil.rmtree(os.path.join(self.build_lib, "edge", "_bundles"), ignore_errors=True)
        super().run()

    def _get_data_files(self):  # wheel (build_py)
        return super()._get_data_files() + self._bundles()

    def get_data_files_without_manifest(self):  # sdist (egg_info's file list)
        return super().get_data_files_without_manifest() + self._bundles()


if __name__ == "__main__":  # setuptools runs this file as __main__; tests import it for its helpers
    setup(cmdclass={"build_py": BuildWithBundles})
