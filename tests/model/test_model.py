"""PtychoPINN_Lightning, its training set-up and the stitching, on the embedded dataset (CPU)."""

from __future__ import annotations

import csv
import json
import logging
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

torch = pytest.importorskip("torch")
pytest.importorskip("tensordict")
L = pytest.importorskip("lightning")

from benchmarks.quality import reconstruction_quality  # noqa: E402
from ptycho import params  # noqa: E402
from ptycho.patches import extract_patches  # noqa: E402
from ptycho.scan_file import read_scan  # noqa: E402
from ptycho_torch.model import physics  # noqa: E402
from ptycho_torch.config_params import DataConfig, InferenceConfig, ModelConfig, TrainingConfig  # noqa: E402
from ptycho_torch.dset_loader_pt_mmap import PtychoDataset  # noqa: E402
from ptycho_torch.model import PtychoPINN_Lightning  # noqa: E402
from ptycho_torch.model.stitching import Canvas, default_canvas, reconstruct  # noqa: E402
from ptycho_torch.model.training import PtychoDataModule, build_trainer, split_by_region  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
NPZ = ROOT / "datasets" / "sim_small.npz"


def configs(**training):
    data = DataConfig(N=64, grid_size=(2, 2), K=7, nphotons=1e6, subsample_seed=42)
    model = ModelConfig(n_filters_scale=1, base_filters=32, object_big=True, cbam_encoder=False, use_shared_decoder=True)  # the width the held-out margin was measured at
    settings = dict(n_groups=48, epochs=2, batch_size=8, learning_rate=2e-3, device="cpu", num_workers=0,
                    train_data_file=str(NPZ), test_data_file=str(NPZ))
    settings.update(training)
    return data, model, TrainingConfig(**settings), InferenceConfig(batch_size=32)


@pytest.fixture(scope="module")
def memmap_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("memmap")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, memmap_dir):
    """Two epochs on 48 groups; returns the run directory, the model, the configs and the loss before training."""
    saved = params.snapshot()  # module scope runs outside the per-test restore of conftest.py
    try:
        return _train_two_epochs(tmp_path_factory, memmap_dir)
    finally:
        params.restore(saved)


HELD_OUT_FRACTION = 0.15  # 19 of 128 groups validate, from a strip of the scan the training groups never touch


def _train_two_epochs(tmp_path_factory, memmap_dir):
    data, model_config, training, inference = configs(n_groups=128)
    dataset = PtychoDataset(NPZ, data, model_config, training, data_dir=memmap_dir, progress=False)
    model = PtychoPINN_Lightning(model_config, data, training, inference)
    module = PtychoDataModule(dataset, data, model_config, training, val_fraction=HELD_OUT_FRACTION)
    run_dir = tmp_path_factory.mktemp("run")
    trainer = build_trainer(training, tmp_path_factory.mktemp("validation"), progress=False)
    before = trainer.validate(model, datamodule=module, verbose=False)[0][model.val_loss_name]
    trainer = build_trainer(training, run_dir, progress=False)
    trainer.fit(model, datamodule=module)
    return run_dir, model, (data, model_config, training, inference), before, (dataset, module.val_indices)


def test_two_epochs_lower_the_validation_loss_and_write_checkpoints_and_configs(trained):
    run_dir, model, (data, model_config, training, inference), before, _ = trained
    rows = [row for row in csv.DictReader(open(run_dir / "metrics.csv")) if row.get(model.val_loss_name)]
    losses = [float(row[model.val_loss_name]) for row in rows]
    assert len(losses) == 2, rows
    assert losses[-1] < before, (before, losses)
    assert any(row.get(model.loss_name) for row in csv.DictReader(open(run_dir / "metrics.csv")))
    assert (run_dir / "checkpoints" / "best-checkpoint.ckpt").is_file()
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    written = json.loads((run_dir / "configs" / "model_config.json").read_text())
    assert written["n_filters_scale"] == 1 and written["object_big"] is True
    assert json.loads((run_dir / "configs" / "training_config.json").read_text())["epochs"] == 2


