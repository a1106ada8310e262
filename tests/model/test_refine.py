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
        with pytest.raises(ValueError, match="integer from 0 to 100,000"):
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
    from ptycho_torch.model.refine import PARALLEL

    parallel = reconstruct_scan(network, dataset, ReconstructionSettings(device="cpu", precision="fp32", refine_iterations=3, progress=False,
                                                                         refine_update=PARALLEL), canvas=canvas)
    np.testing.assert_array_equal(parallel.object, refine(plain, dataset, 3, update=PARALLEL, progress=False).object)
    assert not np.array_equal(parallel.object, refined.object)
    physics = reconstruct_scan(network, dataset, ReconstructionSettings(device="cpu", precision="fp32", start="physics", progress=False),
                               canvas=canvas)
    np.testing.assert_array_equal(physics.object, reconstruct(network, dataset, canvas=canvas, progress=False, groups="cover",
                                                              use_network=False).object)
    from ptycho_torch.model.refine import flat_start

    flat = reconstruct_scan(network, dataset, ReconstructionSettings(start="flat", refine_iterations=3, progress=False), canvas=canvas)
    np.testing.assert_array_equal(flat.object, refine(flat_start(dataset, canvas), dataset, 3, progress=False).object)
    from ptycho_torch.model.refine import RefinementUpdate

    for bad, message in ((ReconstructionSettings(start="flat"), "refine_iterations"), (ReconstructionSettings(start="unet"), "start"),
                         (ReconstructionSettings(refine_update=RefinementUpdate(step=1.5)), "refine_update .* refine_iterations is 0")):
        with pytest.raises(ValueError, match=message):
            reconstruct_scan(network, dataset, bad, canvas=canvas)
    reconstruct_scan(network, dataset, ReconstructionSettings(device="cpu", precision="bf16", progress=False), canvas=canvas)
    assert network.precision == "bf16"


@pytest.mark.parametrize("changes, message", [
    (dict(batch_size=-5), "batch_size=-5 must be an integer >= 1"), (dict(batch_size=0), "batch_size=0"),
    (dict(batch_size=2.5), "batch_size=2.5"), (dict(batch_size=True), "batch_size=True"),
    (dict(device="meta"), "device='meta' is not supported"), (dict(device="tpu"), "device='tpu' is not supported"),
    (dict(device="cuda:99"), "device='cuda:99': torch sees"),
    (dict(precision="fp16"), "precision='fp16'"), (dict(groups="some"), "groups='some'"),
    (dict(refine_iterations=-1), "refine_iterations=-1"), (dict(refine_iterations=2.5), "refine_iterations=2.5"),
])
def test_reconstruction_settings_are_refused_before_the_network_is_touched(setup, changes, message):
    """A negative batch size once gave an all-zero object; a 'meta' device left the caller's network without weights."""
    from ptycho_torch.workflow import ReconstructionSettings, reconstruct_scan

    dataset, truth, _ = setup
    network = PtychoPINN(ModelConfig(n_filters_scale=1, base_filters=16, cbam_encoder=False, use_shared_decoder=True),
                         DataConfig(N=64, grid_size=(2, 2), K=7, subsample_seed=42), TrainingConfig(n_groups=512))
    before = {name: value.clone() for name, value in network.state_dict().items()}
    with pytest.raises(ValueError, match=message):
        reconstruct_scan(network, dataset, ReconstructionSettings(progress=False, **changes), canvas=Canvas(truth.shape, (0, 0)))
    after = network.state_dict()
    assert all(after[name].device.type == "cpu" and torch.equal(after[name], value) for name, value in before.items())
    if "batch_size" in changes:
        with pytest.raises(ValueError, match="batch_size"):
            reconstruct(network, dataset, batch_size=changes["batch_size"], canvas=Canvas(truth.shape, (0, 0)), progress=False)


