"""Import TensorFlow without its start-up banner.

TensorFlow 2.21 writes absl/oneDNN/CUDA lines to file descriptor 2 while it loads, whatever
``TF_CPP_MIN_LOG_LEVEL`` says. The converter's commands promise quiet output, so the import (and
the device probe that prints the cuInit line) runs with descriptor 2 sent to a temporary file,
which is shown only if the import fails.
"""

from __future__ import annotations

import importlib.util
import os
import sys

from edge.interpreter import captured_stderr

from .errors import ConvertError


def import_tensorflow():
    """``tensorflow``, imported once with its C++ start-up output swallowed.

    ConvertError when it is not installed: the converter's dependencies come with the ``convert`` extra.
    """
    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"]
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if importlib.util.find_spec("tensorflow") is None:
        raise ConvertError("the converter needs TensorFlow: pip install '.[convert]' in the checkout "
                           "(the runtime alone, pip install ., does without)")
    lines: list[bytes] = []
    try:
        with captured_stderr() as lines:
            import tensorflow as tf

            tf.config.list_physical_devices()
    except BaseException:
        os.write(2, b"".join(lines))
        raise
    return tf
