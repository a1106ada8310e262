"""PyTorch side of PtychoPINN's data pipeline: bridges, memory map, grouping cache, dataset."""

import logging

logging.getLogger(__name__).addHandler(logging.NullHandler())