def test_checkpoint_loads_with_weights_only_and_keyword_overrides(trained):
    run_dir, model, (data, model_config, training, inference), _, _ = trained
    path = run_dir / "checkpoints" / "last.ckpt"
    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert set(raw["hyper_parameters"]) >= {"model_config", "data_config", "training_config", "inference_config"}
    assert raw["hyper_parameters"]["model_config"]["use_shared_decoder"] is True
    plain = PtychoPINN_Lightning.load_from_checkpoint(path, map_location="cpu")
    overridden = PtychoPINN_Lightning.load_from_checkpoint(path, map_location="cpu", model_config=model_config, data_config=data,
                                                           training_config=replace(training, device="cuda"), inference_config=inference)
    assert overridden.training_config.device == "cuda" and isinstance(plain.data_config, DataConfig)
    images = torch.rand(2, 8, 64, 64)  # generator input: real and imaginary part of the 4 members' object estimates
    model.eval()
    for loaded in (plain, overridden):
        loaded.eval()
        torch.testing.assert_close(loaded.network.generator_output(images), model.network.generator_output(images))


def test_dict_and_dataclass_configs_build_the_same_model():
    data, model_config, training, inference = configs()
    a = PtychoPINN_Lightning(model_config, data, training, inference)
    b = PtychoPINN_Lightning(asdict(model_config), asdict(data), asdict(training), asdict(inference))
    assert a.hparams == b.hparams
    for (name, p), (_, q) in zip(a.state_dict().items(), b.state_dict().items()):
        torch.testing.assert_close(p, q, msg=name)  # same seed: same initial weights
    out = a.network.generator_output(torch.rand(3, 8, 64, 64))
    assert out.shape == (3, 4, 64, 64) and out.dtype == torch.complex64
    torch.testing.assert_close(out, torch.ones_like(out))  # zero-initialised heads: unit amplitude, zero phase
    assert a.loss_name == "poisson_train_loss" and a.val_loss_name == "poisson_val_loss"


@pytest.mark.parametrize("field, value, message", [
    ("eca_encoder", True, "ModelConfig.eca_encoder"),
    ("architecture", "fno", "ModelConfig.architecture"),
    ("loss_function", "L2", "ModelConfig.loss_function"),
    ("generator_input", "fft", "ModelConfig.generator_input"),
    ("object_estimate_steps", 0, "ModelConfig.object_estimate_steps"),
    ("object_estimate_steps", 2.5, "ModelConfig.object_estimate_steps"),
    ("object_estimate_steps", 101, r"ModelConfig.object_estimate_steps=101 must be an integer from 1 to 100"),
    ("object_estimate_steps", float("inf"), "ModelConfig.object_estimate_steps"),
    ("generator_output", "region", "ModelConfig.generator_output"),
    ("truth_loss_weight", -1.0, "ModelConfig.truth_loss_weight"),
    ("n_filters_scale", 4096, r"ModelConfig.n_filters_scale=4096 with base_filters=\d+: the U-Net would hold .* more than half of this "
                              r"machine's memory .*; lower n_filters_scale or base_filters"),
])
def test_unsupported_options_are_refused_by_name(field, value, message):
    data, model_config, training, inference = configs()
    with pytest.raises(ValueError, match=message):
        PtychoPINN_Lightning(replace(model_config, **{field: value}), data, training, inference)
    with pytest.raises(ValueError, match="unknown ModelConfig field"):
        PtychoPINN_Lightning({"n_filter_scale": 1}, data, training, inference)


def test_numpy_integers_are_accepted_as_estimate_steps():
    """A bound check written with isinstance(int) refused np.int64(2), which configs read from arrays hold."""
    data, model_config, training, inference = configs()
    network = PtychoPINN_Lightning(replace(model_config, object_estimate_steps=np.int64(2)), data, training, inference).network
    assert network.model_config.object_estimate_steps == 2


def test_the_warm_up_cosine_schedule_is_one_the_data_pipeline_accepts_too(memmap_dir):
    """The model offered 'Cosine', which the dataset's config refused; both now take PtychoPINN's 'WarmupCosine'."""
    data, model_config, training, inference = configs(n_groups=16, epochs=3, scheduler="WarmupCosine", lr_warmup_epochs=1, lr_min_ratio=0.0)
    PtychoDataset(NPZ, data, model_config, training, data_dir=memmap_dir, progress=False)
    schedule = PtychoPINN_Lightning(model_config, data, training, inference).configure_optimizers()["lr_scheduler"]["scheduler"]
    assert [schedule.lr_lambdas[0](epoch) for epoch in range(3)] == pytest.approx([0.5, 1.0, 0.5])
    with pytest.raises(ValueError, match="WarmupCosine"):
        PtychoPINN_Lightning(model_config, data, replace(training, scheduler="Cosine"), inference)