def test_refinement_from_a_unit_object_reconstructs_the_scan(setup):
    """`flat_start`: 1 on the probe coverage, the coverage of every scan point; 10 sweeps from it recover the object."""
    from ptycho_torch.model.refine import flat_start

    dataset, truth, start = setup
    flat = flat_start(dataset, start.canvas)
    covered = flat.coverage > 1e-3 * flat.coverage.max()
    assert np.array_equal(flat.object != 0, covered) and np.all(flat.object[covered] == 1)
    from ptycho_torch.model import physics

    probe_energy = float(physics.probe_weight(physics.unit_peak(dataset.probes[0][None, None])).sum())
    n_points = len(dataset.experiments[0].scan.xcoords)
    np.testing.assert_allclose(flat.coverage.sum(), n_points * probe_energy, rtol=1e-4)  # every point's unit-peak |P|^2, placed whole
    refined = quality(refine(flat, dataset, 10, progress=False), truth)
    assert refined.amplitude_r > 0.97 and refined.phase_r > 0.8, refined


def test_sweeps_of_small_updates_with_momentum_beat_parallel_error_reduction(setup):
    """The default update (64 points per update, momentum 0.5) reaches in 10 sweeps a phase the parallel update does not."""
    from ptycho_torch.model.refine import PARALLEL, RefinementUpdate

    dataset, truth, start = setup
    parallel = quality(refine(start, dataset, 10, update=PARALLEL, progress=False), truth)
    sweeps = quality(refine(start, dataset, 10, progress=False), truth)
    assert RefinementUpdate() == RefinementUpdate(patterns=64, momentum=0.5)
    assert sweeps.phase_r > parallel.phase_r + 0.05 and sweeps.amplitude_r > 0.97, (parallel, sweeps)
    no_momentum = quality(refine(start, dataset, 10, update=RefinementUpdate(momentum=0.0), progress=False), truth)
    assert sweeps.phase_r > no_momentum.phase_r, (no_momentum, sweeps)  # the momentum is applied


def test_parallel_update_is_the_sum_of_every_correction_over_the_coverage(setup):
    """patterns=None: one step of x + sum_j P_j^T c_j(x) / (coverage + 0.05 max), computed here by hand from the operator."""
    import math

    from ptycho_torch.model import physics
    from ptycho_torch.model.forward_model import FarFieldPtychography
    from ptycho_torch.model.refine import PARALLEL, _window_corners

    dataset, _, start = setup
    exp = dataset.experiments[0]
    N, (H, W) = dataset.N, start.canvas.shape_px
    probe = physics.unit_peak(dataset.probes[0][None, None])
    kappa = float(np.mean(exp.store.energy)) / float((probe.abs() ** 2).sum())
    measurement = FarFieldPtychography(probe, torch.tensor([kappa]))
    corners = _window_corners(exp.scan.xcoords, exp.scan.ycoords, start.canvas.origin_px, N)
    windows = physics.GroupWindows.at(corners[None], N, (H, W))
    obj = torch.from_numpy(start.object).to(torch.complex64)[None]
    modulus = torch.from_numpy(np.abs(np.asarray(exp.store.diffraction[:], np.float32)))[None] / math.sqrt(kappa)
    coverage = windows.place(measurement.weights.expand(1, windows.C, N, N))[0]
    expected = obj[0] + windows.place(measurement.correction(windows.extract(obj), modulus))[0] / (coverage + 0.05 * coverage.max())
    got = refine(start, dataset, 1, update=PARALLEL, progress=False).object
    covered = (coverage > 1e-3 * coverage.max()).numpy()
    np.testing.assert_allclose(got[covered], expected.numpy()[covered], rtol=0, atol=2e-4 * np.abs(expected.numpy()).max())


