"""T-block graphs with one packed copy of each weight (edge.interpreter.SharedWeightsModel): same output as
the plain interpreter and as the per-block path, the plain interpreter where the runtime lacks it, and a
quiet command either way. Real interpreters, the shipped dtln-finetuned/dynamic bundle (it has T-block
graphs); no TensorFlow."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import edge
from edge.bundle import runtime_listed
from edge.interpreter import cpu_missing_for_compiled_model, interpreter_package
from edge.stream import StreamingDenoiser

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "pretrained_model" / "dtln-finetuned" / "dynamic"
EXAMPLE = REPO / "examples" / "p232_013_noisy.wav"


@pytest.fixture(scope="module")
def bundle():
    pkg = interpreter_package()
    if not runtime_listed(json.loads((BUNDLE / "manifest.json").read_text())["runtimes"], pkg.name, pkg.version):
        pytest.skip(f"dtln-finetuned/dynamic: its manifest does not list {pkg.name} {pkg.version} (the only shipped "
                    "bundles with T-block graphs are dynamic; tests/test_bundle.py covers the refusal)")
    b = edge.load_bundle(BUNDLE)
    if b.batched is None:
        pytest.fail(f"{BUNDLE} lost its T-block graphs")
    return b


def _run(bundle, options):
    x, _ = sf.read(EXAMPLE, dtype="float32")
    s = StreamingDenoiser(bundle, options)
    y = np.concatenate([s.process(x), s.flush()])
    return y, *(getattr(r, "shared_weights", False) for r in (s._family._mask, s._family._frame))


def _snr(ref: np.ndarray, test: np.ndarray) -> float:
    noise = float(np.sum((ref.astype(np.float64) - test) ** 2))
    return 999.0 if noise == 0 else 10 * np.log10(float(np.sum(ref.astype(np.float64) ** 2)) / noise)


def test_t_block_output_is_the_same_with_shared_weights_and_without(bundle):
    shared, *used = _run(bundle, edge.Options())
    plain, *plain_used = _run(bundle, edge.Options(shared_weights=False))
    per_block, *_ = _run(dataclasses.replace(bundle, batched=None), edge.Options())
    # only ai-edge-litert has the compiled model with XNNPACK's weight cache, and only CPUs with the features
    # its runtime is built for may load it (the A72 run of .ci/aarch64 takes the other branch); else the plain
    # interpreter
    expect = interpreter_package().name == "ai-edge-litert" and not cpu_missing_for_compiled_model()
    assert used == [expect] * 2
    assert plain_used == [False, False]
    # On x86 all three are the same samples; on ARM XNNPACK picks other kernels for T rows than for one row
    # (the emulated A76: 8e-4 max abs against per-block), so the mode's T-block tolerance is the contract.
    tol = bundle.batched.verification["tolerance_snr_db"]
    assert _snr(per_block, shared) >= tol and _snr(per_block, plain) >= tol and _snr(plain, shared) >= tol
    assert len(shared) > 40_000 and np.sqrt(np.mean(shared ** 2)) > 1e-3


def test_no_xnnpack_means_no_shared_weights(bundle):
    _, *used = _run(bundle, edge.Options(xnnpack=False))
    assert used == [False, False]


def test_the_command_says_nothing_more_when_t_block_graphs_run_shared(bundle, tmp_path):
    """The compiled-model runtime logs while it starts and as the process ends; the command shows neither."""
    out = tmp_path / "out.wav"
    r = subprocess.run([sys.executable, "-c", "import sys, edge.cli; sys.exit(edge.cli.console())", "denoise", "-q",
                        "--model", str(BUNDLE), str(EXAMPLE), "-o", str(out)],
                       capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stderr == "" and out.is_file()
    y, _ = sf.read(out, dtype="float32")
    x, _ = sf.read(EXAMPLE, dtype="float32")
    ref = edge.denoise(x, bundle)  # delay compensated, as the command writes it
    assert len(y) == len(ref) == len(x)
    assert np.max(np.abs(y - ref)) <= 1 / 32768  # written as 16-bit PCM


def test_progress_of_parallel_jobs_survives_the_runtime_starting_in_another_thread(bundle, tmp_path):
    """With --jobs 2 the runtime starts (its output captured) in one worker while the other may report: every
    progress line shows, no runtime log line does."""
    ins = []
    for k in range(4):
        ins.append(tmp_path / f"in{k}.wav")
        ins[-1].write_bytes(EXAMPLE.read_bytes())
    r = subprocess.run([sys.executable, "-c", "import sys, edge.cli; sys.exit(edge.cli.console())", "denoise",
                        "--jobs", "2", "--model", str(BUNDLE), *map(str, ins), "-o", str(tmp_path / "out")],
                       capture_output=True, text=True, timeout=180, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    lines = r.stderr.splitlines()
    assert sorted(line.split("]")[0] for line in lines if line.startswith("[")) == [f"[{k}/4" for k in range(1, 5)]
    assert not [line for line in lines if line.startswith(("INFO", "WARNING"))], r.stderr
    assert all((tmp_path / "out" / p.name).is_file() for p in ins)


def test_a_dropped_stream_leaves_its_t_block_graphs_to_the_next_and_no_state_with_them(bundle):
    x, _ = sf.read(EXAMPLE, dtype="float32")
    noise = np.random.default_rng(3).normal(0, 0.05, len(x)).astype(np.float32)
    first = StreamingDenoiser(bundle)
    first.process(noise)  # runs T-block calls: its graphs are loaded, its states are far from zero
    graphs = first._family._mask._t[0], first._family._frame._t[0]
    del first  # freed at once (no reference cycle): its graphs go to the idle pool
    second = StreamingDenoiser(bundle)
    y = np.concatenate([second.process(x), second.flush()])
    assert (second._family._mask._t[0], second._family._frame._t[0]) == graphs
    again, *_ = _run(bundle, edge.Options())  # the same graphs a third time: no state went along with them
    assert np.array_equal(y, again)
    fresh, *_ = _run(bundle, edge.Options(shared_weights=False))  # another pool key: graphs of its own
    assert _snr(fresh, y) >= bundle.batched.verification["tolerance_snr_db"]


A72 = "processor\t: 0\nFeatures\t: fp asimd evtstrm crc32 cpuid\nCPU part\t: 0xd08\n\n"
A76 = ("Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop "
       "asimddp\n")


def test_the_compiled_model_is_not_tried_on_a_cpu_its_runtime_would_crash_on():
    """ai-edge-litert 2.3's compiled-model runtime dies with SIGILL on a Cortex-A72 (Raspberry Pi 4: no LSE atomics,
    dotprod, fp16, ...), as .ci/aarch64 saw; a Pi 5's Cortex-A76 has all it needs. Every core must have them."""
    assert cpu_missing_for_compiled_model(A76, "aarch64") == []
    assert cpu_missing_for_compiled_model(A76 + A72, "aarch64") == ["aes", "asimddp", "asimdhp", "asimdrdm", "atomics",
                                                                    "fphp", "lrcpc", "sha2"]
    assert cpu_missing_for_compiled_model("flags\t: fpu sse sse2 avx\n", "x86_64")[:2] == ["aes", "cx16"]
    assert cpu_missing_for_compiled_model("", "aarch64") == ["/proc/cpuinfo"]
    assert cpu_missing_for_compiled_model(A76, "riscv64") == ["a known CPU (riscv64)"]
