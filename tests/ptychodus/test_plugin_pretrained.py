"""The shipped model in the Ptychodus API: Reconstruct before any Train, Train fine-tunes (a tiny stand-in, never the real weights)."""

from __future__ import annotations

import json
import logging
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ptychodus")
pytest.importorskip("torch")
pytest.importorskip("tensordict")
pytest.importorskip("lightning")
pytest.importorskip("scipy")

import torch  # noqa: E402
from ptychodus.model.ptychopinn_torch._subprocess import run_reconstruct, run_train  # noqa: E402

import ptycho_torch.pretrained as pretrained  # noqa: E402
from ptycho_torch.api.base_api import INIT_ENV, RECONSTRUCT_ENV, ConfigManager, InferenceEngine, PtychoModel, load_model  # noqa: E402
from ptycho_torch.model.checkpoints import load_network  # noqa: E402
from tests.ptychodus.plugin_support import (  # noqa: E402
    build_configs,
    complex_fit_quality,
    export_training_data,
    reconstruct_input,
    reconstruct_payload,
    run_in_process,
    scanned_interior,
    train_payload,
)
from tests.standin_model import ship_standin, standin_network, write_standin  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
N_POINTS = 64
SMALL = dict(model_size=64, num_filters_scale=1, epochs=1, coordinate_subsampling_factor=1, num_dataloader_workers=0)


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("PTYCHOPINN_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv(INIT_ENV, raising=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def parameters():
    return reconstruct_input(N_POINTS)


def parameters_of(network) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in getattr(network, "network", network).named_parameters()}


def same_weights(a, b, atol: float = 0.0) -> bool:
    first, second = parameters_of(a), parameters_of(b)
    return first.keys() == second.keys() and all(torch.allclose(first[k], second[k], rtol=0, atol=atol) for k in first)


RECONSTRUCT_BEFORE_TRAIN = r"""
import json, logging, sys
logging.basicConfig(level=logging.INFO)
from pathlib import Path
import numpy as np
import ptycho_torch.pretrained as pretrained
pretrained.MODELS_DIR = Path(sys.argv[1])
from ptychodus.api.preprocess.diffraction import inpaint_bad_pixels
from tests.ptychodus.plugin_support import reconstruct_input
from ptycho_torch.api.base_api import ConfigManager, InferenceEngine, PtychoDataLoader, PtychoModel, load_model

parameters = reconstruct_input(int(sys.argv[2]))
geometry = parameters.product.object_.get_geometry()
positions = np.column_stack((geometry.map_probe_positions_to_object_y_px(parameters.product.probe_positions),
                             geometry.map_probe_positions_to_object_x_px(parameters.product.probe_positions)))
patterns = inpaint_bad_pixels(parameters.diffraction_patterns, parameters.bad_pixels)
probe = parameters.product.probes.get_probe_no_opr().get_array()

def stitched(manager, model):
    engine = InferenceEngine(config_manager=manager, ptycho_model=model)  # as Ptychodus's run_reconstruct: engine, then loader
    loader = PtychoDataLoader.from_np(diff_patterns=patterns, probe=probe, positions=positions, config_manager=manager, progress=False)
    return engine.predict_and_stitch(loader, progress=False)

before_train = stitched(ConfigManager(data_config={"N": patterns.shape[-1]}), PtychoModel())  # no model trained or loaded
lightning_imported = "lightning" in sys.modules
explicit = stitched(*reversed(load_model(pretrained.MODELS_DIR / "pinn64.ckpt")))
print(json.dumps({"lightning": lightning_imported, "shape": list(before_train.shape), "input_shape": list(parameters.product.object_.get_layer(0).shape),
                  "complex": bool(np.iscomplexobj(before_train)), "finite": bool(np.isfinite(before_train).all()),
                  "nonzero": bool(np.abs(before_train).max() > 0), "same": bool(np.array_equal(before_train, explicit))}))
"""


