"""PtychoPINN users' dataset code runs unchanged: names, call forms, batch layout, splits, exports.

Only public names (and the private helpers PtychoPINN's own tests call) are imported. Small
scans (64 points of 16 x 16): 13 s in all on the shared 2-core CI machine.
"""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ptycho.raw_data import RawData
from tests.scans import amplitude_stack, complex_object, probe, raster_scan

ROOT = Path(__file__).resolve().parents[2]
N = 16
X, Y = raster_scan(n_side=8)
DIFF = amplitude_stack(len(X), N)


def write_scan(path, probe_guess=None, diffraction=DIFF, key="diffraction"):
    probe_guess = probe(N) if probe_guess is None else probe_guess
    np.savez(path, xcoords=X, ycoords=Y, probeGuess=probe_guess, objectGuess=complex_object(), **{key: diffraction})
    return path


def torch_configs(n_groups=40):
    from ptycho_torch.config_params import DataConfig, ModelConfig, TrainingConfig

    return ModelConfig(), DataConfig(N=N, K=6, subsample_seed=7, nphotons=1e6), TrainingConfig(n_groups=n_groups, test_data_file="test.npz")


@pytest.fixture
def scan(tmp_path):
    return write_scan(tmp_path / "scan.npz")


@pytest.fixture
def torch_modules():
    pytest.importorskip("torch")
    pytest.importorskip("tensordict")
    import torch
    from ptycho_torch import dataloader

    return torch, dataloader


# --- item 1: the names of ptycho_torch.dataloader ----------------------------------------------

def test_dataloader_module_provides_upstream_names(torch_modules):
    _, dataloader = torch_modules
    from ptycho_torch.dset_loader_pt_mmap import PtychoDataset

    assert dataloader.PtychoDataset is PtychoDataset
    for name in ("TensorDictDataLoader", "Collate", "Collate_Lightning", "npz_headers"):
        assert callable(getattr(dataloader, name)), name


def test_npz_headers_reads_shapes_and_coordinates_without_the_stack(tmp_path):
    from ptycho_torch.dataloader import npz_headers

    shape, x, y = npz_headers(write_scan(tmp_path / "a.npz"))
    assert shape == (len(X), N, N)
    np.testing.assert_array_equal(x, X)
    np.testing.assert_array_equal(y, Y)
    legacy = write_scan(tmp_path / "legacy.npz", diffraction=np.ascontiguousarray(DIFF.transpose(1, 2, 0)), key="diff3d")
    assert npz_headers(legacy)[0] == (len(X), N, N)


def test_npz_headers_without_diffraction_names_the_file(tmp_path):
    from ptycho_torch.dataloader import npz_headers

    path = tmp_path / "nodiff.npz"
    np.savez(path, xcoords=X, ycoords=Y, probeGuess=probe(N))
    with pytest.raises(ValueError, match=r"Could not find diffraction data in .*nodiff\.npz.*'diffraction'.*'diff3d'"):
        npz_headers(path)


def test_get_diffraction_stack_as_upstream(tmp_path):
    from ptycho_torch.dataloader import _get_diffraction_stack

    np.testing.assert_array_equal(_get_diffraction_stack(write_scan(tmp_path / "a.npz")), DIFF)
    legacy = write_scan(tmp_path / "b.npz", diffraction=np.ascontiguousarray(DIFF.transpose(1, 2, 0)), key="diff3d")
    np.testing.assert_array_equal(_get_diffraction_stack(legacy), DIFF)
    counts = write_scan(tmp_path / "c.npz", diffraction=(DIFF * 10).astype(np.uint16))
    assert _get_diffraction_stack(counts).dtype == np.uint16  # as stored, like upstream


# --- item 2: call forms ------------------------------------------------------------------------