def test_the_sequential_update_is_the_same_whether_its_windows_are_kept_or_rebuilt(setup, monkeypatch):
    from ptycho_torch.model import refine as refine_module

    dataset, _, start = setup
    kept = refine(start, dataset, 3, progress=False).object
    monkeypatch.setattr(refine_module, "PLAN_BYTES", 0)  # a scan too large to keep every window's indices
    np.testing.assert_array_equal(refine(start, dataset, 3, progress=False).object, kept)
    other_order = refine(start, dataset, 3, update=refine_module.RefinementUpdate(order_seed=1), progress=False).object
    assert not np.array_equal(other_order, kept)  # the order seed is honoured


@pytest.mark.parametrize("kwargs, match", [
    ({"patterns": 0}, "patterns"), ({"patterns": 2.5}, "patterns"), ({"patterns": 2.0}, "patterns"), ({"patterns": True}, "patterns"),
    ({"patterns": float("nan")}, "patterns"), ({"patterns": float("inf")}, "patterns"), ({"patterns": "abc"}, "patterns"),
    ({"patterns": [4]}, "patterns"), ({"momentum": 1.0}, "momentum"), ({"momentum": -0.1}, "momentum"), ({"momentum": False}, "momentum"),
    ({"momentum": "0.5"}, "momentum"), ({"momentum": float("nan")}, "momentum"), ({"regularisation": 0}, "regularisation"),
    ({"regularisation": float("nan")}, "regularisation"), ({"regularisation": True}, "regularisation"), ({"regularisation": 1e300}, "regularisation"),
    ({"order_seed": -1}, "order_seed"), ({"order_seed": 1.5}, "order_seed"), ({"order_seed": "x"}, "order_seed"), ({"order_seed": None}, "order_seed"),
    ({"plateau": -0.1}, "plateau"), ({"plateau": 1.0}, "plateau"), ({"plateau": float("nan")}, "plateau"), ({"plateau": True}, "plateau"),
    ({"plateau": "0.002"}, "plateau"), ({"plateau": None}, "plateau"),
    ({"plateau_sweeps": 0}, "plateau_sweeps"), ({"plateau_sweeps": 1.5}, "plateau_sweeps"), ({"plateau_sweeps": True}, "plateau_sweeps"),
    ({"plateau_sweeps": "20"}, "plateau_sweeps"), ({"plateau_sweeps": None}, "plateau_sweeps"),
    ({"step": 0}, "step"), ({"step": -1.0}, "step"), ({"step": 2.5}, "step"), ({"step": float("nan")}, "step"), ({"step": True}, "step"),
    ({"step": "1.5"}, "step"), ({"step": None}, "step"),
])
def test_bad_update_settings_are_refused_naming_the_field(kwargs, match):
    from ptycho_torch.model.refine import RefinementUpdate

    with pytest.raises(ValueError, match=f"RefinementUpdate.{match}"):
        RefinementUpdate(**kwargs)


def test_numpy_numbers_are_accepted_as_plain_values():
    from ptycho_torch.model.refine import RefinementUpdate

    update = RefinementUpdate(patterns=np.int64(32), momentum=np.float32(0.5), regularisation=np.float64(0.05), order_seed=np.int32(3))
    assert (update.momentum, update.regularisation) == (0.5, 0.05) and type(update.momentum) is float
    assert RefinementUpdate(momentum=-0.0).momentum == 0.0 and str(RefinementUpdate(momentum=-0.0).momentum) == "0.0"


def test_no_update_means_the_default_one(setup):
    dataset, _, start = setup
    np.testing.assert_array_equal(refine(start, dataset, 2, update=None, progress=False).object, refine(start, dataset, 2, progress=False).object)