def test_reconstruct_before_any_train_uses_the_shipped_model_without_importing_lightning(tmp_path):
    write_standin(tmp_path / "models" / "pinn64.ckpt")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PTYCHOPINN_CACHE_DIR": str(tmp_path / "cache")}
    result = subprocess.run([sys.executable, "-c", RECONSTRUCT_BEFORE_TRAIN, str(tmp_path / "models"), str(N_POINTS)], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["lightning"] is False, "inference went through Lightning"
    assert report["shape"] == report["input_shape"] and report["complex"] and report["finite"] and report["nonzero"]
    assert report["same"], "the model used when none was loaded is the shipped one"
    assert "no model was trained or loaded: reconstructing with the shipped model 'pretrained'" in result.stderr


def test_reconstruct_before_train_refuses_a_pattern_size_without_a_shipped_model_naming_the_sizes(tmp_path, monkeypatch):
    ship_standin(monkeypatch, tmp_path / "models")
    manager = ConfigManager(data_config={"N": 128})
    with pytest.raises(pretrained.UnknownModelError, match=r"no shipped model reconstructs 128 x 128 .*pretrained \(64 x 64 patterns\).*Load Model"):
        InferenceEngine(config_manager=manager, ptycho_model=PtychoModel())  # before any loader, so before any data is read
    monkeypatch.setattr(pretrained, "MODELS_DIR", tmp_path / "empty")
    with pytest.raises(pretrained.UnknownModelError, match=r"no shipped model's weights are in this installation"):
        load_model(None, pattern_size=64)


def test_loading_the_shipped_file_in_ptychodus_reconstructs(tmp_path, monkeypatch, parameters):
    """The GUI's Load Model with the shipped weights-only file: Ptychodus's own run_reconstruct (Lightning's loader) reads it."""
    path = ship_standin(monkeypatch, tmp_path / "models")
    messages = run_in_process(run_reconstruct, reconstruct_payload("Unsupervised", path, parameters))
    assert [tag for tag, _ in messages] == ["output"]
    array = pickle.loads(messages[0][1]).product.object_.get_layer(0)
    assert array.shape == parameters.product.object_.get_layer(0).shape and np.isfinite(array).all() and np.abs(array).max() > 0


def test_ptychodus_train_fine_tunes_the_shipped_model_by_default(tmp_path, monkeypatch, parameters, caplog):
    ship_standin(monkeypatch, tmp_path / "models")
    directory = tmp_path / "train"
    export_training_data(directory, parameters)
    configs = build_configs(**SMALL, learning_rate=1e-12)  # Ptychodus's defaults: cbam_encoder on, no batch norm, ...
    with caplog.at_level(logging.INFO):
        messages = run_in_process(run_train, train_payload(configs, directory, directory))
    assert [tag for tag, _ in messages] == ["train_output", "model_saved"]
    trained = load_network(Path(messages[1][1]))
    standin = standin_network()
    assert same_weights(trained, standin, atol=1e-9), "training started from the shipped weights"
    for field in ("n_filters_scale", "base_filters", "cbam_encoder", "use_shared_decoder", "batch_norm"):
        assert getattr(trained.model_config, field) == getattr(standin.model_config, field), field
    assert trained.model_config.truth_loss_weight == 0.0 and trained.training_config.learning_rate == 1e-12
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and r.name.startswith("ptycho_torch")]
    assert any("fine-tuning pretrained" in m and "model.cbam_encoder True -> False" in m and f"{INIT_ENV}=random" in m for m in warnings), warnings


def manager_for(**settings) -> ConfigManager:
    data, model, training, inference, datagen = build_configs(**{**SMALL, **settings})
    return ConfigManager(data_config=data, model_config=model, training_config=training, inference_config=inference, datagen_config=datagen)


def new_model(manager, init=None):
    from ptycho_torch.model import PtychoPINN_Lightning

    return PtychoModel._new_model(model=PtychoPINN_Lightning, config_manager=manager, init=init).model


