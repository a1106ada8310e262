"""Bad scan files, caches and settings through the user-facing entry points: refused with a message naming
the file, key, index and fix; hostile content never unpickled; odd paths kept inside the data directory."""

from __future__ import annotations

import io
import json
import logging
import os
import pickle
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest

from ptycho.scan_file import ScanFileError
from ptycho_torch.experiment import dataset_directory
from ptycho_torch.store.groups_cache import SUFFIX
from ptycho_torch.memmap_bridge import MemmapDatasetBridge
from ptycho_torch.store.memmap import DIFFRACTION, MANIFEST
from ptycho_torch.torch_support import TORCH_AVAILABLE
from tests.reliability.support import CACHE_GLOB, copy_embedded, file_identity, scan_directory, temporaries, tree_state
from tests.torch.test_data_pipeline import assert_same_grouped_data, baseline_grouped, embedded_arrays, memmap_config, save_variant

ENTRIES = ["bridge", pytest.param("dataset", marks=pytest.mark.skipif(not TORCH_AVAILABLE, reason="torch is not installed"))]


def serve(entry: str, npz: Path, data_dir: Path, config=None, **kwargs):
    """Construct the user-facing object; return what the test inspects (grouped data and the experiment)."""
    config = memmap_config(npz) if config is None else config
    if entry == "bridge":
        bridge = MemmapDatasetBridge(npz, config, data_dir, progress=False, **kwargs)
        return bridge.experiment, bridge.grouped_data()
    pytest.importorskip("tensordict")
    from ptycho_torch.dset_loader_pt_mmap import PtychoDataset

    dataset = PtychoDataset(npz, config=config, data_dir=data_dir, progress=False, **kwargs)
    (experiment,) = dataset.experiments
    batch, _, _ = dataset[list(range(len(dataset)))]
    return experiment, {"nn_indices": batch["nn_indices"].numpy(), "X_full": batch["images"].numpy().transpose(0, 2, 3, 1)}


def assert_served_baseline(entry: str, served: dict) -> None:
    expected = baseline_grouped()
    if entry == "bridge":
        assert_same_grouped_data(served, expected)
    else:
        np.testing.assert_array_equal(served["nn_indices"], expected["nn_indices"])
        np.testing.assert_allclose(served["X_full"], expected["X_full"], rtol=1e-6)


