"""Each damage or ambiguity of a scan, memory map or groups cache is reported once per construction, not once per check; about 1.5 s."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from ptycho_torch.memmap_bridge import MemmapDatasetBridge
from ptycho_torch.store.memmap import DIFFRACTION, MANIFEST
from tests.reliability.support import copy_embedded
from tests.torch.test_data_pipeline import memmap_config


def build(npz, data_dir) -> MemmapDatasetBridge:
    return MemmapDatasetBridge(npz, memmap_config(npz), data_dir, progress=False)


def edit_map(cache_path) -> str:
    diffraction = np.load(cache_path.parent / DIFFRACTION, mmap_mode="r+")
    diffraction[0, 0, 0] += 1.0
    diffraction.flush()
    del diffraction
    return "is not reusable (diffraction.npy was modified"


def garble_manifest(cache_path) -> str:
    (cache_path.parent / MANIFEST).write_text("not json")
    return "ignoring unreadable memory-map manifest"


def truncate_cache(cache_path) -> str:
    cache_path.write_bytes(cache_path.read_bytes()[:100])
    return "is damaged"


@pytest.mark.parametrize("damage", [edit_map, garble_manifest, truncate_cache], ids=lambda f: f.__name__)
def test_damage_is_warned_once_and_rebuilt(tmp_path, caplog, damage):
    npz = copy_embedded(tmp_path / "scan.npz")
    data_dir = tmp_path / "data"
    phrase = damage(build(npz, data_dir).cache_path)

    caplog.set_level(logging.WARNING)
    bridge = build(npz, data_dir)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and phrase in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert bridge.experiment.regrouped
    caplog.clear()
    assert build(npz, data_dir).experiment.regrouped is False
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text


def test_ambiguous_cube_layout_is_warned_once_per_construction(tmp_path, caplog):
    with np.load(copy_embedded(tmp_path / "full.npz"), allow_pickle=False) as full:
        arrays = {name: full[name] for name in full.files}
    n = arrays["diffraction"].shape[-1]  # n == N: a (64, 64, 64) cube, (n, N, N) or legacy (N, N, n)
    cube = {name: (value[:n] if name not in ("probeGuess", "objectGuess") else value) for name, value in arrays.items()}
    npz = tmp_path / "cube.npz"
    np.savez(npz, **cube)
    caplog.set_level(logging.WARNING)
    MemmapDatasetBridge(npz, memmap_config(npz, n_groups=16), tmp_path / "data", progress=False)
    warnings = [r.getMessage() for r in caplog.records if "could be (n, N, N) or a legacy (N, N, n)" in r.getMessage()]
    assert len(warnings) == 1, warnings