def test_new_model_starts_from_random_weights_without_a_shipped_model_or_when_asked(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(pretrained, "MODELS_DIR", tmp_path / "empty")
    manager = manager_for()
    sent = manager.model_config
    with caplog.at_level(logging.INFO):
        module = new_model(manager)
    assert module.model_config == sent and "no shipped model for 64 x 64 patterns" in caplog.text

    ship_standin(monkeypatch, tmp_path / "models")
    monkeypatch.setenv(INIT_ENV, "random")
    module = new_model(manager_for())
    assert module.model_config.cbam_encoder is True and not same_weights(module, standin_network())


def test_new_model_starts_from_the_checkpoint_the_environment_names(tmp_path, monkeypatch):
    path = write_standin(tmp_path / "mine.ckpt", seed=7)
    monkeypatch.setenv(INIT_ENV, str(path))
    assert same_weights(new_model(manager_for()), standin_network(seed=7))

    monkeypatch.setenv(INIT_ENV, str(write_standin(tmp_path / "n32.ckpt", N=32)))
    with pytest.raises(ValueError, match=r"trained on 32 x 32 diffraction patterns but the scan holds 64 x 64"):
        new_model(manager_for())
    monkeypatch.setenv(INIT_ENV, "nonexistent")
    with pytest.raises(pretrained.UnknownModelError, match=r"shipped models: pretrained \(64 x 64 patterns\)"):
        new_model(manager_for())


def test_ptychopinn_init_reads_a_leading_tilde_as_the_home_directory(tmp_path, monkeypatch):
    """Quoted in the shell (PTYCHOPINN_INIT='~/runs/mine.ckpt' ptychodus) the tilde reaches the plugin unexpanded."""
    write_standin(tmp_path / "runs" / "mine.ckpt", seed=7)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv(INIT_ENV, "~/runs/mine.ckpt")
    assert same_weights(new_model(manager_for()), standin_network(seed=7))


def test_another_group_size_trains_from_random_weights_unless_a_model_was_named(tmp_path, monkeypatch, caplog):
    ship_standin(monkeypatch, tmp_path / "models")
    with caplog.at_level(logging.WARNING):
        module = new_model(manager_for(grid_size_x=1, grid_size_y=1, num_channels=1))
    assert module.C == 1 and "groups of another size" in caplog.text and "training from random weights" in caplog.text
    with pytest.raises(ValueError, match=r"groups of another size.*grid_size \(1, 1\) \(the model's: \(2, 2\)\)"):
        new_model(manager_for(grid_size_x=1, grid_size_y=1, num_channels=1), init="pretrained")


def test_the_guis_spawned_training_child_fine_tunes_the_model_ptychopinn_init_names(tmp_path, monkeypatch, parameters):
    """Ptychodus's SubprocessReconstructor (fresh spawned children, as the GUI runs them) with PTYCHOPINN_INIT set where Ptychodus starts."""
    from ptychodus.api.reconstruct import ReconstructOutput
    from ptychodus.model.ptychopinn_torch.reconstructor import build_reconstructor

    from tests.ptychodus.plugin_support import plugin_settings

    monkeypatch.setenv(INIT_ENV, str(write_standin(tmp_path / "mine.ckpt", seed=7)))  # inherited by the spawned children
    data, model, training, inference = plugin_settings(**SMALL, learning_rate=1e-12)
    reconstructor = build_reconstructor("Unsupervised", data, model, inference, training)
    directory = tmp_path / "train"
    directory.mkdir()
    reconstructor.export_training_data(directory / "train_data.npz", parameters)
    assert len(list(reconstructor.train(directory, directory))) == 1
    saved = tmp_path / "model.ckpt"
    reconstructor.save_model(saved)
    assert same_weights(load_network(saved), standin_network(seed=7), atol=1e-9)
    results = list(reconstructor.reconstruct(parameters))
    assert len(results) == 1 and isinstance(results[0], ReconstructOutput)
    assert np.isfinite(results[0].product.object_.get_layer(0)).all()


def _reconstructed(tmp_path, monkeypatch, parameters, method: str | None, caplog=None):
    """Ptychodus's own run_reconstruct with the stand-in shipped model and the real object network, ``method`` in the environment."""
    import shutil

    path = ship_standin(monkeypatch, tmp_path / "models")
    shutil.copy(ROOT / "ptycho_torch" / "pretrained" / pretrained.OBJECT_NETWORK[0], tmp_path / "models")
    if method is None:
        monkeypatch.delenv(RECONSTRUCT_ENV, raising=False)
    else:
        monkeypatch.setenv(RECONSTRUCT_ENV, method)
    messages = run_in_process(run_reconstruct, reconstruct_payload("Unsupervised", path, parameters))
    assert [tag for tag, _ in messages] == ["output"]
    array = pickle.loads(messages[0][1]).product.object_.get_layer(0)
    source = parameters.product.object_
    geometry = source.get_geometry()
    x = geometry.map_probe_positions_to_object_x_px(parameters.product.probe_positions)
    y = geometry.map_probe_positions_to_object_y_px(parameters.product.probe_positions)
    return complex_fit_quality(array, source.get_layer(0), scanned_interior(array.shape, x, y, 64))


def test_reconstruct_runs_the_method_ptychopinn_reconstruct_names(tmp_path, monkeypatch, parameters, caplog):
    """Unset: the network's single pass (here a stand-in that knows nothing); set to ptycho-reconstruct's method options:
    that reconstruction, on the same grid, its log saying so."""
    _, single_pass = _reconstructed(tmp_path, monkeypatch, parameters, None)
    with caplog.at_level(logging.INFO):
        _, gated = _reconstructed(tmp_path, monkeypatch, parameters, "--start flat --refine 7 --object-network 5")
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith(f"{RECONSTRUCT_ENV}='--start flat --refine 7 --object-network 5': start=flat, refine_iterations=7")
               for m in messages), messages
    assert any(m.startswith("object network: its correction") for m in messages), messages
    assert gated > 0.6 and gated > single_pass + 0.15, (single_pass, gated)  # phase r 0.517 and 0.808 measured (64 points)