def test_a_large_update_is_corrected_in_parts_of_batch_size_points(setup, monkeypatch):
    """An update of 512 points holds the exit waves of at most batch_size of them at once, and gives the same object."""
    from ptycho_torch.model import refine as refine_module

    dataset, _, start = setup
    whole = refine(start, dataset, 2, update=refine_module.RefinementUpdate(patterns=512), batch_size=512, progress=False).object
    sizes = []
    correction = refine_module._Sweep._correction

    def recording(self, windows, obj, part):
        sizes.append(len(part))
        return correction(self, windows, obj, part)

    monkeypatch.setattr(refine_module._Sweep, "_correction", recording)
    parts = refine(start, dataset, 2, update=refine_module.RefinementUpdate(patterns=512), batch_size=100, progress=False).object
    assert sizes and max(sizes) <= 100, sizes
    np.testing.assert_allclose(parts, whole, rtol=0, atol=1e-5 * np.abs(whole).max())


def test_after_the_misfits_plateau_the_remaining_iterations_are_parallel_updates(setup, caplog):
    """plateau 0.999: the second sweep lowers the misfit by less than that, so sweeps 3-5 are parallel updates without
    momentum, with the update's own regularisation, from the object the second sweep left."""
    import logging
    from dataclasses import replace

    from ptycho_torch.model.refine import RefinementUpdate

    dataset, _, start = setup
    update = RefinementUpdate(regularisation=0.1, plateau=0.999)
    with caplog.at_level(logging.INFO, logger="ptycho_torch.model.refine"):
        switched = refine(start, dataset, 5, update=update, progress=False)
    assert "iteration 2 lowered the data misfit by less than 99.9 % of the previous one's" in caplog.text
    two_sweeps = refine(start, dataset, 2, update=replace(update, plateau=0.0), progress=False)
    expected = refine(two_sweeps, dataset, 3, update=RefinementUpdate(patterns=None, momentum=0.0, regularisation=0.1, plateau=0.0), progress=False)
    covered = start.coverage > 1e-3 * start.coverage.max()
    scale = np.abs(expected.object).max()  # the continuation starts from the masked object: below the coverage floor it was 0
    np.testing.assert_allclose(switched.object[covered], expected.object[covered], rtol=0, atol=1e-3 * scale)
    never = refine(start, dataset, 5, update=replace(update, plateau=0.0), progress=False)
    assert np.abs(never.object[covered] - switched.object[covered]).max() > 0.02 * scale


@pytest.mark.parametrize("patterns", [None, 10_000])
def test_one_update_of_every_point_moves_the_object_by_step_times_the_unit_steps_change(setup, patterns):
    """Every point corrected from the same object and applied once (all at once, or one batch of all points): linear in the step."""
    from ptycho_torch.model.refine import RefinementUpdate

    dataset, _, start = setup
    unit = RefinementUpdate(patterns=patterns, momentum=0.0, plateau=0.0)
    one = refine(start, dataset, 1, update=unit, progress=False).object
    larger = refine(start, dataset, 1, update=RefinementUpdate(patterns=patterns, momentum=0.0, plateau=0.0, step=1.5), progress=False).object
    covered = start.coverage > 1e-3 * start.coverage.max()
    change = one[covered] - start.object[covered]
    assert np.abs(change).max() > 0.01
    np.testing.assert_allclose(larger[covered] - start.object[covered], 1.5 * change, rtol=0, atol=1e-5 * np.abs(change).max() * 1.5 + 1e-6)


def test_a_step_other_than_one_is_logged_with_its_end_at_the_plateau(setup, caplog):
    import logging

    from ptycho_torch.model.refine import MAX_STEP, RefinementUpdate

    dataset, _, start = setup
    assert RefinementUpdate(step=MAX_STEP).step == 2.0
    with caplog.at_level(logging.INFO, logger="ptycho_torch.model.refine"):
        refine(start, dataset, 4, update=RefinementUpdate(plateau=0.999, step=1.5), progress=False)
    assert "momentum 0.5, step 1.5; iteration 2 lowered" in caplog.text
    assert "parallel updates without momentum and a unit step after it" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="ptycho_torch.model.refine"):
        refine(start, dataset, 2, progress=False)
    assert "step" not in caplog.text


