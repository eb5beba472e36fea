"""``edge-denoise serve`` and ``edge-denoise status``: options, and turning them into a server or a request."""

from __future__ import annotations

import argparse
import json
import logging
import os
import stat
import sys

from .listen import group_id
from .protocol import DaemonError
from .server import BATCH_MODES, Limits, Server, batchable
from .status import request_status, status_of
from .uri import Endpoint, controls_for, default_uri, parse_uri

log = logging.getLogger("edge.daemon")
TOKEN_ENV = "EDGE_DENOISE_TOKEN"


def _positive(kind, name):
    def conv(text: str):
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name}: expected a {kind.__name__}, got {text!r}") from None
        if v < 0:
            raise argparse.ArgumentTypeError(f"{name}: expected >= 0, got {text}")
        return v
    return conv


def _octal(text: str) -> int:
    try:
        return int(text, 8)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--socket-mode: expected octal permissions such as 660, "
                                         f"got {text!r}") from None


def _add_token_options(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--token", default=None,
                   help=f"shared secret {what} (visible in `ps`: prefer --token-file or ${TOKEN_ENV})")
    p.add_argument("--token-file", default=None, metavar="FILE",
                   help=f"read the token from the first line of FILE (default: ${TOKEN_ENV} if set)")


def token_from(args) -> str | None:
    """The token: --token, else the first line of --token-file, else $EDGE_DENOISE_TOKEN, else None."""
    if args.token is not None and args.token_file is not None:
        raise DaemonError("expected one of --token and --token-file, got both")
    if args.token is not None:
        token = args.token
    elif args.token_file is not None:
        try:
            with open(args.token_file, encoding="utf-8") as f:
                token = f.readline().strip()
            mode = os.stat(args.token_file).st_mode
        except (OSError, UnicodeDecodeError) as exc:
            raise DaemonError(f"--token-file {args.token_file}: cannot read it ({exc})") from None
        if mode & stat.S_IROTH:
            log.warning("--token-file %s is readable by every user; chmod o-r it", args.token_file)
    else:
        token = os.environ.get(TOKEN_ENV)
    if token is not None and not token:
        raise DaemonError("expected a non-empty token, got an empty one")
    return token


def _limit_options(p: argparse.ArgumentParser) -> None:
    d = Limits()
    p.add_argument("--max-connections", type=_positive(int, "--max-connections"), default=d.max_connections,
                   help=f"open client connections at most (default: {d.max_connections})")
    p.add_argument("--max-per-peer", type=_positive(int, "--max-per-peer"), default=d.max_per_peer,
                   help="open connections one peer (IP address; uid on a unix socket) may hold "
                        "(default: 0 = three quarters of --max-connections)")
    p.add_argument("--max-message-bytes", type=_positive(int, "--max-message-bytes"), default=d.max_message_bytes,
                   help=f"bytes of PCM in one audio message (default: {d.max_message_bytes})")
    p.add_argument("--output-buffer-bytes", type=_positive(int, "--output-buffer-bytes"),
                   default=d.output_buffer_bytes,
                   help="unsent answer bytes per connection before the server stops reading from it "
                        f"(default: {d.output_buffer_bytes})")
    p.add_argument("--idle-timeout", type=_positive(float, "--idle-timeout"), default=d.idle_timeout,
                   help="seconds a connection may wait before a message or leave its answer unread before it is "
                        f"closed; 0 = never (default: {d.idle_timeout:g})")
    p.add_argument("--header-timeout", type=_positive(float, "--header-timeout"), default=d.header_timeout,
                   help=f"seconds from a header's first byte to its end (default: {d.header_timeout:g})")
    p.add_argument("--min-rate", type=_positive(float, "--min-rate"), default=d.min_rate,
                   help="bytes/s: the slowest an audio payload or a raw stream may arrive (after "
                        f"--header-timeout seconds of grace); 0 = any (default: {d.min_rate:g})")
    p.add_argument("--drain-timeout", type=_positive(float, "--drain-timeout"), default=d.drain_timeout,
                   help="seconds open streams go on after SIGTERM before each is flushed and closed "
                        f"(default: {d.drain_timeout:g})")