def test_supervised_mode_trains_on_ground_truth_patches(memmap_dir):
    data, model_config, training, inference = configs(n_groups=16)
    model_config = replace(model_config, mode="Supervised")
    dataset = PtychoDataset(NPZ, data, model_config, training, data_dir=memmap_dir, ground_truth=True, progress=False)
    model = PtychoPINN_Lightning(model_config, data, training, inference)
    assert model.loss_name == "supervised_train_loss"
    batch = dataset[np.arange(8)]
    optimiser = torch.optim.Adam(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(3):
        loss = model.loss_of(batch)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    no_truth = PtychoDataset(NPZ, data, model_config, training, data_dir=memmap_dir, progress=False)[np.arange(2)]
    with pytest.raises(KeyError, match="ground_truth=True"):
        model.loss_of(no_truth)


def test_generator_sees_the_object_estimate_of_its_group_or_the_diffraction(memmap_dir):
    data, model_config, training, inference = configs(n_groups=16)
    batch, probe, scale = PtychoDataset(NPZ, data, model_config, training, data_dir=memmap_dir, progress=False)[np.arange(4)]
    model = PtychoPINN_Lightning(model_config, data, training, inference)
    inputs = model.network.generator_input(batch, probe, scale.reshape(-1))
    unit_probe = physics.unit_peak(physics.as_probe_modes(probe))
    mean_counts = 1 / batch["physics_scaling_constant"].reshape(-1).double()  # the experiment's mean counts per pattern
    kappa = physics.count_scale((32 / mean_counts.sqrt()).float(), unit_probe, 64)
    modulus = physics.measured_modulus(physics.counts_from_amplitudes(batch["images"], scale), kappa)
    estimate = physics.object_estimate(modulus, unit_probe, batch["coords_relative"].float(), model_config.object_estimate_steps)
    torch.testing.assert_close(inputs, torch.cat([estimate.real - 1, estimate.imag], dim=1))
    assert model.network.predict_patches(batch, probe, scale).shape == (4, 4, 64, 64)

    upstream_input = PtychoPINN_Lightning(replace(model_config, generator_input="diffraction", generator_output="object"), data, training, inference)
    assert upstream_input.network.generator_input(batch, probe, scale.reshape(-1)) is batch["images"]
    assert upstream_input.network.predict_patches(batch, probe, scale).shape == (4, 4, 64, 64)


def test_inputs_and_loss_ignore_the_probe_scale_and_the_rest_of_the_batch(memmap_dir):
    """A probe scaled by 1e20 gave NaN (|P|^2 overflowed float32); an item's input depended on its batch mates."""
    data, model_config, training, inference = configs(n_groups=16)
    batch, probe, scale = PtychoDataset(NPZ, data, model_config, training, data_dir=memmap_dir, progress=False)[np.arange(8)]
    model = PtychoPINN_Lightning(model_config, data, training, inference)
    inputs = model.network.generator_input(batch, probe, scale.reshape(-1))
    loss = model.loss_of((batch, probe, scale))
    for factor in (1e-20, 1e20):
        torch.testing.assert_close(model.network.generator_input(batch, probe * factor, scale.reshape(-1)), inputs, atol=5e-3, rtol=0)  # measured 1.6e-3 (was 0.165, NaN)
        torch.testing.assert_close(model.loss_of((batch, probe * factor, scale)), loss, rtol=1e-4, atol=0)  # the input agrees to 5e-3 only
    alone = model.network.generator_input(batch[1:2], probe[1:2], scale[1:2].reshape(-1))
    torch.testing.assert_close(alone[0], inputs[1], atol=5e-3, rtol=0)


def test_a_checkpoint_from_before_generator_input_loads_as_a_diffraction_model(tmp_path):
    data, model_config, training, inference = configs()
    old = PtychoPINN_Lightning(replace(model_config, generator_input="diffraction", generator_output="object", base_filters=32), data, training, inference, seed=3)
    hparams = dict(old.hparams)
    hparams["model_config"] = {k: v for k, v in hparams["model_config"].items()
                               if k not in ("generator_input", "object_estimate_steps", "generator_output", "truth_loss_weight", "base_filters")}
    path = tmp_path / "old.ckpt"
    torch.save({"state_dict": old.state_dict(), "hyper_parameters": hparams, "pytorch-lightning_version": "2.6.6"}, path)
    loaded = PtychoPINN_Lightning.load_from_checkpoint(path, map_location="cpu")
    assert loaded.model_config.generator_input == "diffraction" and loaded.hparams["model_config"]["generator_input"] == "diffraction"
    assert loaded.model_config.generator_output == "object"
    images = torch.rand(2, 4, 64, 64)
    torch.testing.assert_close(loaded.eval().network.generator_output(images), old.eval().network.generator_output(images))


def test_a_checkpoint_from_before_generator_output_loads_as_an_object_model(tmp_path, memmap_dir):
    """Written when the generator read a 40-step estimate and output the object itself."""
    data, model_config, training, inference = configs(n_groups=16)
    old = PtychoPINN_Lightning(replace(model_config, object_estimate_steps=40, generator_output="object", base_filters=32), data, training, inference, seed=3)
    hparams = dict(old.hparams)
    hparams["model_config"] = {k: v for k, v in hparams["model_config"].items() if k not in ("generator_output", "truth_loss_weight", "base_filters")}
    path = tmp_path / "old.ckpt"
    torch.save({"state_dict": old.state_dict(), "hyper_parameters": hparams, "pytorch-lightning_version": "2.6.6"}, path)
    loaded = PtychoPINN_Lightning.load_from_checkpoint(path, map_location="cpu")
    assert (loaded.model_config.generator_output, loaded.model_config.object_estimate_steps, loaded.model_config.base_filters) == ("object", 40, 32)
    batch, probe, scale = PtychoDataset(NPZ, data, model_config, training, data_dir=memmap_dir, progress=False)[np.arange(2)]
    torch.testing.assert_close(loaded.eval().network.predict_patches(batch, probe, scale), old.eval().network.predict_patches(batch, probe, scale))


def test_single_pattern_groups_get_an_estimate_and_a_finite_loss(tmp_path):
    data, model_config, training, inference = configs(n_groups=8)
    data = replace(data, grid_size=(1, 1), C=1)
    batch = PtychoDataset(NPZ, data, model_config, training, data_dir=tmp_path, progress=False)[np.arange(4)]
    model = PtychoPINN_Lightning(model_config, data, training, inference)
    assert model.network.generator_input(batch[0], batch[1], batch[2].reshape(-1)).shape == (4, 2, 64, 64)
    loss = model.loss_of(batch)
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def true_member_patches(batch, truth):
    """The object patch under each member's diffraction: at ``coords_center - coords_relative`` (this project's sign)."""
    position = (batch["coords_center"] - batch["coords_relative"])[:, :, 0, :].reshape(-1, 2).numpy()
    patches = extract_patches(truth, position[:, 0], position[:, 1], 64)
    return torch.from_numpy(patches).reshape(batch["images"].shape[0], -1, 64, 64)


def test_stitching_true_patches_rebuilds_the_object_on_its_grid(memmap_dir, monkeypatch):
    """Geometry and count scale of the stitching alone: the true patches stand in for predictions."""
    data, model_config, training, inference = configs(n_groups=512)
    dataset = PtychoDataset(NPZ, data, model_config, training, data_dir=memmap_dir, progress=False)
    model = PtychoPINN_Lightning(model_config, data, training, inference)
    truth = read_scan(NPZ, load_diffraction=False).objectGuess
    monkeypatch.setattr(model.network, "predict_patches", lambda batch, probe, scale, **_: true_member_patches(batch, truth))
    result = reconstruct(model, dataset, canvas=Canvas(truth.shape, (0, 0)), progress=False)
    covered = result.coverage > 0.05 * result.coverage.max()
    quality = reconstruction_quality(result.object, truth, covered)
    assert quality.shift_px == (0, 0)
    assert quality.amplitude_r > 0.99 and quality.phase_r > 0.99, quality
    inner = ndimage.binary_erosion(covered, iterations=8)
    ratio = result.object[inner] / truth[inner]  # one real factor: the counts fix the scale, the probe's norm does not
    deviation = np.abs(ratio / np.median(ratio.real) - 1)  # bilinear resampling smooths the fine texture a little
    assert np.median(deviation) < 0.04 and np.percentile(deviation, 99) < 0.1, (np.median(deviation), deviation.max())  # measured 0.020, max 0.089
    # kappa maps unit transmission to the mean counts; this object transmits ~56 % of the intensity
    assert 1.25 < result.gain < 1.45 and np.median(ratio.real) == pytest.approx(result.gain, rel=0.02)


def test_stitching_aligns_the_unobservable_constant_phase_of_each_group(memmap_dir, monkeypatch):
    """True patches, each group turned by its own random constant phase: aligned, the phase is rebuilt; not aligned, it is lost."""
    data, model_config, training, inference = configs(n_groups=512)
    dataset = PtychoDataset(NPZ, data, model_config, training, data_dir=memmap_dir, progress=False)
    model = PtychoPINN_Lightning(model_config, data, training, inference)
    truth = read_scan(NPZ, load_diffraction=False).objectGuess
    rng = np.random.default_rng(0)

    def turned_true_patches(batch, probe, scale, **_):
        turn = torch.from_numpy(np.exp(1j * rng.uniform(-np.pi, np.pi, (batch["images"].shape[0], 1, 1, 1))).astype(np.complex64))
        return true_member_patches(batch, truth) * turn

    monkeypatch.setattr(model.network, "predict_patches", turned_true_patches)
    scores = {}
    for align in (True, False):
        result = reconstruct(model, dataset, canvas=Canvas(truth.shape, (0, 0)), progress=False, align_phase=align)
        scores[align] = reconstruction_quality(result.object, truth, result.coverage > 0.05 * result.coverage.max())
    assert scores[True].phase_r > 0.99 and scores[True].nrmse < 0.05, scores[True]
    assert scores[False].phase_r < 0.5, scores[False]


def test_true_patches_explain_the_measured_counts_under_the_count_scale(memmap_dir):
    """The forward model with kappa from the counts reproduces the data: Poisson NLL near its floor."""
    data, model_config, training, inference = configs(n_groups=64)
    dataset = PtychoDataset(NPZ, data, model_config, training, data_dir=memmap_dir, progress=False)
    model = PtychoPINN_Lightning(model_config, data, training, inference)
    batch, probe, scale = dataset[np.arange(16)]
    truth = read_scan(NPZ, load_diffraction=False).objectGuess
    counts = physics.counts_from_amplitudes(batch["images"], scale)
    predicted = model.network.predicted_counts(true_member_patches(batch, truth), probe, scale)
    predicted = predicted * counts.sum() / predicted.sum()  # the scalar gain (this object transmits ~56 %)
    nll_truth = physics.poisson_nll(predicted, counts).mean()
    nll_flat = physics.poisson_nll(model.network.predicted_counts(torch.ones(16, 4, 64, 64, dtype=torch.complex64), probe, scale), counts).mean()
    floor = physics.poisson_nll(counts, counts).mean()
    assert float(nll_truth - floor) < 1.0 < float(nll_flat - floor), (float(nll_truth), float(nll_flat), float(floor))


def test_default_canvas_follows_ptychodus_rule():
    x, y = np.array([10.0, 30.5, 20.0]), np.array([5.0, 5.0, 45.2])
    canvas = default_canvas(x, y, 64)
    assert canvas.shape_px == (int(np.ceil(40.2 + 64)), int(np.ceil(20.5 + 64)))
    mid_row, mid_col = (5 + 45.2) / 2 + canvas.origin_px[0], (10 + 30.5) / 2 + canvas.origin_px[1]
    assert (mid_row, mid_col) == pytest.approx(((canvas.shape_px[0] - 1) / 2, (canvas.shape_px[1] - 1) / 2))


def test_trained_model_reconstruction_clears_a_quality_floor(trained, memmap_dir):
    run_dir, model, (data, model_config, training, inference), _, _ = trained
    dataset = PtychoDataset(NPZ, data, model_config, replace(training, n_groups=128), data_dir=memmap_dir, progress=False)
    truth = read_scan(NPZ, load_diffraction=False).objectGuess
    result = reconstruct(model, dataset, canvas=Canvas(truth.shape, (0, 0)), progress=False)
    assert result.object.dtype == np.complex64 and result.object.shape == truth.shape
    covered = result.coverage > 0.05 * result.coverage.max()
    quality = reconstruction_quality(result.object, truth, covered)
    assert quality.amplitude_r > AMPLITUDE_FLOOR and quality.phase_r > PHASE_FLOOR, quality


# A floor for the whole pipeline (physics input, network, stitching), far below the benchmark
# (benchmarks/RESULTS.md): measured 0.929 / 0.517 after these 2 epochs, 0.929 / 0.524 for the physics
# input alone (the network's own gain is tested on held-out groups above). A reconstruction that
# lands shifted or from the wrong patches scores near 0.
AMPLITUDE_FLOOR = 0.8
PHASE_FLOOR = 0.35


def held_out_nll(model, dataset, groups, use_network: bool) -> float:
    td, probe, scale = dataset[groups]
    scale = scale.reshape(-1)
    model.eval()
    with torch.no_grad():
        patches = model.network.predict_patches(td, probe, scale, use_network=use_network)
        counts = physics.counts_from_amplitudes(td["images"], scale)
        return float(physics.poisson_nll(model.network.predicted_counts(patches, probe, scale, td), counts).mean())


def test_the_trained_network_fits_held_out_patterns_better_than_its_input_and_its_untrained_self(trained):
    """Held-out groups (a strip of the scan no training group touches): the network must improve on its physics input.

    Measured after these 2 epochs on 98 training groups: input alone 4.108, untrained network 4.108
    (its correction starts at 1), trained 3.851. A network that is bypassed, or that learned
    nothing, gives the input's value and fails.
    """
    run_dir, model, (data, model_config, training, inference), _, (dataset, held_out) = trained
    untrained = PtychoPINN_Lightning(model_config, data, training, inference)
    physics_input = held_out_nll(model, dataset, held_out, use_network=False)
    assert held_out_nll(untrained, dataset, held_out, use_network=False) == pytest.approx(physics_input)
    assert held_out_nll(untrained, dataset, held_out, use_network=True) == pytest.approx(physics_input, rel=1e-4)
    assert held_out_nll(model, dataset, held_out, use_network=True) < physics_input - HELD_OUT_NLL_MARGIN


HELD_OUT_NLL_MARGIN = 0.08  # against a measured gap of 0.257


def test_loaders_never_start_more_workers_than_the_machine_has_cores_to_spare(memmap_dir, monkeypatch):
    """Ptychodus asks for 4 loader workers; on 2 cores the loaders started 4 processes beside the training."""
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1})
    data, model_config, training, _ = configs(n_groups=32, num_workers=4)
    dataset = PtychoDataset(NPZ, data, model_config, training, data_dir=memmap_dir, progress=False)
    module = PtychoDataModule(dataset, data, model_config, training)
    module.setup()
    assert module.train_dataloader().num_workers == 1 and module.val_dataloader().num_workers == 1
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(16)))
    assert module.train_dataloader().num_workers == 4


