"""Torch-free storage of the data pipeline: memory maps and groups caches on disk, and the rules that keep them trustworthy.

Every file is written atomically (a temporary file in the same directory, fsynced, then renamed onto its
name: a crash or a full disk never leaves a half-written file that a later run could read), and builders
of one scan's directory take an exclusive ``flock`` on its ``.lock`` file, so concurrent processes or
ranks produce one valid cache while readers never wait. A memory map is rebuilt, and a groups cache
regrouped, when it is stale: the scan file's fingerprint (size, mtime, coordinates, sampled bytes) or
the format version changed; for a map, the diffraction units changed or its files were modified after
they were built; for a groups cache, any grouping setting, the grouping-algorithm version or the memory
map it was normalised from changed; a damaged file (bad checksum, wrong shapes) is rebuilt too.
Nothing is ever unpickled: NPZ files are read with ``allow_pickle=False`` and metadata is plain JSON
checked for the shape this package writes. No module here imports torch.
"""
