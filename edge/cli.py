"""``edge-denoise``: the command line. Subcommands live in their own modules and register here."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from .errors import EdgeError

# module -> each defines register(subparsers); a subcommand's handler returns the exit code.
SUBCOMMAND_MODULES = ("edge.cmd_denoise", "edge.evaluate", "edge.daemon", "edge.live", "edge.profile", "edge.check",
                      "edge.models")


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    p = argparse.ArgumentParser(
        prog="edge-denoise",
        description="Neural speech noise suppression on small devices: files, live audio, a daemon, profiling.")
    p.add_argument("--version", action="version", version=f"edge-denoise {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMAND_MODULES:
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                continue
            raise
        mod.register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO if not getattr(args, "quiet", False) else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        return int(args.func(args))
    except EdgeError as exc:
        print(f"edge-denoise {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"edge-denoise {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 1


if __name__ == "__main__":
    sys.exit(main())