@pytest.mark.parametrize("method, words", [("--output x.npz", "unrecognized arguments: --output x.npz"),
                                           ("--start flat", "give --refine ITERATIONS"),
                                           ("--refine 5 --object-network 5", "give --start flat")])
def test_a_reconstruct_method_that_cannot_run_is_refused_naming_the_variable_before_any_prediction(tmp_path, monkeypatch, method, words):
    ship_standin(monkeypatch, tmp_path / "models")
    monkeypatch.setenv(RECONSTRUCT_ENV, method)
    manager = ConfigManager(data_config={"N": 64})
    with pytest.raises(ValueError, match=f"{RECONSTRUCT_ENV}=.*{words}.*unset it for the network's single pass") as raised:
        InferenceEngine(config_manager=manager, ptycho_model=PtychoModel())  # refused when built, before any loader
    assert RECONSTRUCT_ENV in str(raised.value)


def test_a_reconstruct_method_that_cannot_run_is_refused_before_ptychodus_writes_and_groups_the_scan(tmp_path, monkeypatch, parameters):
    """Ptychodus's run_reconstruct builds the engine, then the loader (which writes, memory-maps and groups every pattern),
    then predicts: a value of the variable that cannot run is refused before the loader's work, not after it."""
    from ptycho_torch.api.base_api import PtychoDataLoader

    path = ship_standin(monkeypatch, tmp_path / "models")
    monkeypatch.setenv(RECONSTRUCT_ENV, "--start flat")

    def no_loader(*args, **kwargs):
        raise AssertionError("the scan was written and grouped before the variable was checked")

    monkeypatch.setattr(PtychoDataLoader, "from_np", no_loader)
    with pytest.raises(ValueError, match=f"{RECONSTRUCT_ENV}='--start flat': .*give --refine ITERATIONS"):
        run_in_process(run_reconstruct, reconstruct_payload("Unsupervised", path, parameters))


def _diffraction_reading_checkpoint(path: Path) -> Path:
    """A checkpoint whose U-Net reads the diffraction itself (as every checkpoint written before generator_input did)."""
    from ptycho_torch.config_params import DataConfig, ModelConfig
    from ptycho_torch.model.pinn import PtychoPINN

    model = ModelConfig(n_filters_scale=1, base_filters=16, cbam_encoder=False, use_shared_decoder=True, batch_norm=True,
                        truth_loss_weight=0.0, generator_input="diffraction", generator_output="object")
    network = PtychoPINN(model, DataConfig(N=64, grid_size=(2, 2), K=7), seed=1)
    torch.save({"state_dict": network.state_dict(), "hyper_parameters": {**network.configs(), "seed": 1}}, path)
    return path


