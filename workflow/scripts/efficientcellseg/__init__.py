"""EfficientCellSeg for the Cell Tracking Challenge.

Modules are split by concern; only :mod:`efficientcellseg.model`, :mod:`.training` and
:mod:`.inference` import TensorFlow, and they do so lazily, so the rest starts fast.
"""

__version__ = "0.1.0"
