"""NumPy reference implementation of PtychoPINN's data pipeline (no TensorFlow, no torch)."""

import logging

logging.getLogger(__name__).addHandler(logging.NullHandler())