def test_upstream_and_project_call_forms_give_the_same_dataset(torch_modules, scan, tmp_path):
    torch, dataloader = torch_modules
    model, data, training = torch_configs()
    upstream_positional = dataloader.PtychoDataset(str(scan), model, data, training, str(tmp_path / "m1"), False)
    upstream_keywords = dataloader.PtychoDataset(
        ptycho_dir=str(scan), model_config=model, data_config=data, training_config=training, data_dir=str(tmp_path / "m2"), remake_map=True
    )
    project = dataloader.PtychoDataset(scan, data, model, training, data_dir=tmp_path / "m3", progress=False)
    assert str(upstream_positional.data_dir) == str(tmp_path / "m1") and upstream_positional.data_config is data
    assert upstream_keywords.model_config is model and upstream_keywords.training_config is training
    expected = RawData.from_file(scan).generate_grouped_data(N, K=6, nsamples=40, seed=7, gridsize=2)["nn_indices"]
    for dataset in (upstream_positional, upstream_keywords, project):
        np.testing.assert_array_equal(dataset[list(range(len(dataset)))][0]["nn_indices"].numpy(), expected)


def test_wrong_config_in_a_slot_is_a_type_error_naming_the_slot(torch_modules, scan, tmp_path):
    _, dataloader = torch_modules
    model, data, training = torch_configs()
    with pytest.raises(TypeError, match=r"fourth positional argument must be a TrainingConfig, got DataConfig"):
        dataloader.PtychoDataset(scan, model, data, data)
    with pytest.raises(TypeError, match=r"got data_config twice"):
        dataloader.PtychoDataset(scan, data, data)
    with pytest.raises(TypeError, match=r"data_config= must be a DataConfig, got ModelConfig"):
        dataloader.PtychoDataset(scan, data_config=model)
    with pytest.raises(TypeError, match=r"sixth positional argument must be a DatagenConfig or a bool, got str"):
        dataloader.PtychoDataset(scan, model, data, training, str(tmp_path), "yes")
    assert not (tmp_path / "data").exists()  # nothing was built


# --- item 3: the batch contract ----------------------------------------------------------------

def test_batch_keys_shapes_and_dtypes_are_upstreams(torch_modules, scan, tmp_path):
    torch, dataloader = torch_modules
    dataset = dataloader.PtychoDataset(scan, *torch_configs(), data_dir=tmp_path / "m", progress=False)
    batch, probe_batch, scale = dataset[[0, 5, 9]]
    B, C = 3, 4
    expected = {
        "images": ((B, C, N, N), torch.float32),
        "coords_global": ((B, C, 1, 2), torch.float32),
        "coords_relative": ((B, C, 1, 2), torch.float32),
        "coords_center": ((B, 1, 1, 2), torch.float32),
        "coords_start_relative": ((B, C, 1, 2), torch.float32),
        "coords_start_center": ((B, 1, 1, 2), torch.float32),
        "nn_indices": ((B, C), torch.int64),
        "experiment_id": ((B,), torch.int32),
        "rms_scaling_constant": ((B, 1, 1, 1), torch.float32),
        "physics_scaling_constant": ((B, 1, 1, 1), torch.float32),
    }
    assert {key: (tuple(batch[key].shape), batch[key].dtype) for key in batch.keys()} == expected
    assert tuple(probe_batch.shape) == (B, C, 1, N, N) and probe_batch.dtype == torch.complex64
    assert tuple(scale.shape) == (B, 1, 1, 1) and scale.dtype == torch.float32
    grouped = RawData.from_file(scan).generate_grouped_data(N, K=6, nsamples=40, seed=7, gridsize=2)
    members = batch["nn_indices"].numpy()
    np.testing.assert_array_equal(batch["coords_global"].numpy()[:, :, 0], np.stack([X[members], Y[members]], -1).astype(np.float32))
    np.testing.assert_allclose(batch["images"].numpy(), grouped["X_full"][[0, 5, 9]].transpose(0, 3, 1, 2), rtol=1e-6)
    np.testing.assert_array_equal(batch["rms_scaling_constant"].numpy(), scale.numpy())
    energy = np.sum(DIFF.astype(np.float64) ** 2, axis=(1, 2))
    assert float(batch["physics_scaling_constant"][0]) == pytest.approx(1 / energy.mean(), rel=1e-6)
    np.testing.assert_array_equal(probe_batch[2, 3, 0].numpy(), probe(N).astype(np.complex64))