@pytest.mark.parametrize("checkpoint, method, words", [
    ("32", "--start flat --refine 7 --object-network 5", "--object-network: the shipped object network was trained on scans of 64 x 64 "
                                                          "patterns, not 32 x 32"),
    ("diffraction", "--start physics --refine 3", "--start physics: the loaded model reads the diffraction itself"),
    ("missing object network", "--start flat --refine 7 --object-network 5", "--object-network: the shipped object network is missing"),
])
def test_a_reconstruct_method_the_loaded_model_cannot_run_is_refused_naming_the_variable_before_any_prediction(
        tmp_path, monkeypatch, checkpoint, method, words):
    """What ptycho-reconstruct refuses for this model (the object network at another pattern size or without its weights,
    --start physics with a network that has no physics input) is refused as the variable's other values are, before the
    loader is read: not deep in the reconstruction, naming settings the user never set."""
    ship_standin(monkeypatch, tmp_path / "models")  # the object network is not there: only "missing" reaches that check
    if checkpoint == "32":  # no model loaded, a scan of 32 x 32 patterns
        monkeypatch.setattr(pretrained, "MODELS_DIR", ROOT / "ptycho_torch" / "pretrained")
        monkeypatch.setenv(RECONSTRUCT_ENV, method)
        with pytest.raises(ValueError, match=f"^{RECONSTRUCT_ENV}='{method}': {words}.*unset it for the network's single pass"):
            InferenceEngine(config_manager=ConfigManager(data_config={"N": 32}), ptycho_model=PtychoModel())
        return
    elif checkpoint == "diffraction":
        path = _diffraction_reading_checkpoint(tmp_path / "diffraction.ckpt")
    else:
        path = tmp_path / "models" / pretrained.SHIPPED["pretrained"][0]
    monkeypatch.setenv(RECONSTRUCT_ENV, method)
    model, manager = load_model(path)
    with pytest.raises(ValueError, match=f"^{RECONSTRUCT_ENV}='{method}': {words}.*unset it for the network's single pass"):
        InferenceEngine(config_manager=manager, ptycho_model=model)  # refused when built, before any loader


def test_a_flat_start_reconstructs_a_pattern_size_without_a_model_in_ptychodus_as_the_command_line_does(tmp_path, monkeypatch):
    """``--start flat --refine`` runs no network, so 32 x 32 patterns are refined with the loaded 64 x 64 model (Ptychodus 1.7.0
    needs one loaded) or with none, as ``ptycho-reconstruct pretrained SCAN32 --start flat --refine 10`` does; without a
    flat start the refusal names that way."""
    from ptycho.simulate import SimulationSettings, simulate_scan

    from tests.ptychodus.plugin_support import as_reconstruct_input

    arrays = simulate_scan(SimulationSettings(N=32, n_points=200, object_size=112, step=4.0, probe_diameter=12.0, seed=3))
    scan32 = as_reconstruct_input(arrays, np.arange(200))
    path = ship_standin(monkeypatch, tmp_path / "models")
    monkeypatch.setenv(RECONSTRUCT_ENV, "--start flat --refine 10")
    messages = run_in_process(run_reconstruct, reconstruct_payload("Unsupervised", path, scan32))
    assert [tag for tag, _ in messages] == ["output"]
    array = pickle.loads(messages[0][1]).product.object_.get_layer(0)
    source = scan32.product.object_
    assert array.shape == source.get_layer(0).shape
    geometry = source.get_geometry()
    x = geometry.map_probe_positions_to_object_x_px(scan32.product.probe_positions)
    y = geometry.map_probe_positions_to_object_y_px(scan32.product.probe_positions)
    amplitude, phase = complex_fit_quality(array, source.get_layer(0), scanned_interior(array.shape, x, y, 32, erode_px=4))
    assert amplitude > 0.8 and phase > 0.8, (amplitude, phase)

    from ptychodus.api.preprocess.diffraction import inpaint_bad_pixels

    from ptycho_torch.api.base_api import PtychoDataLoader

    manager = ConfigManager(data_config={"N": 32})
    engine = InferenceEngine(config_manager=manager, ptycho_model=PtychoModel())  # no model loaded: none is needed
    loader = PtychoDataLoader.from_np(diff_patterns=inpaint_bad_pixels(scan32.diffraction_patterns, scan32.bad_pixels),
                                      probe=scan32.product.probes.get_probe_no_opr().get_array(),
                                      positions=np.column_stack((y, x)), config_manager=manager, progress=False)
    assert np.array_equal(engine.predict_and_stitch(loader, progress=False), array)

    monkeypatch.delenv(RECONSTRUCT_ENV)
    with pytest.raises(ValueError, match=r"trained on 64 x 64 patterns but the data holds 32 x 32.*PTYCHOPINN_RECONSTRUCT='--start flat --refine 20'"):
        run_in_process(run_reconstruct, reconstruct_payload("Unsupervised", path, scan32))


