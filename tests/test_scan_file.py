"""Scan NPZ reading: key aliases, layouts, block streaming, and refusal of bad or unsafe files."""

import io
import pickle
import zipfile

import numpy as np
import pytest

from ptycho.scan_file import ScanFile, ScanFileError, read_scan
from tests.scans import amplitude_stack, probe, raster_scan

N = 16
X, Y = raster_scan(n_side=6)
DIFF = amplitude_stack(len(X), N)


def write(path, compressed=False, **arrays):
    base = dict(xcoords=X, ycoords=Y, diffraction=DIFF, probeGuess=probe(N))
    base.update(arrays)
    base = {key: value for key, value in base.items() if value is not None}
    (np.savez_compressed if compressed else np.savez)(path, **base)
    return path


def patterns_by_blocks(path, block_bytes):
    """Rebuild the (n, N, N) stack from disk blocks using the layout's permutation."""
    with ScanFile(path) as scan_file:
        key = scan_file.diffraction_key()
        layout = scan_file.pattern_layout(key)
        out = np.empty((layout.n, layout.N, layout.N), dtype=scan_file.headers[key].dtype)
        axis = layout.pattern_axis_of_disk_block
        for start, block in scan_file.iter_disk_blocks(key, block_bytes):
            part = block.transpose(layout.perm)
            index = [slice(None)] * 3
            index[axis] = slice(start, start + block.shape[0])
            out[tuple(index)] = part
        return out


@pytest.mark.parametrize("compressed", [False, True])
@pytest.mark.parametrize(
    "stored",
    [
        pytest.param(lambda d: d, id="standard"),
        pytest.param(lambda d: np.ascontiguousarray(d.transpose(1, 2, 0)), id="legacy-HWn"),
        pytest.param(lambda d: np.asfortranarray(d), id="fortran"),
        pytest.param(lambda d: np.asfortranarray(d.transpose(1, 2, 0)), id="fortran-legacy"),
    ],
)
def test_every_layout_reads_back_as_n_by_N_by_N(tmp_path, stored, compressed):
    path = write(tmp_path / "scan.npz", compressed=compressed, diffraction=stored(DIFF))
    np.testing.assert_array_equal(read_scan(path).diffraction, DIFF)
    np.testing.assert_array_equal(patterns_by_blocks(path, block_bytes=3000), DIFF)


def test_legacy_diff3d_key_is_accepted(tmp_path):
    path = write(tmp_path / "scan.npz", diffraction=None, diff3d=DIFF)
    scan = read_scan(path)
    assert scan.diffraction_key == "diff3d"
    np.testing.assert_array_equal(scan.diffraction, DIFF)


def test_both_keys_equal_is_fine_and_different_is_an_error(tmp_path):
    same = write(tmp_path / "same.npz", diff3d=DIFF)
    assert read_scan(same).diffraction_key == "diffraction"
    changed = DIFF.copy()
    changed[-1, 3, 3] += 1
    differ = write(tmp_path / "differ.npz", diff3d=changed)
    with pytest.raises(ScanFileError, match="both 'diffraction' and 'diff3d' and they differ"):
        read_scan(differ)


def test_optional_keys_get_their_defaults(tmp_path):
    scan = read_scan(write(tmp_path / "scan.npz"))
    np.testing.assert_array_equal(scan.xcoords_start, X)
    np.testing.assert_array_equal(scan.scan_index, np.zeros(len(X)))
    assert scan.objectGuess is None and scan.Y is None


def test_diffraction_can_stay_on_disk(tmp_path):
    scan = read_scan(write(tmp_path / "scan.npz"), load_diffraction=False)
    assert scan.diffraction is None and (scan.n, scan.N) == (len(X), N)


def test_missing_key_names_file_key_and_fix(tmp_path):
    path = write(tmp_path / "scan.npz", probeGuess=None)
    with pytest.raises(ScanFileError, match=r"scan\.npz has no key 'probeGuess'.*store the complex probe"):
        read_scan(path)


def test_missing_diffraction_says_which_keys_are_accepted(tmp_path):
    with pytest.raises(ScanFileError, match="no key 'diffraction'.*legacy 'diff3d'"):
        read_scan(write(tmp_path / "scan.npz", diffraction=None))


def test_pickled_member_is_refused_without_unpickling(tmp_path):
    class Boom:
        def __reduce__(self):
            return (pytest.fail, ("unpickled a hostile member",))

    path = tmp_path / "hostile.npz"
    objects = np.empty(1, dtype=object)
    objects[0] = Boom()
    np.savez(path, xcoords=X, ycoords=Y, diffraction=DIFF, probeGuess=probe(N), extra=objects)
    with pytest.raises(ScanFileError, match="key 'extra' holds Python objects"):
        read_scan(path)


@pytest.mark.parametrize("cut", [0.3, 0.9])
def test_truncated_file_is_reported(tmp_path, cut):
    path = write(tmp_path / "scan.npz")
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * cut)])
    with pytest.raises(ScanFileError, match="truncated"):
        read_scan(path)


def test_not_a_zip_is_reported(tmp_path):
    path = tmp_path / "scan.npz"
    path.write_bytes(b"this is not an npz" * 100)
    with pytest.raises(ScanFileError, match="not a readable NPZ"):
        read_scan(path)


def test_corrupted_bytes_fail_the_crc_when_streamed(tmp_path):
    path = write(tmp_path / "scan.npz")
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo("diffraction.npy")
    data[info.header_offset + 200 + len(info.filename) + 30] ^= 0xFF
    path.write_bytes(bytes(data))
    with ScanFile(path) as scan_file:
        with pytest.raises(ScanFileError, match="damaged"):
            for _ in scan_file.iter_disk_blocks("diffraction"):
                pass


@pytest.mark.parametrize(
    "arrays, message",
    [
        (dict(ycoords=Y[:-1]), "'ycoords' has shape"),
        (dict(xcoords_start=np.where(np.arange(len(X)) == 2, np.inf, X)), r"'xcoords_start'\[2\] is inf"),
        (dict(diffraction=DIFF.astype(np.complex64)), "is complex"),
        (dict(diffraction=DIFF[:, :, :10]), "must be square"),
        (dict(diffraction=DIFF[0]), "must be a 3-D stack"),
        (dict(scan_index=np.zeros(len(X), float)), "'scan_index' must be"),
        # a probe of 4 axes reached the geometry check ('too many values to unpack'), 0 modes an internal error (exit 3)
        (dict(probeGuess=probe(N)[None, None]), r"key 'probeGuess' has shape \(1, 1, 16, 16\) .*\(16, 16\) or a mode stack"),
        (dict(probeGuess=np.zeros((0, N, N), np.complex64)), r"key 'probeGuess' has shape \(0, 16, 16\)"),
        (dict(probeGuess=np.complex64(1)), r"key 'probeGuess' has shape \(\)"),
        (dict(probeGuess=np.ones((N, N), bool)), "key 'probeGuess' has shape .* and dtype bool"),
        # an object of 1 or 3 axes was written as the NPZ, then ptycho-reconstruct failed scoring against it (exit 3)
        (dict(objectGuess=np.ones((3, 40, 40), np.complex64)), r"key 'objectGuess' has shape \(3, 40, 40\); the object must be one complex image"),
        (dict(objectGuess=np.ones(40, np.complex64)), r"key 'objectGuess' has shape \(40,\)"),
    ],
)
def test_bad_arrays_are_named(tmp_path, arrays, message):
    with pytest.raises(ScanFileError, match=message):
        read_scan(write(tmp_path / "scan.npz", **arrays))


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.npz does not exist"):
        read_scan(tmp_path / "nowhere.npz")
