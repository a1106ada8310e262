"""Valid JSON of the wrong shape in a manifest or a cache's metadata is damage: a WARNING and a rebuild, never a crash."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from ptycho_torch.store.inventory import list_caches
from ptycho_torch.memmap_bridge import MemmapDatasetBridge
from ptycho_torch.store.memmap import MANIFEST
from tests.reliability.support import copy_embedded
from tests.torch.test_data_pipeline import assert_same_grouped_data, baseline_grouped, memmap_config

DEPTH = 100_000  # deeper than the interpreter's recursion limit

WRONG_SHAPES = {
    "fingerprint null": lambda values: json.dumps({**values, "fingerprint": None}),
    "fingerprint a list": lambda values: json.dumps({**values, "fingerprint": [1, 2, 3]}),
    "a list": lambda values: "[]",
    "a number": lambda values: "42",
    "deeply nested arrays": lambda values: "[" * DEPTH + "]" * DEPTH,
    "grouping null": lambda values: json.dumps({**values, "grouping": None}),
    "format_version a string": lambda values: json.dumps({**values, "format_version": "1"}),
}


def build(npz, data_dir) -> MemmapDatasetBridge:
    return MemmapDatasetBridge(npz, memmap_config(npz), data_dir, progress=False)


def rewrite_cache_metadata(path, make_text) -> None:
    with np.load(path, allow_pickle=False) as cache:
        arrays = {name: cache[name] for name in cache.files}
    arrays["metadata"] = np.array(make_text(json.loads(str(arrays["metadata"]))))
    with open(path, "wb") as handle:
        np.savez(handle, **arrays)


def rewrite_manifest(path, make_text) -> None:
    path.write_text(make_text(json.loads(path.read_text())))


@pytest.mark.parametrize("where", ["manifest", "groups cache"])
@pytest.mark.parametrize("shape", list(WRONG_SHAPES))
def test_wrong_shaped_json_is_damage_rebuilt_with_a_warning(tmp_path, caplog, where, shape):
    npz = copy_embedded(tmp_path / "scan.npz")
    data_dir = tmp_path / "data"
    cache = build(npz, data_dir).cache_path
    damaged = cache.parent / MANIFEST if where == "manifest" else cache
    (rewrite_manifest if where == "manifest" else rewrite_cache_metadata)(damaged, WRONG_SHAPES[shape])

    entries = list_caches(data_dir)  # what `ptycho-memmap info` shows
    # a damaged manifest means the map is rebuilt with a new identity, so its groups cache is stale too
    assert [e.valid for e in entries] == ([False, False] if where == "manifest" else [True, False])

    caplog.set_level(logging.WARNING)
    bridge = build(npz, data_dir)
    assert any(r.levelno == logging.WARNING and str(damaged) in r.getMessage() for r in caplog.records), caplog.text
    assert bridge.experiment.regrouped
    assert_same_grouped_data(bridge.grouped_data(), baseline_grouped())
    assert all(e.valid for e in list_caches(data_dir))