def test_a_flat_start_reconstructs_a_scan_of_fewer_points_than_a_group_in_ptychodus_as_the_command_line_does(tmp_path, monkeypatch):
    """``--start flat`` forms groups of one, so 3 scan points are refined with the model of groups of 4 loaded; without a
    flat start they are refused naming the group size."""
    from tests.ptychodus.plugin_support import reconstruct_input

    path = ship_standin(monkeypatch, tmp_path / "models")
    monkeypatch.setenv(RECONSTRUCT_ENV, "--start flat --refine 3")
    messages = run_in_process(run_reconstruct, reconstruct_payload("Unsupervised", path, reconstruct_input(3)))
    assert [tag for tag, _ in messages] == ["output"], messages
    array = pickle.loads(messages[0][1]).product.object_.get_layer(0)
    assert np.isfinite(array).all() and np.abs(array).max() > 0
    monkeypatch.delenv(RECONSTRUCT_ENV)
    with pytest.raises(ValueError, match="groups of 4 .*PTYCHOPINN_RECONSTRUCT='--start flat --refine 20'"):
        run_in_process(run_reconstruct, reconstruct_payload("Unsupervised", path, reconstruct_input(3)))


@pytest.mark.parametrize("value, error, words", [
    ("nonexistent", pretrained.UnknownModelError, "'nonexistent' is neither a checkpoint file nor a shipped model"),
    ("missing.ckpt", FileNotFoundError, "does not exist"),
    ("n32.ckpt", ValueError, "trained on 32 x 32 diffraction patterns but the scan holds 64 x 64"),
])
def test_train_refuses_a_ptychopinn_init_naming_no_usable_model_naming_the_variable_before_any_work(tmp_path, monkeypatch, parameters,
                                                                                                     value, error, words):
    """Ptychodus's Train with PTYCHOPINN_INIT set to something that is not a usable model: the message says the value came from
    that variable and how to fix it, and the refusal comes before the training data is memory-mapped or a run directory made."""
    import ptycho_torch.api.data as api_data

    ship_standin(monkeypatch, tmp_path / "models")
    write_standin(tmp_path / "n32.ckpt", N=32)
    directory = tmp_path / "train"
    export_training_data(directory, parameters)
    monkeypatch.setenv(INIT_ENV, str(tmp_path / value) if value.endswith(".ckpt") else value)

    def no_dataset(*args, **kwargs):
        raise AssertionError("the training data was read before the variable was checked")

    monkeypatch.setattr(api_data, "_training_dataset", no_dataset)
    with pytest.raises(error, match=f"^{INIT_ENV}='[^']*{value}': .*{words}.*set {INIT_ENV} in the shell that starts Ptychodus"):
        run_in_process(run_train, train_payload(build_configs(**SMALL), directory, directory))
    assert sorted(path.name for path in directory.iterdir()) == ["train_data.npz"], "a refused Train left a run directory"


def test_a_scan_of_fewer_points_than_a_group_is_refused_naming_the_group_size_not_a_temporary_file(tmp_path, monkeypatch):
    """Ptychodus's Reconstruct of a scan with 3 points and a model of groups of 4: the refusal names what the user can change,
    not the loader's private temporary file nor a 'gridsize' setting the loaded model fixes."""
    from tests.ptychodus.plugin_support import reconstruct_input

    path = ship_standin(monkeypatch, tmp_path / "models")
    with pytest.raises(ValueError) as raised:
        run_in_process(run_reconstruct, reconstruct_payload("Unsupervised", path, reconstruct_input(3)))
    message = str(raised.value)
    assert "the scan has 3 point(s) but the model reconstructs groups of 4" in message and "at least 4 points" in message, message
    assert "Grid Size 1 x 1" in message and "ptychopinn-inference-" not in message, message
    assert len(run_in_process(run_reconstruct, reconstruct_payload("Unsupervised", path, reconstruct_input(4)))) == 1


