"""``edge-denoise``: the command line. Subcommands live in their own modules and register here."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from dataclasses import dataclass

from .bundle import Bundle, load_bundle
from .errors import EdgeError
from .options import Options

# module -> each defines register(subparsers); a subcommand's handler returns the exit code.
SUBCOMMAND_MODULES = ("edge.cmd_denoise", "edge.evaluate", "edge.daemon", "edge.live", "edge.profile", "edge.check",
                      "edge.models")


def positive_int(text: str) -> int:
    """``--threads``, ``--jobs``: the one place the CLI checks a count (argparse turns the error into exit 2)."""
    try:
        v = int(text)
    except ValueError:
        v = 0
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return v


def add_model_options(p: argparse.ArgumentParser, several: bool = False) -> None:
    """``--model``, ``--threads``, ``--xnnpack``, ``--auto-level`` on a subcommand that runs a bundle (read back
    by ``ModelOptions``).

    ``several``: ``--model`` may be repeated (``profile`` measures several bundles in one run).
    """
    if several:
        p.add_argument("--model", "-m", metavar="DIR", action="append", default=None,
                       help="bundle folder; repeat to measure several in one interleaved run "
                            "(default: $EDGE_DENOISE_MODEL, else the default bundle: see `edge-denoise models`)")
    else:
        p.add_argument("--model", "-m", metavar="DIR", default=None,
                       help="bundle folder (default: $EDGE_DENOISE_MODEL, else the default bundle: "
                            "see `edge-denoise models`)")
    p.add_argument("--threads", type=positive_int, default=1, help="interpreter threads per stream (default: 1)")
    p.add_argument("--xnnpack", action=argparse.BooleanOptionalAction, default=True,
                   help="use the XNNPACK delegate (default: on)")
    p.add_argument("--auto-level", action=argparse.BooleanOptionalAction, default=False,
                   help="bring quiet input (level estimate below -26 dBFS) up to the models' training level with a "
                        "slow gain before the model, undone on its output; louder input is untouched (default: off)")


@dataclass(frozen=True)
class ModelOptions:
    """What ``add_model_options`` parsed: which bundle(s), and how to run them. The core never sees argparse."""

    models: tuple[str, ...]
    """Bundle folders as given; empty = the default bundle."""
    threads: int = 1
    """Interpreter threads per stream."""
    xnnpack: bool = True
    auto_level: bool = False

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> ModelOptions:
        given = args.model if isinstance(args.model, list) else [args.model] if args.model else []
        return cls(models=tuple(given), threads=args.threads, xnnpack=args.xnnpack, auto_level=args.auto_level)

    @property
    def options(self) -> Options:
        return Options(num_threads=self.threads, xnnpack=self.xnnpack, auto_level=self.auto_level)

    def paths(self) -> list[str]:
        """The bundle folders to run: as given, else the default one."""
        if self.models:
            return list(self.models)
        from .models import default_model

        return [default_model()]

    def load(self) -> Bundle:
        """The one bundle of a single-model command, loaded and verified (BundleError otherwise)."""
        paths = self.paths()
        if len(paths) != 1:
            raise EdgeError(f"expected one --model, got {len(paths)}")
        return load_bundle(paths[0])


def model_and_options(args: argparse.Namespace) -> tuple[Bundle, Options]:
    """(loaded bundle, stream options) from a subcommand's parsed model options."""
    chosen = ModelOptions.from_args(args)
    return chosen.load(), chosen.options


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


def console() -> int:
    """The ``edge-denoise`` command: ``main`` on ``sys.argv``; then, where file mode ran its T-block graphs
    through ai-edge-litert's compiled model, descriptor 2 closed to the runtime's exit-time log lines
    (``edge.interpreter.silence_native_teardown``)."""
    rc = main()
    from .interpreter import shared_weights_used, silence_native_teardown

    if shared_weights_used():
        silence_native_teardown()
    return rc


if __name__ == "__main__":
    sys.exit(console())