def test_probe_modes_axis_and_multi_experiment_probes(torch_modules, tmp_path):
    torch, dataloader = torch_modules
    scans = tmp_path / "scans"
    scans.mkdir()
    modes = np.stack([probe(N), 0.5 * probe(N)]).astype(np.complex64)
    write_scan(scans / "a.npz", probe_guess=modes)
    write_scan(scans / "b.npz", probe_guess=(2 * probe(N)).astype(np.complex64))
    dataset = dataloader.PtychoDataset(scans, *torch_configs(), data_dir=tmp_path / "m", progress=False)
    _, probes, _ = dataset[[0, 39, 40, 79]]
    assert tuple(probes.shape) == (4, 4, 2, N, N)
    np.testing.assert_array_equal(probes[1, 2].numpy(), modes)
    np.testing.assert_array_equal(probes[2, 1, 0].numpy(), 2 * probe(N).astype(np.complex64))
    np.testing.assert_array_equal(probes[3, 0, 1].numpy(), np.zeros((N, N), np.complex64))  # padded mode, as upstream


def test_probe_view_cannot_change_the_dataset_and_moves_compactly(torch_modules, scan, tmp_path):
    torch, dataloader = torch_modules
    from ptycho_torch.tensordict_loader import compact_to

    dataset = dataloader.PtychoDataset(scan, *torch_configs(), data_dir=tmp_path / "m", progress=False)
    before = dataset.probes.clone()
    _, probes, scale = dataset[list(range(32))]
    assert probes.untyped_storage().data_ptr() != dataset.probes.untyped_storage().data_ptr()
    with pytest.raises(RuntimeError):
        probes.mul_(0)  # a broadcast view refuses in-place writes
    probes[0].clone().mul_(0)
    scale.mul_(0)  # the scale is a real per-batch tensor
    assert torch.equal(dataset.probes, before) and float(dataset[[0]][2]) > 0
    moved = compact_to(probes, "cpu")
    assert moved.untyped_storage().nbytes() == N * N * 8  # one probe, not 32 * 4 copies
    assert torch.equal(moved, probes)


def test_collate_moves_the_batch_and_keeps_values(torch_modules, scan, tmp_path):
    torch, dataloader = torch_modules
    dataset = dataloader.PtychoDataset(scan, *torch_configs(), data_dir=tmp_path / "m", progress=False)
    loader = dataloader.TensorDictDataLoader(dataset, batch_size=8, collate_fn=dataloader.Collate(device="cpu"))
    lightning = dataloader.TensorDictDataLoader(dataset, batch_size=8, collate_fn=dataloader.Collate_Lightning())
    for (batch, probes, scale), (reference, ref_probes, ref_scale) in zip(loader, lightning):
        assert torch.equal(batch["images"], reference["images"]) and torch.equal(probes, ref_probes) and torch.equal(scale, ref_scale)
    assert len(loader) == 5


# --- item 4: splits ----------------------------------------------------------------------------

