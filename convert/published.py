"""Wrap the published DTLN ``model_1.tflite`` + ``model_2.tflite`` in a manifest so ``edge`` can drive them.

Their tensors have no meaningful names (``input_2``, ``Identity_1``) and TF 2.x may order them
states first, so the roles are read from the shapes once, here, and written down by name.
"""

from __future__ import annotations

import json
import os
import shutil

import numpy as np

from edge.bundle import FORMAT, FORMAT_VERSION, MANIFEST, sha256_bytes
from edge.interpreter import make_interpreter

from .errors import ConvertError
from .families.dtln import NAME, DTLNConfig


def _describe(details) -> list[dict]:
    out = []
    for d in details:
        scale, zp = d["quantization"]
        out.append({"name": d["name"], "tensor": d["name"], "shape": [int(s) for s in d["shape"]],
                    "dtype": np.dtype(d["dtype"]).name, "scale": float(scale), "zero_point": int(zp)})
    return out


def wrap_published(model_1: str, model_2: str, output: str, name: str = "dtln-published",
                   quantization: str = "none") -> str:
    """Copy the two files into ``output`` with a manifest; return the folder."""
    cfg = DTLNConfig()  # the published models are the defaults
    os.makedirs(output, exist_ok=True)
    submodels = []
    for sub, path, n_data in (("mask", model_1, cfg.bins), ("frame", model_2, cfg.block_len)):
        with open(path, "rb") as f:
            content = f.read()
        it = make_interpreter(content)
        ins, outs = _describe(it.get_input_details()), _describe(it.get_output_details())
        try:
            data_in = next(t for t in ins if t["shape"][-1] == n_data and len(t["shape"]) == 3)
            data_out = next(t for t in outs if t["shape"][-1] == n_data and len(t["shape"]) == 3)
            state_in = next(t for t in ins if len(t["shape"]) == 4)
            state_out = next(t for t in outs if len(t["shape"]) == 4)
        except StopIteration:
            raise ConvertError(f"{path}: not a published DTLN submodel (tensors {ins} -> {outs})") from None
        fname = f"{sub}.tflite"
        shutil.copyfile(path, os.path.join(output, fname))
        submodels.append({"name": sub, "file": fname, "sha256": sha256_bytes(content), "bytes": len(content),
                          "inputs": ins, "outputs": outs, "data_input": data_in["name"],
                          "data_output": data_out["name"], "states": {state_in["name"]: state_out["name"]}})
    manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "name": name, "family": NAME,
                "sample_rate": cfg.sample_rate, "block_len": cfg.block_len, "block_shift": cfg.block_shift,
                "window": "none", "latency_samples": cfg.latency_samples, "quantization": quantization,
                "family_options": {},
                "submodels": submodels, "runtimes": ["ai-edge-litert", "tflite-runtime>=2.14"],
                "model": {"source": "published DTLN (github.com/breizhn/DTLN, MIT)"}}
    with open(os.path.join(output, MANIFEST), "w") as f:
        json.dump(manifest, f, indent=1)
    return output