def test_a_scan_of_as_many_points_as_pattern_pixels_is_read_without_a_layout_warning_ptychodus_users_cannot_act_on(
        tmp_path, monkeypatch, caplog):
    """64 points of 64 x 64 patterns: Ptychodus's export and the inference loader's own file are (n, N, N) by construction, so
    neither Train nor Reconstruct warns that the stack could be a legacy (N, N, n) one and asks for a layout= no panel has."""
    from tests.ptychodus.plugin_support import reconstruct_input

    from ptycho_torch.api.base_api import PtychoDataLoader

    scan = reconstruct_input(64)
    path = ship_standin(monkeypatch, tmp_path / "models")
    export_training_data(tmp_path / "train", scan)
    with caplog.at_level(logging.WARNING):
        PtychoDataLoader(data_dir=tmp_path / "train", config_manager=manager_for(), output_dir=tmp_path / "runs", progress=False)
        assert len(run_in_process(run_reconstruct, reconstruct_payload("Unsupervised", path, scan))) == 1
    layout = [r.getMessage() for r in caplog.records if "could be (n, N, N) or a legacy" in r.getMessage()]
    assert not layout, layout


def test_train_refuses_an_unknown_distributed_strategy_before_the_data_is_memory_mapped(tmp_path, monkeypatch):
    """Trainer._from_lightning refused it after the loader had memory-mapped and grouped the data, leaving an empty run directory."""
    from tests.ptychodus.plugin_support import reconstruct_input

    from ptycho_torch.api.base_api import PtychoDataLoader

    monkeypatch.setenv("PTYCHOPINN_CACHE_DIR", str(tmp_path / "cache"))
    export_training_data(tmp_path / "train", reconstruct_input(64))
    with pytest.raises(ValueError, match=r"Distributed Strategy \(TrainingConfig.strategy\)='bogus' is not a Lightning strategy"):
        PtychoDataLoader(data_dir=tmp_path / "train", config_manager=manager_for(distributed_strategy="bogus"),
                         output_dir=tmp_path / "runs", progress=False)
    assert not (tmp_path / "cache").exists() and not list((tmp_path / "runs").glob("run_*"))


def test_the_object_network_follows_the_scans_pattern_size_not_the_loaded_models_after_a_flat_start(tmp_path, monkeypatch):
    """A flat start runs no per-group network, so --object-network is refused for a 32 x 32 scan with the 64 x 64 model loaded
    (before the scan is written) and runs on a 64 x 64 scan with a 32 x 32 model loaded, as ptycho-reconstruct decides by the scan."""
    import shutil

    import ptycho_torch.api.data as api_data
    from ptycho.simulate import SimulationSettings, simulate_scan

    from tests.ptychodus.plugin_support import as_reconstruct_input, reconstruct_input

    path64 = ship_standin(monkeypatch, tmp_path / "models")
    shutil.copy(ROOT / "ptycho_torch" / "pretrained" / pretrained.OBJECT_NETWORK[0], tmp_path / "models")
    method = "--start flat --refine 3 --object-network 2"
    monkeypatch.setenv(RECONSTRUCT_ENV, method)
    scan32 = as_reconstruct_input(simulate_scan(SimulationSettings(N=32, n_points=40, object_size=64, step=4.0, probe_diameter=12.0,
                                                                   seed=3)), np.arange(40))

    def no_workspace(*args, **kwargs):
        raise AssertionError("the scan was written before the method was checked against it")

    with monkeypatch.context() as patch:
        patch.setattr(api_data.tempfile, "TemporaryDirectory", no_workspace)
        with pytest.raises(ValueError, match=f"^{RECONSTRUCT_ENV}='{method}': --object-network: .*64 x 64 patterns, not 32 x 32"):
            run_in_process(run_reconstruct, reconstruct_payload("Unsupervised", path64, scan32))
    path32 = write_standin(tmp_path / "mine32.ckpt", N=32)
    messages = run_in_process(run_reconstruct, reconstruct_payload("Unsupervised", path32, reconstruct_input(N_POINTS)))
    assert [tag for tag, _ in messages] == ["output"]
    assert np.isfinite(pickle.loads(messages[0][1]).product.object_.get_layer(0)).all()
