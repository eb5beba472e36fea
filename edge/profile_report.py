"""``edge-denoise profile --report``: saved profiles from several devices as one markdown table or chart."""

from __future__ import annotations

import json
from typing import Any, Sequence

import numpy as np

from .errors import EdgeError

SCHEMA = "edge-denoise-profile"
SCHEMA_VERSION = 1


def load_profiles(paths: Sequence[str]) -> list[dict[str, Any]]:
    """Read profile JSON files; a file that is not one raises EdgeError naming it."""
    profiles = []
    for path in paths:
        try:
            with open(path, encoding="utf-8") as f:
                prof = json.load(f)
        except OSError as exc:
            raise EdgeError(f"{path}: cannot read ({exc.strerror})") from None
        except json.JSONDecodeError as exc:
            raise EdgeError(f"{path}: not valid JSON ({exc})") from None
        if not isinstance(prof, dict) or prof.get("schema") != SCHEMA:
            raise EdgeError(f"{path}: not an edge-denoise profile (expected \"schema\": \"{SCHEMA}\")")
        if prof.get("schema_version") != SCHEMA_VERSION:
            raise EdgeError(f"{path}: schema_version {prof.get('schema_version')!r}, this reads {SCHEMA_VERSION}")
        profiles.append(prof)
    return profiles


def report_rows(profiles: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per device x bundle, in file order."""
    rows = []
    for prof in profiles:
        dev = prof["device"]
        for rec in prof["bundles"]:
            st = rec["uninstrumented_ms"]
            rows.append({"device": dev["label"], "runtime": f"{dev['interpreter']} {dev['interpreter_version']}",
                         "threads": dev["threads"], "bundle": rec["name"], "quantization": rec["quantization"],
                         "sha": rec["sha256"][:8], "p50": st["p50"], "p99": st["p99"], "max": st["max"],
                         "rtf": rec["rtf"], "budget_p99": rec["budget_share"]["p99"],
                         "misses": rec["deadline_misses"], "blocks": rec["blocks"], "budget_ms": rec["budget_ms"]})
    return rows


def render_markdown(profiles: Sequence[dict[str, Any]]) -> str:
    """Markdown table (device x bundle: p50/p99 ms per block, RTF, budget share) and the commands."""
    out = ["| device | runtime, threads | bundle | p50 ms/block | p99 ms/block | real-time factor | "
           "budget used (p99) | deadline misses |",
           "|---|---|---|---|---|---|---|---|"]
    for r in report_rows(profiles):
        out.append(f"| {r['device']} | {r['runtime']}, {r['threads']} | {r['bundle']} ({r['quantization']}, "
                   f"{r['sha']}) | {r['p50']:.3f} | {r['p99']:.3f} | {r['rtf']:.4f} | {100 * r['budget_p99']:.2f}% "
                   f"of {r['budget_ms']:.3g} ms | {r['misses']} / {r['blocks']} |")
    out.append("")
    out.append("Block times are whole `process()` calls of one block shift each, without the per-stage timers, "
               "after warm-up; the bundles of one file ran interleaved in one process. Produced by:")
    out.append("")
    for prof in profiles:
        dev = prof["device"]
        out.append(f"- {dev['label']}, {dev['os']}, Python {dev['python']}, numpy {dev['numpy']}, "
                   f"{prof['settings']['interleave']}, {prof['created']}: "
                   f"`{prof.get('command') or 'edge-denoise profile'}`")
    return "\n".join(out) + "\n"


def render_png(profiles: Sequence[dict[str, Any]], path: str) -> None:
    """Bar chart of p50 and p99 ms per block for each device x bundle (needs matplotlib)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report_rows(profiles)
    labels = [f"{r['device']}\n{r['bundle']} ({r['quantization']})" for r in rows]
    y = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(9, 1.0 + 0.6 * len(rows)))
    ax.barh(y - 0.2, [r["p50"] for r in rows], height=0.4, label="p50")
    ax.barh(y + 0.2, [r["p99"] for r in rows], height=0.4, label="p99")
    for budget in sorted({r["budget_ms"] for r in rows}):
        ax.axvline(budget, color="k", linestyle="--", linewidth=1)
        ax.text(budget, 0.98, f"deadline {budget:.3g} ms ", ha="right", va="top", fontsize=8,
                transform=ax.get_xaxis_transform())
    ax.set_xscale("log")
    ax.set_yticks(y, labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("ms per block (log scale)")
    ax.legend(loc="lower right")
    ax.set_title("edge-denoise profile: time per block")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
