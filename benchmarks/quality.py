"""Reconstruction quality against a known object: moved to :mod:`ptycho.quality` (re-exported here for the benchmarks)."""

from ptycho.quality import Quality, reconstruction_quality

__all__ = ["Quality", "reconstruction_quality"]
