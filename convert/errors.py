"""Errors of the converter; the CLI turns each into one line and exit code 2 (verification: 1)."""


class ConvertError(Exception):
    """Bad input to the converter (exit code 2)."""


class WeightsError(ConvertError):
    """A weights file is missing, corrupt, or not the expected architecture."""


class VerificationError(Exception):
    """A converted bundle misses its mode's tolerance (exit code 1); nothing is written."""
