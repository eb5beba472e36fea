"""Exceptions raised by the edge runtime; each message says what was expected and what came."""


class EdgeError(Exception):
    """Base class of every error the runtime raises on purpose."""


class BundleError(EdgeError):
    """A model bundle is missing, corrupt, or does not match its manifest."""


class AudioError(EdgeError, ValueError):
    """Audio given to the runtime is not what it can process."""


class RuntimeMissingError(EdgeError, ImportError):
    """No tflite interpreter package is installed."""