def test_random_split_and_subset_work_with_the_loader(torch_modules, scan, tmp_path):
    torch, dataloader = torch_modules
    from torch.utils.data import Subset, random_split

    dataset = dataloader.PtychoDataset(scan, *torch_configs(), data_dir=tmp_path / "m", progress=False)
    train, validation = random_split(dataset, [0.75, 0.25], generator=torch.Generator().manual_seed(0))
    rows = {}
    for name, part in (("train", train), ("validation", validation)):
        loader = dataloader.TensorDictDataLoader(part, batch_size=4, shuffle=True)
        rows[name] = np.concatenate([batch["nn_indices"].numpy() for batch, _, _ in loader])
    every = dataset[list(range(len(dataset)))][0]["nn_indices"].numpy()
    np.testing.assert_array_equal(np.sort(rows["validation"], axis=0), np.sort(every[validation.indices], axis=0))
    assert len(rows["train"]) == 30 and len(rows["validation"]) == 10
    nested = Subset(Subset(dataset, [5, 6, 7, 8]), [1, 3])
    (batch, _, _), = list(dataloader.TensorDictDataLoader(nested, batch_size=2))
    np.testing.assert_array_equal(batch["nn_indices"].numpy(), every[[6, 8]])


def test_split_gives_disjoint_reproducible_groups(torch_modules, scan, tmp_path):
    torch, dataloader = torch_modules
    dataset = dataloader.PtychoDataset(scan, *torch_configs(n_groups=60), data_dir=tmp_path / "m", progress=False)
    torch.manual_seed(123)
    train, validation = dataset.split()
    torch.manual_seed(456)
    again, _ = dataset.split(val_fraction=0.05, seed=42)
    assert (len(train), len(validation)) == (57, 3)
    assert not set(train.indices) & set(validation.indices) and set(train.indices) | set(validation.indices) == set(range(60))
    assert list(again.indices) == list(train.indices)  # the seed decides, not the global RNG
    assert list(dataset.split(seed=1)[1].indices) != list(validation.indices)
    with pytest.raises(ValueError, match="val_fraction must be in"):
        dataset.split(val_fraction=0)


# --- item 5: package exports -------------------------------------------------------------------

def test_package_exports_are_lazy_and_work_without_torch():
    code = (
        "import sys\n"
        "sys.modules['torch'] = None\n"
        "import ptycho_torch\n"
        "assert 'torch' not in [m for m in sys.modules if sys.modules[m] is not None]\n"
        "assert ptycho_torch.TORCH_AVAILABLE is False\n"
        "for name in ('RawDataTorch', 'PtychoDataContainerTorch', 'to_model_config', 'to_training_config',\n"
        "             'to_inference_config', 'npz_headers', 'MemmapDatasetBridge', 'DataConfig'):\n"
        "    assert name in ptycho_torch.__all__ and getattr(ptycho_torch, name) is not None, name\n"
        "try:\n    ptycho_torch.PtychoDataset\nexcept ImportError as exc:\n    print('refused:', exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "refused: PtychoDataset needs PyTorch" in out.stdout


def test_package_exports_resolve_to_the_modules_objects(torch_modules):
    import ptycho_torch
    from ptycho_torch.config_bridge import to_model_config
    from ptycho_torch.raw_data_bridge import RawDataTorch

    assert ptycho_torch.TORCH_AVAILABLE is True
    assert ptycho_torch.RawDataTorch is RawDataTorch and ptycho_torch.to_model_config is to_model_config
    assert ptycho_torch.PtychoDataset is torch_modules[1].PtychoDataset
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        ptycho_torch.nope


def test_upstream_parity_conversions_reproduce_counts_and_offsets(torch_modules, tmp_path):
    torch, dataloader = torch_modules
    counts = np.random.default_rng(0).poisson(50, size=DIFF.shape).astype(np.uint16)
    path = write_scan(tmp_path / "counts.npz", diffraction=counts)
    dataset = dataloader.PtychoDataset(path, *torch_configs(), data_dir=tmp_path / "m", progress=False)
    batch, _, _ = dataset[list(range(len(dataset)))]
    members = batch["nn_indices"].numpy()
    np.testing.assert_array_equal(dataloader.upstream_images(batch).numpy(), counts[members].astype(np.float32))
    offsets = dataloader.upstream_coords_relative(batch).numpy()
    np.testing.assert_allclose(offsets, (batch["coords_global"] - batch["coords_center"]).numpy(), atol=1e-5)
