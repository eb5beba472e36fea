"""The daemon's wire rules: JSON header lines, the token check, and the errors a connection ends with."""

from __future__ import annotations

import hmac
import json
from typing import Any

from ..errors import EdgeError

PROTOCOL = 1
HEADER_LIMIT = 4096
"""Bytes: the longest header line (JSON mode) or token line (raw mode) a client may send."""
RAW_READ = 16384
"""Bytes: the most raw-mode PCM read in one go (also capped by --max-message-bytes)."""


class DaemonError(EdgeError):
    """A daemon option, URI or connection is not what was expected."""


class Closed(Exception):
    """A connection ends; ``reason`` names why (counted in status), ``message`` goes to the client."""

    def __init__(self, reason: str, message: str = ""):
        super().__init__(message or reason)
        self.reason = reason
        self.message = message


def encode(obj: dict[str, Any]) -> bytes:
    """One header line: compact JSON and ``\\n``."""
    return json.dumps(obj, separators=(",", ":")).encode() + b"\n"


def parse_header(line: bytes) -> dict[str, Any]:
    """A header line -> its JSON object with a string ``type``; ``Closed("garbage")`` for anything else."""
    shown = repr(line[:40]) + ("..." if len(line) > 40 else "")
    try:
        msg = json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise Closed("garbage", f"expected a JSON header line such as {{\"type\":\"start\"}}, got {shown}") from None
    except RecursionError:  # deeply nested arrays/objects: json's C scanner recurses once per level
        raise Closed("garbage", f"expected a flat JSON object as header, got one nested too deeply: {shown}") from None
    if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
        raise Closed("garbage", f"expected a JSON object with a string \"type\", got {str(msg)[:60]}")
    return msg


def check_token(expected: str | None, given: Any, where: str = "first message") -> None:
    """The one token check of the daemon (serve and control sockets): constant time, ``Closed("auth")`` on a miss."""
    if expected is None:
        return
    if not isinstance(given, str) or not hmac.compare_digest(given.encode(), expected.encode()):
        raise Closed("auth", f"expected the server's token in the {where} (\"token\": ...), got "
                             + ("none" if given is None else "a wrong one"))