def test_the_loader_workers_line_is_logged_once_and_a_callers_limit_is_kept(memmap_dir, monkeypatch, caplog):
    """Both loaders of a fit used to log the same cut in loader workers; ptycho-train --threads N allows none beside its threads."""
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1})
    data, model_config, training, _ = configs(n_groups=32, num_workers=4)
    dataset = PtychoDataset(NPZ, data, model_config, training, data_dir=memmap_dir, progress=False)
    module = PtychoDataModule(dataset, data, model_config, training)
    module.setup()
    with caplog.at_level("INFO", logger="ptycho_torch.model.training"):
        assert module.train_dataloader().num_workers == 1 and module.val_dataloader().num_workers == 1
    assert [r.getMessage() for r in caplog.records if "loader worker" in r.getMessage()] == [
        "TrainingConfig.num_workers=4: using 1 loader worker(s), the cores this machine has to spare"]
    limited = PtychoDataModule(dataset, data, model_config, training, max_loader_workers=0)
    limited.setup()
    assert limited.train_dataloader().num_workers == 0 and limited.val_dataloader().num_workers == 0


def test_trainer_falls_back_to_one_cpu_process_when_cuda_is_missing(tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    _, _, training, _ = configs()
    with caplog.at_level(logging.WARNING, logger="ptycho_torch.model.training"):
        trainer = build_trainer(replace(training, device="cuda", n_devices=2, strategy="ddp_spawn", gradient_clip_val=0.5, accum_steps=3), tmp_path)
    assert "no CUDA device" in caplog.text
    assert trainer.accelerator.__class__.__name__ == "CPUAccelerator"
    assert trainer.num_devices == 1 and trainer.world_size == 1
    assert trainer.strategy.__class__.__name__ == "SingleDeviceStrategy"
    assert trainer.gradient_clip_val == 0.5 and trainer.accumulate_grad_batches == 3


def test_validation_groups_share_no_scan_point_with_training_groups(memmap_dir):
    data, model_config, training, _ = configs(n_groups=512)
    dataset = PtychoDataset(NPZ, data, model_config, training, data_dir=memmap_dir, progress=False)
    train, val = split_by_region(dataset, 0.05, 42)
    members = dataset.experiments[0].grouping.nn_indices
    assert len(val) == 26 and len(train) > 400, (len(train), len(val))
    assert not set(members[train].ravel()) & set(members[val].ravel())
    again = split_by_region(dataset, 0.05, 42)
    assert np.array_equal(train, again[0]) and np.array_equal(val, again[1])
    other = split_by_region(dataset, 0.05, 7)
    assert not np.array_equal(val, other[1])
    # the validation groups lie together at one edge: their points span a small part of the scan
    x, y = dataset.experiments[0].scan.xcoords, dataset.experiments[0].scan.ycoords
    spans = [np.ptp(c[members[val]]) / np.ptp(c) for c in (x, y)]
    assert min(spans) < 0.25, spans


def test_a_scan_too_small_to_split_is_refused_naming_it_and_the_fix(tmp_path, memmap_dir):
    from ptycho.simulate import SimulationSettings, write_scan_npz

    scan = write_scan_npz(tmp_path / "tiny.npz", SimulationSettings(n_points=8, seed=2))
    data, model_config, training, _ = configs(n_groups=8)
    dataset = PtychoDataset(scan, data, model_config, training, data_dir=memmap_dir, progress=False)
    with pytest.raises(ValueError, match=f"{scan}: no training group is left outside the validation strip of 8 groups .*train on a scan of more points"):
        split_by_region(dataset, 0.05, 42)


def test_every_scan_of_a_directory_gives_validation_groups(tmp_path, memmap_dir):
    import shutil

    for name in ("a.npz", "b.npz"):
        shutil.copy(NPZ, tmp_path / name)
    data, model_config, training, _ = configs(n_groups=64)
    dataset = PtychoDataset(tmp_path, data, model_config, training, data_dir=memmap_dir, progress=False)
    train, val = split_by_region(dataset, 0.05, 42)
    experiment = dataset._index.experiment_of
    assert sorted(set(experiment[val])) == [0, 1] and sorted(set(experiment[train])) == [0, 1]
    for e in (0, 1):
        members = dataset.experiments[e].grouping.nn_indices
        local = dataset._index.local
        assert not set(members[local[train[experiment[train] == e]]].ravel()) & set(members[local[val[experiment[val] == e]]].ravel())


def two_level_scan(path: Path, dark_amplitude: float) -> np.ndarray:
    """sim_small's positions and probe over an object transmitting 1 on its left half and ``dark_amplitude`` on its right (noise-free)."""
    with np.load(NPZ, allow_pickle=False) as source:
        x, y, probe, shape = source["xcoords"], source["ycoords"], source["probeGuess"], source["objectGuess"].shape
    obj = np.ones(shape, np.complex64)
    obj[:, shape[1] // 2 :] = dark_amplitude
    exit_waves = extract_patches(obj, x, y, 64) * probe
    diffraction = np.abs(np.fft.fftshift(np.fft.fft2(exit_waves, norm="ortho"), axes=(-2, -1))).astype(np.float32)
    np.savez(path, xcoords=x, ycoords=y, diffraction=diffraction, probeGuess=probe, objectGuess=obj, scan_index=np.zeros(len(x), np.int64))
    return obj


@pytest.mark.parametrize("normalize", ["Batch", "Group"])
def test_stitched_amplitude_keeps_the_contrast_between_groups_whatever_the_normalisation(tmp_path, normalize):
    """normalize='Group' scaled every group to unit mean transmission: a dark half came out as bright as the light one."""
    truth = two_level_scan(tmp_path / "two_level.npz", dark_amplitude=0.4)
    data, model_config, training, inference = configs(n_groups=256)
    data = replace(data, normalize=normalize)
    dataset = PtychoDataset(tmp_path / "two_level.npz", data, model_config, training, data_dir=tmp_path / "memmap", progress=False)
    model = PtychoPINN_Lightning(model_config, data, training, inference)
    result = reconstruct(model, dataset, canvas=Canvas(truth.shape, (0, 0)), progress=False, use_network=False)
    inner = ndimage.binary_erosion(result.coverage > 0.05 * result.coverage.max(), iterations=16)
    columns = np.arange(truth.shape[1])[None, :]
    left = np.abs(result.object[inner & (columns < truth.shape[1] // 2 - 24)]).mean()
    right = np.abs(result.object[inner & (columns >= truth.shape[1] // 2 + 24)]).mean()
    assert right / left == pytest.approx(0.4, abs=0.06), (left, right)


def test_checkpoints_with_and_without_the_network_prefix_load_into_the_plain_network_and_lightning(tmp_path, memmap_dir):
    """0b10270's checkpoints keyed the weights ``generator.*``; now Lightning keys them ``network.generator.*``."""
    from ptycho_torch.model.checkpoints import load_network

    data, model_config, training, inference = configs(n_groups=16)
    model = PtychoPINN_Lightning(model_config, data, training, inference, seed=5)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.01 * torch.randn_like(parameter))  # not the initialisation a fresh network would have
    batch, probe, scale = PtychoDataset(NPZ, data, model_config, training, data_dir=memmap_dir, progress=False)[np.arange(3)]
    expected = model.eval()(batch, probe, scale)  # the LightningModule's forward: the prediction
    new_keys = model.state_dict()
    assert all(key.startswith("network.") for key in new_keys)
    old_keys = {key.removeprefix("network."): value for key, value in new_keys.items()}
    for name, state in (("new", new_keys), ("old", old_keys)):
        path = tmp_path / f"{name}.ckpt"
        torch.save({"state_dict": state, "hyper_parameters": dict(model.hparams), "pytorch-lightning_version": "2.6.6"}, path)
        plain = load_network(path)
        assert not isinstance(plain, L.LightningModule)
        torch.testing.assert_close(plain.predict_patches(batch, probe, scale), expected)
        torch.testing.assert_close(PtychoPINN_Lightning.load_from_checkpoint(path, map_location="cpu").eval().network.predict_patches(batch, probe, scale), expected)


def test_reconstruct_of_a_training_dataset_covers_the_whole_scan(memmap_dir):
    """The README's Python route: a dataset of 64 training groups still reconstructs every scan point, as the command does."""
    data, model_config, training, inference = configs(n_groups=64)
    few = PtychoDataset(NPZ, data, model_config, training, data_dir=memmap_dir, progress=False)
    assert len(np.unique(few.experiments[0].grouping.nn_indices)) < 512
    model = PtychoPINN_Lightning(model_config, data, training, inference)
    everything = PtychoDataset(NPZ, data, model_config, replace(training, n_groups=512), data_dir=memmap_dir, progress=False)
    from_few = reconstruct(model, few, progress=False, use_network=False)
    from_all = reconstruct(model, everything, progress=False, use_network=False)
    assert (from_few.coverage > 0).mean() == pytest.approx((from_all.coverage > 0).mean())
    np.testing.assert_allclose(from_few.object, from_all.object, rtol=0, atol=1e-5)


def test_bf16_precision_runs_the_unet_body_in_bfloat16_and_stays_close_to_fp32():
    from ptycho_torch.model.pinn import choose_precision

    data, model_config, training, inference = configs()
    network = PtychoPINN_Lightning(model_config, data, training, inference, seed=2).network.eval()
    with torch.no_grad():
        for parameter in network.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    images = torch.rand(2, 8, 64, 64)
    with torch.inference_mode():
        network.precision = "fp32"
        exact = network.generator_output(images)
        network.precision = "bf16"
        rounded = network.generator_output(images)
    assert rounded.dtype == torch.complex64 and not torch.equal(rounded, exact)  # the bf16 path ran
    assert float((rounded - exact).abs().max() / exact.abs().max()) < 0.02
    assert choose_precision("fp32", "cpu") == "fp32" and choose_precision("bf16", "cpu") == "bf16"
    assert choose_precision("auto", "cpu") in ("fp32", "bf16")
    with pytest.raises(ValueError, match="precision 'half'"):
        choose_precision("half", "cpu")