def test_after_the_plateau_the_parallel_updates_take_a_unit_step(setup):
    from dataclasses import replace

    from ptycho_torch.model.refine import RefinementUpdate

    dataset, _, start = setup
    update = RefinementUpdate(plateau=0.999, step=1.5)
    switched = refine(start, dataset, 4, update=update, progress=False)
    two_sweeps = refine(start, dataset, 2, update=replace(update, plateau=0.0), progress=False)
    expected = refine(two_sweeps, dataset, 2, update=RefinementUpdate(patterns=None, momentum=0.0, plateau=0.0), progress=False)
    covered = start.coverage > 1e-3 * start.coverage.max()
    scale = np.abs(expected.object).max()
    np.testing.assert_allclose(switched.object[covered], expected.object[covered], rtol=0, atol=1e-3 * scale)


def test_a_parallel_update_without_momentum_has_nothing_to_switch_to(setup):
    from ptycho_torch.model.refine import PARALLEL, RefinementUpdate

    dataset, _, start = setup
    np.testing.assert_array_equal(refine(start, dataset, 4, update=RefinementUpdate(patterns=None, momentum=0.0, plateau=0.999), progress=False).object,
                                  refine(start, dataset, 4, update=PARALLEL, progress=False).object)


def test_the_switch_at_the_plateau_keeps_a_low_dose_scan_from_fitting_its_noise(tmp_path):
    """2e4 photons per pattern: the sweeps alone stall on the noise (amplitude 0.43, phase 0.78 when written); with the
    default plateau they end as parallel updates, which average it (0.56 / 0.91)."""
    from ptycho import corpus
    from ptycho_torch.model.refine import RefinementUpdate, flat_start

    arrays = corpus.simulate_recipe(corpus.recipe(131104, dose_range=(2e4, 2e4), n_points=256))
    np.savez(tmp_path / "low_dose.npz", **arrays)
    data = DataConfig(N=64, grid_size=(2, 2), K=7, subsample_seed=42)
    dataset = PtychoDataset(tmp_path / "low_dose.npz", data, ModelConfig(), TrainingConfig(n_groups=256), data_dir=tmp_path / "memmap",
                            progress=False)
    truth = arrays["objectGuess"]
    start = flat_start(dataset, Canvas(truth.shape, (0, 0)))
    sweeps_only = quality(refine(start, dataset, 20, update=RefinementUpdate(plateau=0.0), progress=False), truth)
    switched = quality(refine(start, dataset, 20, progress=False), truth)
    assert switched.amplitude_r > sweeps_only.amplitude_r + 0.05 and switched.phase_r > sweeps_only.phase_r, (sweeps_only, switched)


def test_the_sweeps_plans_are_released_before_the_parallel_update_is_built(setup, monkeypatch):
    """At the switch, memory holds one set of window plans (each up to PLAN_BYTES), not the sweeps' and the parallel's."""
    import weakref

    from ptycho_torch.model import refine as refine_module

    dataset, _, start = setup
    built, alive_at_build = [], []
    init = refine_module._Sweep.__init__

    def recording(self, *args, **kwargs):
        alive_at_build.append(sum(ref() is not None for ref in built))
        init(self, *args, **kwargs)
        built.append(weakref.ref(self))

    monkeypatch.setattr(refine_module._Sweep, "__init__", recording)
    refine(start, dataset, 4, update=refine_module.RefinementUpdate(plateau=0.999), progress=False)
    assert alive_at_build == [0, 0], alive_at_build


