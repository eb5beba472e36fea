"""The model families the converter and the trainer know, by name: the only place that lists them.

A family is one module here whose ``FAMILY`` (``convert.families.base.Family``) holds its weights I/O,
Keras models, graph changes per mode and training set-up; its runtime half is one step in ``edge.families``.
"""

from __future__ import annotations

import importlib

from ..errors import ConvertError
from .base import Family

NAMES = ("dtln", "poconet")
"""Family names in the order the CLIs list them; the first is the default, and the family of a weights
file no family claims (it then fails to load, by name)."""


def family(name: str) -> Family:
    """The family called ``name``; ConvertError for an unknown one."""
    if name not in NAMES:
        raise ConvertError(f"unknown model family {name!r}; this converter knows {', '.join(NAMES)}")
    return importlib.import_module(f"{__name__}.{name}").FAMILY


def family_of_weights(weights) -> Family:
    """The family whose weights class ``weights`` is."""
    for name in NAMES:
        fam = family(name)
        if isinstance(weights, fam.weights_type):
            return fam
    raise ConvertError(f"{type(weights).__name__} is no family's weights (known families: {', '.join(NAMES)})")


def family_of_file(path: str) -> Family:
    """The family whose weights an h5 file holds, read from its contents, never its name."""
    for name in NAMES:
        fam = family(name)
        if fam.owns_file(path):
            return fam
    return family(NAMES[0])
