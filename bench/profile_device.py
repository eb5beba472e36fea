"""Profile our float32 and dynamic DTLN bundles on this device with ``edge-denoise profile`` (one thread).

Writes bench/results/profile-LABEL.json; run it on each device (a Pi too) and commit the file, then
``python bench/report.py`` puts every device in one table.

    python bench/profile_device.py [--seconds 30] [--label NAME]
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import sys

from common import REPO, RESULTS, published_bundles


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=30.0, help="audio per bundle, seconds (default: 30)")
    p.add_argument("--label", default=None, help="device name in the table (default: board or CPU model)")
    p.add_argument("--threads", type=int, default=1, help="interpreter threads (default: 1)")
    args = p.parse_args()
    from edge.cli import main as cli
    from edge.profile import device_facts

    bundles = published_bundles(("float32", "dynamic"))
    label = args.label or device_facts()["label"]
    slug = re.sub(r"[^a-z0-9]+", "-", f"{platform.machine()} {label}".lower()).strip("-")
    out = RESULTS / f"profile-{slug}.json"
    argv = ["profile", "--model", bundles["float32"], "--model", bundles["dynamic"], "--seconds", f"{args.seconds:g}",
            "--threads", str(args.threads), "--json", os.path.relpath(out, REPO)]
    os.chdir(REPO)
    if args.label:
        argv += ["--label", args.label]
    return cli(argv)


if __name__ == "__main__":
    sys.exit(main())
