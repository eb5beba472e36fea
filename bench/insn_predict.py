"""From instructions per block to a Raspberry Pi time per block: a prediction under a stated IPC assumption.

Not a measurement. Time = instructions / (IPC x clock). The instruction counts are measured (qemu,
exact for the emulated instruction set); the IPC range is assumed, and it is where the uncertainty
lives: it folds in cache misses, DRAM stalls and branch mispredictions, none of which qemu models.
"""

from __future__ import annotations

from typing import Any

BLOCK_MS = 8.0
"""One block: 128 samples at 16 kHz."""

# Assumptions, not measurements. Sustained instructions per cycle of the whole loop (the CPython
# interpreter's dispatch, numpy's small-array overheads, then dense NEON kernels in XNNPACK):
# - Cortex-A72 (3-wide out of order): 0.6-1.2. Interpreter code runs near the low end, SIMD
#   kernels near the high end; the Pi 4's 1 MB L2 does not hold a float32 DTLN's ~4 MB of weights,
#   so each block streams them from LPDDR4 and the low end is the likelier one for float32.
# - Cortex-A76 (4-wide, larger windows and caches; the Pi 5 adds a 2 MB L3): 1.0-2.0.
DEVICES = {
    "cortex-a72": {"device": "Raspberry Pi 4 (Cortex-A72)", "ghz": (1.5, 1.8), "ipc": (0.6, 1.2),
                   "clock_note": "1.5 GHz (early boards), 1.8 GHz (boards from 2020 with current firmware)"},
    "cortex-a76": {"device": "Raspberry Pi 5 (Cortex-A76)", "ghz": (2.4, 2.4), "ipc": (1.0, 2.0),
                   "clock_note": "2.4 GHz"},
}


def predict(counts: list[dict[str, Any]]) -> dict[str, Any]:
    """Per count row: predicted ms per block and real-time factor, best and worst case of the assumptions."""
    rows = []
    for c in counts:
        dev = DEVICES.get(c["cpu"])
        if dev is None:
            continue
        m = c["minsn_per_block"]
        best = m / (dev["ipc"][1] * dev["ghz"][1])  # M instructions / (IPC x GHz) = ms
        worst = m / (dev["ipc"][0] * dev["ghz"][0])
        rows.append({"device": dev["device"], "what": c["what"], "minsn_per_block": m,
                     "ms_per_block": [round(best, 2), round(worst, 2)],
                     "real_time_factor": [round(best / BLOCK_MS, 3), round(worst / BLOCK_MS, 3)]})
    return {
        "label": "PREDICTION, not a measurement",
        "method": "ms per block = (M instructions per block) / (IPC x GHz); real-time factor = ms per block / 8 ms. "
                  "Range: best = high IPC at the high clock, worst = low IPC at the low clock.",
        "assumptions": {cpu: dict(d) for cpu, d in DEVICES.items()},
        "ipc_basis": "assumed sustained IPC for mixed interpreter + NEON code on these cores, not measured: "
                     "no hardware counters on the machine that counted, and no Pi at hand",
        "rows": rows,
    }


def table_markdown(result: dict[str, Any]) -> str:
    """The counts side by side per CPU, then the Pi prediction, as markdown."""
    counts = result["counts"]
    cpus = list(dict.fromkeys(c["cpu"] for c in counts))
    whats = list(dict.fromkeys(c["what"] for c in counts))
    by = {(c["cpu"], c["what"]): c["minsn_per_block"] for c in counts}
    s = result["settings"]
    out = [f"### {result['title']}", "",
           f"{s['qemu']}, {s['plugin']}, arm64 root {s['arm64 root']}; method: {s['method']} with blocks "
           f"{s['blocks'][0]} and {s['blocks'][1]}; {s['loop']}.", "",
           "| loop | " + " | ".join(f"{c} (M instructions / block)" for c in cpus) + " |",
           "|---|" + "---:|" * len(cpus)]
    for w in whats:
        out.append(f"| {w} | " + " | ".join(f"{by[(c, w)]:.3f}" if (c, w) in by else "-" for c in cpus) + " |")
    for mode in ("float32", "dynamic"):  # the same weights through both loops
        pub = next((w for w in whats if w.startswith(f"published DTLN loop, {mode}")), None)
        ours = f"pretrained_model/dtln-published/{mode}"
        ratios = [f"{c} {by[(c, ours)] / by[(c, pub)]:.3f}" for c in cpus if (c, ours) in by and (c, pub) in by]
        if ratios:
            out += ["", f"Ours / the published loop on the published weights, {mode}: " + ", ".join(ratios) + "."]
    pred = result["prediction"]
    out += ["", f"**{pred['label']}**: {pred['method']}", ""]
    for a in pred["assumptions"].values():
        out.append(f"- {a['device']}: assumed IPC {a['ipc'][0]}-{a['ipc'][1]}, clock {a['clock_note']}.")
    out += ["", "| device | loop | M instructions / block | predicted ms / block | predicted real-time factor |",
            "|---|---|---:|---:|---:|"]
    for r in pred["rows"]:
        out.append(f"| {r['device']} | {r['what']} | {r['minsn_per_block']:.3f} | "
                   f"{r['ms_per_block'][0]:.2f}-{r['ms_per_block'][1]:.2f} | "
                   f"{r['real_time_factor'][0]:.3f}-{r['real_time_factor'][1]:.3f} |")
    return "\n".join(out) + "\n"