def test_no_misfit_is_computed_when_nothing_could_switch(setup, monkeypatch):
    """plateau 0, two iterations, or an update that already is the parallel one: the misfit (about 5 % of a sweep) is skipped."""
    from ptycho_torch.model import refine as refine_module
    from ptycho_torch.model.forward_model import FarFieldPtychography

    dataset, _, start = setup
    expected = {case: refine(start, dataset, n, update=update, progress=False).object for case, (n, update) in {
        "plateau 0": (4, refine_module.RefinementUpdate(plateau=0.0)),
        "two iterations": (2, refine_module.RefinementUpdate(plateau=0.999)),
        "all points, no momentum": (4, refine_module.RefinementUpdate(patterns=512, momentum=0.0, plateau=0.999)),
    }.items()}

    def refuse(*args, **kwargs):
        raise AssertionError("the misfit was computed")

    monkeypatch.setattr(FarFieldPtychography, "correction_and_misfit", refuse)
    got = {"plateau 0": refine(start, dataset, 4, update=refine_module.RefinementUpdate(plateau=0.0), progress=False).object,
           "two iterations": refine(start, dataset, 2, update=refine_module.RefinementUpdate(plateau=0.999), progress=False).object,
           "all points, no momentum": refine(start, dataset, 4, update=refine_module.RefinementUpdate(patterns=512, momentum=0.0, plateau=0.999),
                                             progress=False).object}
    for case in expected:
        np.testing.assert_array_equal(got[case], expected[case], err_msg=case)
    np.testing.assert_array_equal(got["all points, no momentum"],
                                  refine(start, dataset, 4, update=refine_module.RefinementUpdate(patterns=512, momentum=0.0, plateau=0.0),
                                         progress=False).object)


def test_the_plateau_is_looked_for_in_the_first_plateau_sweeps_only(setup, caplog):
    """The embedded scan (high dose) from the physics input: its misfit falls by less than 0.2 % per sweep from sweep 27
    on (slow convergence, not noise). Looked for in 40 sweeps it switches there; in the default 20 it never does, and 40
    sweeps then are the sweeps alone, bit for bit."""
    import logging
    from dataclasses import replace

    from ptycho_torch.model.refine import RefinementUpdate

    dataset, _, start = setup
    with caplog.at_level(logging.INFO, logger="ptycho_torch.model.refine"):
        refine(start, dataset, 40, update=RefinementUpdate(plateau_sweeps=40), progress=False)
    assert "iteration 27 lowered the data misfit" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="ptycho_torch.model.refine"):
        default = refine(start, dataset, 40, progress=False)
    assert "lowered the data misfit" not in caplog.text and RefinementUpdate().plateau_sweeps == 20
    np.testing.assert_array_equal(default.object, refine(start, dataset, 40, update=replace(RefinementUpdate(), plateau=0.0), progress=False).object)


def test_a_sweep_count_beyond_the_bound_is_refused_before_any_work(tmp_path):
    """A typo like --refine 99999999999999999999 was an internal error (an overflow in the progress bar) after the network's
    pass; it is refused by the parser, the settings, refine() and the Ptychodus variable, naming the bound."""
    from ptycho_torch.cli_reconstruct import build_parser, method_settings
    from ptycho_torch.cli import UsageError
    from ptycho_torch.workflow import MAX_SWEEPS, ReconstructionSettings, reconstruct_scan

    huge = "99999999999999999999"
    for options in (["--refine", huge], ["--start", "flat", "--refine", "5", "--object-network", huge],
                    ["--refine", str(MAX_SWEEPS + 1)]):
        with pytest.raises(SystemExit) as exit_:
            build_parser().parse_args(["pretrained", "scan.npz", *options])
        assert exit_.value.code == 2
    assert build_parser().parse_args(["pretrained", "scan.npz", "--refine", str(MAX_SWEEPS)]).refine == MAX_SWEEPS
    with pytest.raises(UsageError, match="at most 100,000"):
        method_settings(f"--start flat --refine {huge}", "PTYCHOPINN_RECONSTRUCT")
    with pytest.raises(ValueError, match="refine_iterations=.* from 0 .* to 100,000"):
        reconstruct_scan(None, None, ReconstructionSettings(start="flat", refine_iterations=int(huge)))
    with pytest.raises(ValueError, match="from 0 to 100,000"):
        refine(None, None, int(huge))