def assert_refused(entry, npz, data_dir, error, *fragments, config=None):
    """The entry point raises ``error`` whose message holds every fragment, and leaves nothing to trust."""
    with pytest.raises(error) as caught:
        serve(entry, npz, data_dir, config=config)
    message = str(caught.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in: {message}"
    directory = scan_directory(data_dir, npz)
    if directory.exists():
        assert not list(directory.glob(CACHE_GLOB)) and temporaries(directory) == []
    return message


# --- malformed scan files -----------------------------------------------------------------------

ARRAYS = embedded_arrays()
DIFF = ARRAYS["diffraction"]


def with_value(index, value, dtype=None):
    stack = DIFF.copy() if dtype is None else DIFF.astype(dtype)
    stack[index] = value
    return stack


def other_diff3d():
    stack = DIFF.copy()
    stack[5, 1, 1] += 1
    return stack


def nan_x():
    x = ARRAYS["xcoords"].copy()
    x[7] = np.nan
    return x


MALFORMED = {
    "missing xcoords": (dict(xcoords=None), ["key 'xcoords'", "store scan x positions"]),
    "missing ycoords": (dict(ycoords=None), ["key 'ycoords'", "store scan y positions"]),
    "missing probeGuess": (dict(probeGuess=None), ["key 'probeGuess'", "store the complex probe"]),
    "missing diffraction": (dict(diffraction=None), ["key 'diffraction'", "(or legacy 'diff3d')"]),
    "diffraction and diff3d differ": (dict(diff3d=other_diff3d()), ["'diffraction' and 'diff3d'", "keep only one"]),
    "xcoords shorter": (dict(xcoords=ARRAYS["xcoords"][:-1]), ["key 'xcoords' has shape (511,)", "512 diffraction patterns", "one position per pattern"]),
    "ycoords_start longer": (dict(ycoords_start=np.append(ARRAYS["ycoords"], 1.0)), ["key 'ycoords_start' has shape (513,)", "one position per pattern"]),
    "scan_index shorter": (dict(scan_index=ARRAYS["scan_index"][:10]), ["key 'scan_index' must be 512 integers", "one per pattern"]),
    "non-square patterns": (dict(diffraction=np.ascontiguousarray(DIFF[:, :, :32])), ["key 'diffraction'", "64 x 32", "crop or pad"]),
    "2-D diffraction": (dict(diffraction=DIFF.reshape(512, -1)), ["key 'diffraction'", "(512, 4096)", "3-D stack"]),
    "complex diffraction": (dict(diffraction=DIFF.astype(np.complex64)), ["key 'diffraction'", "complex", "abs()"]),
    "nan xcoords": (dict(xcoords=nan_x()), ["key 'xcoords'[7] is nan", "finite"]),
}


@pytest.mark.parametrize("entry", ENTRIES)
@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_scan_is_refused_naming_file_key_and_fix(tmp_path, entry, case):
    changes, fragments = MALFORMED[case]
    npz = save_variant(tmp_path / "scan.npz", **changes)
    assert_refused(entry, npz, tmp_path / "data", ScanFileError, str(npz), *fragments)


BAD_VALUES = {
    "nan": (dict(diffraction=with_value((123, 5, 6), np.nan)), ["key 'diffraction'[123]", "not finite value nan", "pixel (5, 6)"]),
    "inf": (dict(diffraction=with_value((200, 0, 63), np.inf)), ["key 'diffraction'[200]", "not finite value inf", "pixel (0, 63)"]),
    "negative": (dict(diffraction=with_value((511, 63, 0), -1.0)), ["key 'diffraction'[511]", "negative value -1.0", "pixel (63, 0)"]),
    "negative count": (dict(diffraction=with_value((77, 3, 4), -5, np.int32)), ["key 'diffraction'[77]", "negative count -5", "pixel (3, 4)", "counts must be >= 0"]),
}


@pytest.mark.parametrize("entry", ENTRIES)
@pytest.mark.parametrize("case", sorted(BAD_VALUES))
def test_bad_values_name_the_pattern_and_pixel_and_leave_no_map(tmp_path, entry, case):
    changes, fragments = BAD_VALUES[case]
    npz = save_variant(tmp_path / "scan.npz", **changes)
    assert_refused(entry, npz, tmp_path / "data", ValueError, str(npz), *fragments, "mask")
    directory = scan_directory(tmp_path / "data", npz)
    assert not (directory / MANIFEST).exists() and not (directory / DIFFRACTION).exists()


@pytest.mark.parametrize("layout", ["legacy (N, N, n)", "Fortran order"])
def test_bad_value_position_is_exact_in_transposed_layouts_read_in_many_blocks(tmp_path, monkeypatch, layout):
    stack = with_value((300, 40, 6), np.nan)
    stored = np.ascontiguousarray(stack.transpose(1, 2, 0)) if layout.startswith("legacy") else np.asfortranarray(stack)
    npz = save_variant(tmp_path / "scan.npz", diffraction=None, diff3d=stored)
    monkeypatch.setattr("ptycho.scan_file.BLOCK_BYTES", 2**16)  # many blocks, each across every pattern
    assert_refused("bridge", npz, tmp_path / "data", ValueError, str(npz), "key 'diff3d'[300]", "pixel (40, 6)")


def test_transposed_layouts_read_in_many_blocks_equal_the_baseline(tmp_path, monkeypatch):
    monkeypatch.setattr("ptycho.scan_file.BLOCK_BYTES", 2**16)
    for name, stored in [("legacy", np.ascontiguousarray(DIFF.transpose(1, 2, 0))), ("fortran", np.asfortranarray(DIFF))]:
        npz = save_variant(tmp_path / f"{name}.npz", diffraction=None, diff3d=stored)
        _, served = serve("bridge", npz, tmp_path / "data")
        assert_same_grouped_data(served, baseline_grouped())


@pytest.mark.parametrize("entry", ENTRIES)
@pytest.mark.parametrize("cut", ["truncated", "not a zip"])
def test_truncated_or_non_zip_npz(tmp_path, entry, cut):
    npz = copy_embedded(tmp_path / "scan.npz")
    data = npz.read_bytes()
    npz.write_bytes(data[: len(data) // 2] if cut == "truncated" else b"PK but not really a zip archive " * 64)
    assert_refused(entry, npz, tmp_path / "data", ScanFileError, str(npz), "truncated or not a zip archive", "numpy.savez")


def test_corrupted_diffraction_bytes_fail_the_crc_and_leave_no_map(tmp_path):
    """Valid-looking (finite, non-negative) but wrong bytes: only the zip CRC can tell, at the end of the copy."""
    npz = save_variant(tmp_path / "scan.npz")
    data = bytearray(npz.read_bytes())
    at = bytes(data).find(DIFF[100].tobytes())
    assert at > 0
    data[at : at + 4096] = bytes(4096)  # zeros are a valid amplitude
    npz.write_bytes(bytes(data))
    assert_refused("bridge", npz, tmp_path / "data", ScanFileError, str(npz), "key 'diffraction' is damaged", "CRC")
    assert not (scan_directory(tmp_path / "data", npz) / MANIFEST).exists()


# --- pickles and lying headers ------------------------------------------------------------------


class LeavesAMark:
    """Unpickling this creates a file: proof that pickle ran."""

    def __init__(self, mark: Path):
        self.mark = mark

    def __reduce__(self):
        return (open, (str(self.mark), "w"))


def pickled(mark: Path) -> np.ndarray:
    objects = np.empty(2, dtype=object)
    objects[0], objects[1] = LeavesAMark(mark), "payload"
    return objects


@pytest.mark.parametrize("entry", ENTRIES)
@pytest.mark.parametrize("key", ["diffraction", "extra"])
def test_pickled_members_are_refused_and_never_unpickled(tmp_path, entry, key):
    mark = tmp_path / "pickle-ran"
    pickle.loads(pickle.dumps(LeavesAMark(mark))).close()  # the payload works when unpickled ...
    assert mark.exists()
    mark.unlink()
    npz = save_variant(tmp_path / "scan.npz", **{key: pickled(mark)})
    assert_refused(entry, npz, tmp_path / "data", ScanFileError, str(npz), f"key {key!r} holds Python objects", "refused")
    assert not mark.exists()  # ... and never ran here


def npz_with_header(path: Path, key: str, shape: tuple, descr: str, data: bytes, **arrays) -> Path:
    """An NPZ whose member ``key`` declares ``shape`` but stores only ``data``."""
    with zipfile.ZipFile(path, "w") as archive:
        for name, array in arrays.items():
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.asarray(array), allow_pickle=False)
            archive.writestr(f"{name}.npy", buffer.getvalue())
        buffer = io.BytesIO()
        np.lib.format.write_array_header_1_0(buffer, {"descr": descr, "fortran_order": False, "shape": shape})
        archive.writestr(f"{key}.npy", buffer.getvalue() + data)
    return path


@pytest.mark.parametrize("key, shape", [("objectGuess", (10**6, 10**6)), ("xcoords", (10**12,)), ("diffraction", (10**9, 64, 64))])
def test_huge_declared_shape_is_refused_before_allocating(tmp_path, key, shape):
    arrays = {k: v for k, v in ARRAYS.items() if k != key}
    descr = {"objectGuess": "<c8", "xcoords": "<f8", "diffraction": "<f4"}[key]
    npz = npz_with_header(tmp_path / "scan.npz", key, shape, descr, b"\0" * 64, **arrays)
    assert_refused("bridge", npz, tmp_path / "data", ScanFileError, str(npz), f"key {key!r} declares shape {shape}", "truncated or corrupt")


def test_per_pattern_members_are_checked_before_they_are_read(tmp_path, monkeypatch):
    """A compressed 80 MB 'xcoords' (a decompression bomb of zeros) is refused from its header alone."""
    npz = tmp_path / "scan.npz"
    np.savez_compressed(npz, **{**ARRAYS, "xcoords": np.zeros(10**7)})
    assert npz.stat().st_size < 5 * 2**20
    reads = []
    real = np.lib.format.read_array
    monkeypatch.setattr(np.lib.format, "read_array", lambda stream, *a, **k: reads.append(getattr(stream, "name", "?")) or real(stream, *a, **k))
    assert_refused("bridge", npz, tmp_path / "data", ScanFileError, str(npz), "key 'xcoords' has shape (10000000,)", "512 diffraction patterns")
    assert "xcoords.npy" not in reads


# --- damaged and hostile caches -----------------------------------------------------------------


def rewrite_cache(path: Path, **changes) -> None:
    with np.load(path, allow_pickle=False) as cache:
        members = {name: cache[name] for name in cache.files}
    members.update(changes)
    with open(path, "wb") as handle:
        np.savez(handle, **members)


@pytest.mark.parametrize("entry", ENTRIES)
def test_tampered_cache_fails_its_checksum_and_is_rebuilt(tmp_path, entry, caplog):
    npz = copy_embedded(tmp_path / "scan.npz")
    experiment, _ = serve(entry, npz, tmp_path / "data")
    with np.load(experiment.cache_path, allow_pickle=False) as cache:
        nn = cache["nn_indices"].copy()
    nn[[0, 1]] = nn[[1, 0]]  # plausible indices, wrong groups; metadata untouched
    rewrite_cache(experiment.cache_path, nn_indices=nn)
    with caplog.at_level(logging.WARNING):
        again, served = serve(entry, npz, tmp_path / "data")
    assert "does not match its checksum" in caplog.text and again.cache_path.name in caplog.text
    assert again.regrouped
    assert_served_baseline(entry, served)


@pytest.mark.parametrize("entry", ENTRIES)
def test_forged_cache_with_a_valid_checksum_but_impossible_indices_is_rebuilt(tmp_path, entry, caplog):
    """A checksum catches accidents, not forgeries: indices are range-checked before any batch uses them."""
    from ptycho.raw_data import Grouping
    from ptycho_torch.store.groups_cache import read_metadata, write_cache
    from ptycho_torch.store.fingerprint import Fingerprint
    from ptycho_torch.store.inventory import grouping_key_of

    npz = copy_embedded(tmp_path / "scan.npz")
    experiment, _ = serve(entry, npz, tmp_path / "data")
    metadata = read_metadata(experiment.cache_path)
    forged = experiment.grouping.arrays()
    forged["nn_indices"] = forged["nn_indices"] + np.int32(10_000)  # far past the 512 patterns
    write_cache(experiment.cache_path, Grouping(**forged, norm=experiment.grouping.norm), grouping_key_of(metadata),
                Fingerprint.from_dict(metadata["fingerprint"]), metadata["source"], metadata["memory_map"])
    with caplog.at_level(logging.WARNING):
        again, served = serve(entry, npz, tmp_path / "data")
    assert "inconsistent" in caplog.text and "outside the scan's 512 patterns" in caplog.text
    assert again.regrouped
    assert_served_baseline(entry, served)


@pytest.mark.parametrize("entry", ENTRIES)
def test_cache_with_an_object_metadata_member_is_refused_not_unpickled(tmp_path, entry, caplog):
    npz = copy_embedded(tmp_path / "scan.npz")
    experiment, _ = serve(entry, npz, tmp_path / "data")
    mark = tmp_path / "pickle-ran"
    rewrite_cache(experiment.cache_path, metadata=pickled(mark))
    with caplog.at_level(logging.WARNING):
        again, served = serve(entry, npz, tmp_path / "data")
    assert not mark.exists()
    assert "damaged" in caplog.text and "allow_pickle=False" in caplog.text
    assert again.regrouped
    assert_served_baseline(entry, served)
    with np.load(again.cache_path, allow_pickle=False) as cache:  # rewritten as plain arrays
        assert json.loads(str(cache["metadata"]))["n_groups"] == 200


def test_pickled_pattern_energy_is_never_unpickled(tmp_path):
    """Even a map file whose manifest was forged to match cannot make the reader unpickle."""
    import hashlib

    npz = copy_embedded(tmp_path / "scan.npz")
    bridge = MemmapDatasetBridge(npz, memmap_config(npz), tmp_path / "data", progress=False)
    directory = bridge.cache_path.parent
    mark = tmp_path / "pickle-ran"
    energy = directory / "pattern_energy.npy"
    with open(energy, "wb") as handle:  # what np.save writes for an object array: a header, then a pickle
        np.lib.format.write_array_header_1_0(handle, {"descr": "|O", "fortran_order": False, "shape": (2,)})
        pickle.dump(pickled(mark), handle, protocol=3)
    manifest = json.loads((directory / MANIFEST).read_text())
    manifest["energy_sha256"] = hashlib.sha256(energy.read_bytes()).hexdigest()
    (directory / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="allow_pickle=False"):
        MemmapDatasetBridge(npz, memmap_config(npz), tmp_path / "data", progress=False)
    assert not mark.exists()


# --- settings that cannot work ------------------------------------------------------------------

SETTINGS = {  # config changes, overrides, message fragments
    "K < C": (dict(neighbor_count=3), None, ["K=3", "gridsize**2 = 4", "set K >= 4"]),
    "nsamples > n without oversampling": (dict(n_groups=1000), None, ["nsamples=1000", "only 512 points", "enable_oversampling=True"]),
    "gridsize 0": ({}, {"gridsize": 0}, ["gridsize must be a positive integer, got 0"]),
}


@pytest.mark.parametrize("entry", ENTRIES)
@pytest.mark.parametrize("case", sorted(SETTINGS))
def test_impossible_settings_are_refused_with_the_fix(tmp_path, entry, case):
    changes, overrides, fragments = SETTINGS[case]
    npz = copy_embedded(tmp_path / "scan.npz")
    with pytest.raises(ValueError) as caught:
        serve(entry, npz, tmp_path / "data", config=memmap_config(npz, **changes), overrides=overrides)
    for fragment in fragments:
        assert fragment in str(caught.value), str(caught.value)
    if overrides is None:  # grouping errors say which scan they are about
        assert str(npz) in str(caught.value)


@pytest.mark.parametrize("entry", ENTRIES)
def test_fewer_points_than_a_group_needs(tmp_path, entry):
    few = {k: (v[:3] if k in ("xcoords", "ycoords", "xcoords_start", "ycoords_start", "scan_index", "diffraction") else v) for k, v in ARRAYS.items()}
    npz = tmp_path / "three.npz"
    np.savez(npz, **few)
    message = assert_refused(entry, npz, tmp_path / "data", ValueError, str(npz), "only 3 scan points", "needs 4 per group", config=memmap_config(npz, n_groups=2))
    assert "smaller gridsize" in message


@pytest.mark.parametrize("entry", ENTRIES)
def test_N_not_matching_the_patterns_fails_before_copying(tmp_path, entry):
    from ptycho.config.config import ModelConfig, TrainingConfig

    npz = copy_embedded(tmp_path / "scan.npz")
    config = TrainingConfig(model=ModelConfig(N=32, gridsize=2), train_data_file=npz, n_groups=200, neighbor_count=7, subsample_seed=42, nphotons=1e6)
    assert_refused(entry, npz, tmp_path / "data", ValueError, str(npz), "N=32 does not match the 64 x 64 diffraction patterns of key 'diffraction'", "set N=64", config=config)
    assert not scan_directory(tmp_path / "data", npz).exists()  # refused before any copy


# --- a refused scan leaves nothing behind ---------------------------------------------------------

LEFT_BEHIND = {  # scan changes, config changes, message fragment; refused while (or before) its memory map is built
    "nan pattern": (dict(diffraction=with_value((123, 5, 6), np.nan)), {}, "not finite value nan"),
    "every pattern zero": (dict(diffraction=np.zeros_like(DIFF)), {}, "every grouped diffraction pattern is zero"),
    "real Y": (dict(Y=np.zeros(DIFF.shape, np.float32)), {}, "key 'Y' has real dtype float32"),
    "more groups than points": ({}, dict(n_groups=1000), "nsamples=1000"),
}


@pytest.mark.parametrize("entry", ENTRIES)
@pytest.mark.parametrize("case", sorted(LEFT_BEHIND))
def test_a_refused_scan_leaves_no_memory_map_directory(tmp_path, entry, case):
    """The scan's directory, its lock and the data directory this run created are all removed again."""
    changes, config_changes, fragment = LEFT_BEHIND[case]
    npz = save_variant(tmp_path / "scan.npz", **changes)
    data_dir = tmp_path / "data" / "memmap"
    with pytest.raises(ValueError, match=re.escape(fragment)):
        serve(entry, npz, data_dir, config=memmap_config(npz, **config_changes))
    assert not (tmp_path / "data").exists(), sorted(p.name for p in (tmp_path / "data").rglob("*"))


@pytest.mark.parametrize("case", ["real Y", "more groups than points"])
def test_what_the_headers_and_positions_show_is_refused_before_the_memory_map(tmp_path, monkeypatch, case):
    from ptycho_torch.store import memmap

    def build(*args, **kwargs):
        raise AssertionError("the memory map was built for a scan refused by its headers or positions")

    monkeypatch.setattr(memmap.DiffractionMemmap, "build", staticmethod(build))
    changes, config_changes, fragment = LEFT_BEHIND[case]
    npz = save_variant(tmp_path / "scan.npz", **changes)
    with pytest.raises((ValueError, ScanFileError), match=re.escape(fragment)):
        serve("bridge", npz, tmp_path / "data", config=memmap_config(npz, **config_changes))
    assert not (tmp_path / "data").exists()


def test_a_refusal_keeps_a_complete_memory_map_and_a_directory_that_existed(tmp_path):
    npz = copy_embedded(tmp_path / "scan.npz")
    data_dir = tmp_path / "data"
    serve("bridge", npz, data_dir)
    before = tree_state(data_dir)
    with pytest.raises(ValueError, match="nsamples=1000"):
        serve("bridge", npz, data_dir, config=memmap_config(npz, n_groups=1000))
    assert tree_state(data_dir) == before  # the complete map and its groups cache, untouched
    directory = scan_directory(data_dir, tmp_path / "other.npz")
    directory.mkdir()
    (directory / "notes.txt").write_text("mine")
    other = save_variant(tmp_path / "other.npz", diffraction=with_value((7, 0, 0), np.nan))
    with pytest.raises(ValueError, match="not finite value nan"):
        serve("bridge", other, data_dir)
    assert (directory / "notes.txt").read_text() == "mine" and not (directory / DIFFRACTION).exists()  # existed before: kept


def test_a_refused_scan_removes_an_empty_directory_it_found(tmp_path):
    """A second process waiting for a refused build's lock finds the scan's directory made again, empty: its own refusal
    removes it too (it held nothing from before)."""
    data_dir = tmp_path / "data"
    other = save_variant(tmp_path / "other.npz", diffraction=with_value((7, 0, 0), np.nan))
    directory = scan_directory(data_dir, other)
    directory.mkdir(parents=True)
    with pytest.raises(ValueError, match="not finite value nan"):
        serve("bridge", other, data_dir)
    assert not directory.exists() and data_dir.exists()  # the data directory existed before this run: kept


# --- paths --------------------------------------------------------------------------------------


@pytest.mark.parametrize("entry", ENTRIES)
def test_paths_with_spaces_and_non_ascii_work(tmp_path, entry):
    npz = copy_embedded(tmp_path / "mes données ü" / "scan 1 (été).npz")
    data_dir = tmp_path / "cache dir ñ"
    experiment, served = serve(entry, npz, data_dir)
    assert_served_baseline(entry, served)
    assert experiment.cache_path.parent.parent == data_dir
    assert experiment.cache_path.parent.name.isascii() and " " not in experiment.cache_path.parent.name
    again, _ = serve(entry, npz, data_dir)
    assert not again.regrouped


@pytest.mark.parametrize("name", ["../../x.npz", "..npz", "....npz", "-rf .npz", "a\nb.npz", "x" * 200 + ".npz"])
def test_dataset_directory_stays_inside_the_data_directory(tmp_path, name):
    data_dir = tmp_path / "data"
    directory = dataset_directory(data_dir, tmp_path / "deep" / "er" / name)
    assert directory.parent == data_dir
    assert directory.resolve().is_relative_to(data_dir.resolve())
    assert len(directory.name) <= 73 and not directory.name.startswith((".", "-"))


def test_traversing_npz_path_keeps_every_file_inside_the_data_directory(tmp_path):
    npz = copy_embedded(tmp_path / "x.npz")
    data_dir = tmp_path / "sub" / "data"
    data_dir.mkdir(parents=True)
    traversing = data_dir / ".." / ".." / "x.npz"  # data_dir/../../x.npz is tmp_path/x.npz
    bridge = MemmapDatasetBridge(traversing, memmap_config(traversing), data_dir, progress=False)
    assert_same_grouped_data(bridge.grouped_data(), baseline_grouped())
    written = [p for p in tmp_path.rglob("*") if p.is_file() and p != npz]
    assert written and all(p.resolve().is_relative_to(data_dir.resolve()) for p in written)
    same = MemmapDatasetBridge(npz, memmap_config(npz), data_dir, progress=False)  # same file, plain path
    assert same.cache_path == bridge.cache_path and not same.experiment.regrouped


def test_symlinked_map_file_is_replaced_not_written_through(tmp_path):
    """A symlink planted where the map goes: the build replaces the link; its target is untouched."""
    npz = copy_embedded(tmp_path / "scan.npz")
    data_dir = tmp_path / "data"
    victim = tmp_path / "precious.bin"
    victim.write_bytes(os.urandom(4096))
    before = file_identity(victim)
    directory = scan_directory(data_dir, npz)
    directory.mkdir(parents=True)
    (directory / DIFFRACTION).symlink_to(victim)
    bridge = MemmapDatasetBridge(npz, memmap_config(npz), data_dir, progress=False)
    assert_same_grouped_data(bridge.grouped_data(), baseline_grouped())
    assert not (directory / DIFFRACTION).is_symlink()
    assert file_identity(victim) == before


def test_symlinked_scan_file_shares_the_cache_of_its_target(tmp_path):
    npz = copy_embedded(tmp_path / "real" / "scan.npz")
    link = tmp_path / "link.npz"
    link.symlink_to(npz)
    first = MemmapDatasetBridge(npz, memmap_config(npz), tmp_path / "data", progress=False)
    second = MemmapDatasetBridge(link, memmap_config(link), tmp_path / "data", progress=False)
    assert second.cache_path == first.cache_path and not second.experiment.regrouped
    assert second.cache_path.name.endswith(SUFFIX)


def test_duplicate_diffraction_members_are_compared_once_per_opening(tmp_path, monkeypatch):
    """Both 'diffraction' and 'diff3d' (equal): comparing them reads both stacks, so it is done once, not per use."""
    from ptycho.scan_file import ScanFile

    npz = save_variant(tmp_path / "scan.npz", diff3d=DIFF.copy())
    comparisons = []
    real = ScanFile.members_equal
    monkeypatch.setattr(ScanFile, "members_equal", lambda self, a, b: comparisons.append(self) or real(self, a, b))
    _, served = serve("bridge", npz, tmp_path / "data")
    assert_same_grouped_data(served, baseline_grouped())
    assert len(comparisons) == len({id(s) for s in comparisons}) <= 2  # at most once per ScanFile opened
    comparisons.clear()
    serve("bridge", npz, tmp_path / "data")  # a cache hit
    assert len(comparisons) == 1