def register(sub) -> None:
    from ..check import add_check_option
    from ..cli import add_model_options

    p = sub.add_parser("serve", help="run the denoising daemon (foreground; one stream per connection)",
                       description="Serve denoising streams on unix://, tcp:// or stdio:// URIs. JSON mode: a JSON "
                                   "header line, then PCM (see docs/daemon.md); ?mode=raw: s16le mono PCM in, "
                                   "denoised PCM out. Runs in the foreground and logs to stderr; SIGTERM drains and "
                                   "exits 0, SIGHUP reloads the model.")
    add_model_options(p)
    add_check_option(p, default=True)
    p.add_argument("--uri", action="append", default=None, metavar="URI",
                   help="where to listen; repeat for several (default: $EDGE_DENOISE_URI, else "
                        "unix://$XDG_RUNTIME_DIR/edge-denoise.sock, else unix:///run/edge-denoise/edge-denoise.sock)")
    p.add_argument("--control", default=None, metavar="URI",
                   help="control socket for `edge-denoise status` (default: one per --uri: X.sock -> "
                        "X.control.sock, tcp port + 1 on loopback; 'none' to disable)")
    _add_token_options(p, "clients must send; required for a non-loopback tcp:// bind")
    _limit_options(p)
    p.add_argument("--workers", type=_positive(int, "--workers"), default=None,
                   help="per-stream inference threads (default: the CPU cores this process may use)")
    p.add_argument("--batch", choices=BATCH_MODES, default="auto",
                   help="run the streams of a bundle with batch-axis graphs (python -m convert.streams) as one "
                        "batch per tick on the event loop's thread: auto = when the bundle has them, on = the bundle "
                        "must have them, off = one interpreter per stream on the --workers threads "
                        "(default: auto)")
    p.add_argument("--batch-wait", type=_positive(float, "--batch-wait"), default=1.0, metavar="MS",
                   help="batched: milliseconds a tick may wait for more streams' audio once a chunk arrived, at "
                        "most a quarter of that chunk's duration less 6 ms (it runs at once when every stream has "
                        "audio, or when 4 streams or fewer are open); more streams share each model call, each "
                        "chunk's answer comes up to this much later; at most one hop; 0 = run at once (default: 1)")
    p.add_argument("--socket-mode", type=_octal, default=0o660,
                   help="permissions of unix sockets, octal (default: 660)")
    p.add_argument("--socket-group", default=None, metavar="GROUP",
                   help="group of unix sockets, so that its members may connect (default: the process's group)")
    p.add_argument("--quiet", "-q", action="store_true", help="log warnings and errors only")
    p.set_defaults(func=run)

    s = sub.add_parser("status", help="print the live figures of a running daemon as JSON",
                       description="Connect to a daemon's control socket and print its figures as JSON: streams "
                                   "(seconds, real-time factor, deadline misses), totals, CPU, RSS, model.")
    s.add_argument("--uri", default=None, help="the daemon's serve URI (any of them); its control URI is derived "
                                                "from it, else a JSON-mode URI is asked itself (default: as for serve)")
    s.add_argument("--control", default=None, metavar="URI", help="the control URI itself (overrides --uri)")
    _add_token_options(s, "if the control socket is not on loopback")
    s.add_argument("--timeout", type=_positive(float, "--timeout"), default=5.0, help="seconds (default: 5)")
    s.set_defaults(func=run_status)


def _endpoints(args, token: str | None) -> tuple[list[Endpoint], list[Endpoint]]:
    eps = [parse_uri(u) for u in (args.uri or [default_uri()])]
    if sum(e.scheme == "stdio" for e in eps) > 1:
        raise DaemonError("expected at most one stdio:// URI, got several")
    if args.control == "none":
        controls = []
    elif args.control:
        control = parse_uri(args.control)
        if control.scheme == "stdio" or control.raw:
            raise DaemonError(f"--control {args.control}: expected a unix:// or tcp:// URI without ?mode")
        controls = [control]
    else:
        controls = controls_for(eps)
    for e in eps + controls:
        if e.scheme == "tcp" and not e.loopback and not token:
            raise DaemonError(f"{e} is not a loopback address: anyone on the network could use it; "
                              f"expected --token-file (or ${TOKEN_ENV}), got none")
    return eps, controls


def run(args) -> int:
    from ..check import check_at_start
    from ..cli import model_and_options

    token = token_from(args)
    eps, controls = _endpoints(args, token)
    if args.workers == 0:
        raise DaemonError("--workers: expected at least 1 inference thread, got 0")
    gid = group_id(args.socket_group) if args.socket_group else None
    bundle, options = model_and_options(args)
    if args.batch == "on" and not batchable(bundle):
        raise DaemonError(f"--batch on: {bundle.path} has no batch-axis graphs (add them with "
                          "python -m convert.streams BUNDLE --weights WEIGHTS)")
    if args.batch_wait > 1000 * bundle.block_shift / bundle.sample_rate:
        raise DaemonError(f"--batch-wait {args.batch_wait:g}: expected at most one hop of the model, "
                          f"{1000 * bundle.block_shift / bundle.sample_rate:g} ms")
    if not check_at_start(args, bundle, options):
        return 1
    workers = args.workers or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                               else os.cpu_count() or 1)
    limits = Limits(max_connections=args.max_connections, max_per_peer=args.max_per_peer,
                    max_message_bytes=args.max_message_bytes, output_buffer_bytes=args.output_buffer_bytes,
                    idle_timeout=args.idle_timeout, header_timeout=args.header_timeout, min_rate=args.min_rate,
                    drain_timeout=args.drain_timeout)
    server = Server(bundle, options, eps, controls, limits, token=token, workers=workers,
                    socket_mode=args.socket_mode, socket_gid=gid, batch=args.batch,
                    batch_wait=args.batch_wait / 1000)
    return server.run()


def run_status(args) -> int:
    token = token_from(args)
    if args.control:
        doc = request_status(parse_uri(args.control), token, args.timeout)
    else:
        doc = status_of(parse_uri(args.uri or default_uri()), token, args.timeout)
    json.dump(doc, sys.stdout, indent=1)
    sys.stdout.write("\n")
    return 0
