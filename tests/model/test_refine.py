"""Refinement of a stitched object by error reduction over the whole scan, with the model's physics."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from ptycho.quality import reconstruction_quality  # noqa: E402
from ptycho_torch.config_params import DataConfig, ModelConfig, TrainingConfig  # noqa: E402
from ptycho_torch.dset_loader_pt_mmap import PtychoDataset  # noqa: E402
from ptycho_torch.model.pinn import PtychoPINN  # noqa: E402
from ptycho_torch.model.refine import refine  # noqa: E402
from ptycho_torch.model.stitching import Canvas, reconstruct  # noqa: E402

NPZ = Path(__file__).resolve().parents[2] / "datasets" / "sim_small.npz"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    data = DataConfig(N=64, grid_size=(2, 2), K=7, subsample_seed=42)
    model = ModelConfig(n_filters_scale=1, base_filters=16, cbam_encoder=False, use_shared_decoder=True)
    network = PtychoPINN(model, data, TrainingConfig(n_groups=512))
    dataset = PtychoDataset(NPZ, data, model, TrainingConfig(n_groups=512), data_dir=tmp_path_factory.mktemp("memmap"), progress=False)
    truth = np.load(NPZ, allow_pickle=False)["objectGuess"]
    start = reconstruct(network, dataset, canvas=Canvas(truth.shape, (0, 0)), progress=False, use_network=False, groups="cover")
    return dataset, truth, start


def quality(result, truth):
    return reconstruction_quality(result.object, truth, result.coverage > 0.05 * result.coverage.max())


def test_refinement_raises_the_phase_of_the_physics_input(setup):
    dataset, truth, start = setup
    before, after = quality(start, truth), quality(refine(start, dataset, 10, progress=False), truth)
    assert after.phase_r > before.phase_r + 0.1 and after.amplitude_r > before.amplitude_r, (before, after)


def test_zero_iterations_return_the_start_and_bad_counts_are_refused(setup):
    dataset, _, start = setup
    assert refine(start, dataset, 0) is start
    for bad in (-1, 1.5):
        with pytest.raises(ValueError, match="integer >= 0"):
            refine(start, dataset, bad)


def test_the_true_object_is_nearly_a_fixed_point(setup):
    """Starting from the truth (scaled as the stitching calibrates), the measured moduli hold it: it stays close."""
    dataset, truth, start = setup
    scale = np.vdot(truth[start.coverage > 0], start.object[start.coverage > 0]) / np.vdot(truth[start.coverage > 0], truth[start.coverage > 0])
    from dataclasses import replace

    exact = replace(start, object=np.where(start.coverage > 0, truth * scale, 0).astype(np.complex64))
    after = quality(refine(exact, dataset, 5, progress=False), truth)
    assert after.amplitude_r > 0.97 and after.phase_r > 0.97, after


def test_the_workflow_honours_every_reconstruction_setting(setup):
    """`ptycho-reconstruct` and Ptychodus's Reconstruct run `workflow.reconstruct_scan`: each setting changes what runs."""
    from ptycho_torch.workflow import ReconstructionSettings, reconstruct_scan

    dataset, truth, _ = setup
    network = PtychoPINN(ModelConfig(n_filters_scale=1, base_filters=16, cbam_encoder=False, use_shared_decoder=True),
                         DataConfig(N=64, grid_size=(2, 2), K=7, subsample_seed=42), TrainingConfig(n_groups=512))
    canvas = Canvas(truth.shape, (0, 0))
    plain = reconstruct_scan(network, dataset, ReconstructionSettings(device="cpu", precision="fp32", progress=False), canvas=canvas)
    assert network.precision == "fp32"
    direct = reconstruct(network, dataset, canvas=canvas, progress=False, groups="cover")
    np.testing.assert_array_equal(plain.object, direct.object)  # the defaults are the command's: groups='cover'
    every = reconstruct_scan(network, dataset, ReconstructionSettings(device="cpu", precision="fp32", groups="all", progress=False), canvas=canvas)
    assert not np.array_equal(every.object, plain.object)
    refined = reconstruct_scan(network, dataset, ReconstructionSettings(device="cpu", precision="fp32", refine_iterations=3, progress=False),
                               canvas=canvas)
    np.testing.assert_array_equal(refined.object, refine(plain, dataset, 3, progress=False).object)
    reconstruct_scan(network, dataset, ReconstructionSettings(device="cpu", precision="bf16", progress=False), canvas=canvas)
    assert network.precision == "bf16"
