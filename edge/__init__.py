"""edge: a minimal streaming runtime for neural noise suppression (numpy + a tflite interpreter)."""

from .bundle import Bundle, load_bundle
from .errors import AudioError, BundleError, EdgeError, RuntimeMissingError
from .options import Options
from .stream import AlignedStream, StreamingDenoiser, denoise

__version__ = "0.1.0"

__all__ = ["AlignedStream", "AudioError", "Bundle", "BundleError", "EdgeError", "Options", "RuntimeMissingError",
           "StreamingDenoiser", "__version__", "denoise", "load_bundle"]
