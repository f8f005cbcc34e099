"""EfficientCellSeg for the Cell Tracking Challenge.

Modules are split by concern; only :mod:`efficientcellseg.model`, :mod:`.training` and
:mod:`.inference` import TensorFlow, and they do so lazily, so the rest starts fast.
"""

__version__ = "0.1.0"

import os as _os

# Quiet TensorFlow's C++ start-up chatter and pin Keras to TensorFlow, before anything imports it.
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
_os.environ.setdefault("KERAS_BACKEND", "tensorflow")
