"""The denoising daemon (``edge-denoise serve``/``status``): URI-addressed, one stream per connection.

Modules: ``uri`` (addresses), ``protocol`` (header lines, token check), ``session`` (one connection),
``scheduler`` (round-robin inference threads), ``pcm`` (per-stream denoisers), ``batching`` (streams
as one batch per tick, on the event loop), ``listen`` (accepting), ``server`` (limits, signals,
reload), ``status`` (figures, control sockets), ``client`` (a blocking client), ``cli`` (the commands).
"""

from ..audio import float_to_pcm16, pcm16_to_float
from .cli import register, run, run_status
from .client import Client
from .pcm import PcmStream
from .protocol import HEADER_LIMIT, PROTOCOL, DaemonError
from .server import Limits, Server
from .status import process_figures, request_status
from .uri import Endpoint, control_for, default_uri, open_socket, parse_uri

__all__ = ["HEADER_LIMIT", "PROTOCOL", "Client", "DaemonError", "Endpoint", "Limits", "PcmStream", "Server",
           "control_for", "default_uri", "float_to_pcm16", "open_socket", "parse_uri", "pcm16_to_float",
           "process_figures", "register", "request_status", "run", "run_status"]
