"""ptycho-train --init: fine-tuning from a shipped model or a checkpoint (on a tiny stand-in, never the real weights)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("tensordict")
pytest.importorskip("lightning")

import torch  # noqa: E402

from ptycho_torch.cli_train import main as train_main  # noqa: E402
from ptycho_torch.model.checkpoints import load_network  # noqa: E402
from ptycho_torch.model.pinn import PtychoPINN  # noqa: E402
from tests.standin_model import STANDIN_SEED, ship_standin, standin_network, write_standin  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
NPZ = ROOT / "datasets" / "sim_small.npz"
TINY_LR = 1e-12  # learning_rate must be > 0; at this rate one epoch leaves the weights where they started


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    logging.getLogger("lightning.pytorch").handlers.clear()


def config_file(tmp_path: Path, **sections) -> Path:
    base = {"data": {"nphotons": 1e6}, "training": {"batch_size": 8, "num_workers": 0, "learning_rate": TINY_LR}}
    for section, values in sections.items():
        base.setdefault(section, {}).update(values)
    path = tmp_path / "train.json"
    path.write_text(json.dumps(base))
    return path


def train(tmp_path, capsys, *args) -> tuple[int, str, str]:
    status = train_main([str(NPZ), "--epochs", "1", "--n-groups", "16", "--output-dir", str(tmp_path / "runs"), "--quiet", *map(str, args)])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def parameters(network) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in network.named_parameters()}


def test_init_pretrained_starts_from_the_shipped_weights_with_its_architecture(tmp_path, capsys, monkeypatch):
    ship_standin(monkeypatch, tmp_path / "models")
    standin = standin_network()
    # the config file sets training only; its model section (truth weight) is not architecture
    status, out, err = train(tmp_path, capsys, "--init", "pretrained", "--config", config_file(tmp_path))
    assert status == 0, err
    trained = load_network(Path(out.strip().splitlines()[-1]))

    expected = parameters(standin)
    got = parameters(trained)
    assert got.keys() == expected.keys()
    assert all(torch.allclose(got[name], expected[name], rtol=0, atol=1e-9) for name in expected), "started from the stand-in's weights"
    fresh = parameters(PtychoPINN(trained.model_config, trained.data_config, seed=0))  # a random start of the CLI's seed
    assert any(not torch.allclose(got[name], fresh[name]) for name in fresh)
    for field in ("n_filters_scale", "base_filters", "cbam_encoder", "use_shared_decoder", "batch_norm", "generator_output"):
        assert getattr(trained.model_config, field) == getattr(standin.model_config, field), field
    assert trained.model_config.truth_loss_weight == 0.0  # self-supervised: the physics loss only
    assert trained.training_config.learning_rate == TINY_LR and trained.training_config.epochs == 1


def test_init_with_a_checkpoint_path_takes_its_architecture_over_the_default_preset(tmp_path, capsys):
    # a checkpoint whose architecture differs from the recommended preset's (n_filters_scale 2, no batch norm)
    import torch as _torch

    from ptycho_torch.config_params import DataConfig, ModelConfig

    network = PtychoPINN(ModelConfig(n_filters_scale=2, base_filters=8, cbam_encoder=False, batch_norm=False), DataConfig(N=64, grid_size=(2, 2), K=7),
                         seed=STANDIN_SEED)
    path = tmp_path / "other.ckpt"
    _torch.save({"state_dict": network.state_dict(), "hyper_parameters": {**network.configs(), "seed": STANDIN_SEED}}, path)
    status, out, err = train(tmp_path, capsys, "--init", path, "--config", config_file(tmp_path))
    assert status == 0, err
    trained = load_network(Path(out.strip().splitlines()[-1]))
    assert (trained.model_config.n_filters_scale, trained.model_config.base_filters, trained.model_config.batch_norm) == (2, 8, False)
    expected = parameters(network)
    assert all(torch.allclose(value, expected[name], rtol=0, atol=1e-9) for name, value in parameters(trained).items())


def test_init_with_an_unknown_name_exits_2_naming_the_shipped_models(tmp_path, capsys):
    status, out, err = train(tmp_path, capsys, "--init", "nonexistent")
    assert status == 2 and not out
    assert "'nonexistent' is neither a checkpoint file nor a shipped model" in err and "pretrained (64 x 64 patterns)" in err
    assert not (tmp_path / "runs").exists()


def test_init_with_a_model_of_another_pattern_size_exits_2_naming_both(tmp_path, capsys):
    path = write_standin(tmp_path / "n32.ckpt", N=32)
    status, _, err = train(tmp_path, capsys, "--init", path)
    assert status == 2
    assert "trained on 32 x 32 diffraction patterns but the scan holds 64 x 64" in err and str(path) in err
    assert not (tmp_path / "runs").exists()


def test_init_of_a_shipped_model_of_another_size_exits_2_naming_the_sizes(tmp_path, capsys, monkeypatch):
    import ptycho_torch.pretrained as pretrained

    monkeypatch.setattr(pretrained, "SHIPPED", {"pretrained": ("pinn32.ckpt", 32)})
    monkeypatch.setattr(pretrained, "MODELS_DIR", tmp_path)
    write_standin(tmp_path / "pinn32.ckpt", N=32)
    status, _, err = train(tmp_path, capsys, "--init", "pretrained")
    assert status == 2 and "reconstructs 32 x 32 patterns, not 64 x 64" in err


@pytest.mark.parametrize("where", ["config", "preset"])
def test_an_architecture_field_set_against_the_initial_model_exits_2_naming_field_values_and_fix(tmp_path, capsys, monkeypatch, where):
    ship_standin(monkeypatch, tmp_path / "models")
    if where == "config":
        args = ["--config", config_file(tmp_path, model={"n_filters_scale": 2})]
        expected = ["train.json: model.n_filters_scale=2", "n_filters_scale=1", "remove it from the config file"]
    else:
        args = ["--preset", "ptychopinn", "--config", config_file(tmp_path)]  # ptychopinn sets nothing: accepted ...
        status, _, err = train(tmp_path, capsys, "--init", "pretrained", *args)
        assert status == 0, err
        from ptycho_torch.config_file import PRESETS, Preset

        monkeypatch.setitem(PRESETS, "recommended", Preset("recommended", "", {"model": {"cbam_encoder": True}}))
        args = ["--preset", "recommended", "--config", config_file(tmp_path)]  # ... an explicit preset that disagrees is not
        expected = ["--preset recommended: model.cbam_encoder=True", "cbam_encoder=False", "drop --preset"]
    status, out, err = train(tmp_path, capsys, "--init", "pretrained", *args)
    assert status == 2 and not out
    assert all(text in err for text in expected), err
    assert "without --init" in err


def test_python_m_ptycho_torch_pretrained_lists_each_shipped_model_with_its_size_and_file(tmp_path, capsys, monkeypatch):
    from ptycho_torch.pretrained.__main__ import main as list_main

    monkeypatch.setattr("ptycho_torch.pretrained.MODELS_DIR", tmp_path)
    assert list_main() == 0
    assert capsys.readouterr().out == f"pretrained\t64 x 64 patterns\t{tmp_path / 'pinn64.ckpt'}  (missing from this installation; python -m ptycho_torch.pretrained.build builds it)\n"
    write_standin(tmp_path / "pinn64.ckpt")
    assert list_main() == 0
    assert capsys.readouterr().out == f"pretrained\t64 x 64 patterns\t{tmp_path / 'pinn64.ckpt'}\n"


def test_python_m_ptycho_torch_pretrained_refuses_arguments_it_would_ignore(capsys):
    """'python -m ptycho_torch.pretrained build' listed the models and exited 0, as if it had built something."""
    from ptycho_torch.pretrained.__main__ import main as list_main

    assert list_main(["build"]) == 2
    captured = capsys.readouterr()
    assert not captured.out and "unrecognized arguments: build" in captured.err
    assert list_main(["--help"]) == 0 and "python -m ptycho_torch.pretrained.build" in capsys.readouterr().out
