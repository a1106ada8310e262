"""Tests of the torch config dataclasses and their bridge to ``ptycho.config`` (no torch needed)."""

from __future__ import annotations

import copy
from pathlib import Path
import pickle
import subprocess
import sys
from typing import Any
import warnings

import numpy as np
import pytest

from ptycho import params
from ptycho.config import (
    InferenceConfig as TFInferenceConfig,
    ModelConfig as TFModelConfig,
    TrainingConfig as TFTrainingConfig,
    update_legacy_dict,
)
from ptycho_torch.config_bridge import to_inference_config, to_model_config, to_training_config
from ptycho_torch.config_params import (
    DataConfig,
    DatagenConfig,
    InferenceConfig,
    ModelConfig,
    TrainingConfig,
)

TORCH_DEFAULTS = {
    DataConfig: {
        'nphotons': 1e5, 'N': 64, 'C': 4, 'K': 6, 'K_quadrant': 30, 'n_subsample': 7,
        'subsample_seed': None, 'grid_size': (2, 2), 'neighbor_function': 'Nearest',
        'min_neighbor_distance': 0.0, 'max_neighbor_distance': 3.0, 'scan_pattern': 'Isotropic',
        'normalize': 'Batch', 'probe_scale': 4.0, 'probe_normalize': True,
        'data_scaling': 'Parseval', 'phase_subtraction': True, 'x_bounds': (0.1, 0.9),
        'y_bounds': (0.1, 0.9),
    },
    ModelConfig: {
        'mode': 'Unsupervised', 'intensity_scale_trainable': False, 'intensity_scale': 10000.0,
        'max_position_jitter': 10, 'C_model': 4, 'n_filters_scale': 2, 'amp_activation': 'silu',
        'batch_norm': False, 'probe_mask': False, 'object_big': True, 'probe_big': True,
        'offset': 6, 'C_forward': 4, 'pad_object': True, 'gaussian_smoothing_sigma': 0.0,
        'loss_function': 'Poisson',
    },
    TrainingConfig: {
        'nll': True, 'device': 'auto', 'strategy': 'ddp', 'n_devices': 1, 'learning_rate': 1e-3,
        'epochs': 50, 'batch_size': 16, 'num_workers': 4, 'train_data_file': None,
        'test_data_file': None, 'output_dir': 'training_outputs', 'n_groups': None,
    },
    InferenceConfig: {'middle_trim': 32, 'batch_size': 1000},
}


def _real_torch() -> Any:
    torch = pytest.importorskip('torch')
    if getattr(torch, 'Tensor', None) is None:
        pytest.skip('torch is not installed (only a namespace package named torch is importable)')
    return torch


def _data(**kwargs: Any) -> DataConfig:
    return DataConfig(**{'nphotons': 1e9, **kwargs})


def _training(**kwargs: Any) -> TrainingConfig:
    return TrainingConfig(
        **{'train_data_file': 'train.npz', 'test_data_file': 'test.npz', 'n_groups': 64, **kwargs}
    )


def _bridged_training(
    data: DataConfig | None = None,
    model: ModelConfig | None = None,
    training: TrainingConfig | None = None,
    overrides: dict[str, Any] | None = None,
) -> TFTrainingConfig:
    data = data or _data()
    model = model or ModelConfig()
    return to_training_config(
        to_model_config(data, model), data, model, training or _training(), overrides
    )


def _bridged_inference(
    data: DataConfig | None = None, overrides: dict[str, Any] | None = None
) -> TFInferenceConfig:
    data = data or _data()
    if overrides is None:
        overrides = {'model_path': 'model_dir', 'test_data_file': 'test.npz'}
    tf_model = to_model_config(data, ModelConfig())
    return to_inference_config(tf_model, data, InferenceConfig(), overrides)


@pytest.mark.parametrize(
    ('config_type', 'name', 'expected'),
    [(config_type, name, value) for config_type, values in TORCH_DEFAULTS.items()
     for name, value in sorted(values.items())],
)
def test_torch_defaults(config_type: type, name: str, expected: object) -> None:
    assert getattr(config_type(), name) == expected


@pytest.mark.parametrize(
    'config_type', [DataConfig, ModelConfig, TrainingConfig, InferenceConfig, DatagenConfig]
)
def test_torch_configs_pickle_by_value(config_type: type) -> None:
    config = config_type()
    clone = pickle.loads(pickle.dumps(config))
    assert clone == config and clone is not config


def test_mutable_defaults_are_not_shared() -> None:
    first, second = TrainingConfig(), TrainingConfig()
    first.training_directories.append('a')
    assert second.training_directories == []
    assert DatagenConfig().probe_paths is not DatagenConfig().probe_paths


def test_bridge_and_config_params_import_without_torch() -> None:
    code = (
        'import sys\n'
        "sys.modules['torch'] = None\n"
        'import ptycho_torch.config_params, ptycho_torch.config_bridge\n'
        'from ptycho_torch.config_bridge import to_model_config\n'
        'from ptycho_torch.config_params import DataConfig, ModelConfig\n'
        'print(to_model_config(DataConfig(), ModelConfig()).amp_activation)\n'
    )
    project_root = Path(params.__file__).resolve().parents[1]
    result = subprocess.run(
        [sys.executable, '-c', code], capture_output=True, text=True, check=True, cwd=project_root
    )
    assert result.stdout.strip() == 'swish'


def _ptychodus_torch_settings() -> tuple[Any, ...]:
    pytest.importorskip('ptychodus')
    from ptychodus.api.settings import SettingsRegistry
    from ptychodus.model.ptychopinn_torch.settings import (
        PtychoPINNTorchDataSettings,
        PtychoPINNTorchInferenceSettings,
        PtychoPINNTorchModelSettings,
        PtychoPINNTorchTrainingSettings,
    )

    registry = SettingsRegistry()
    return (
        PtychoPINNTorchDataSettings(registry),
        PtychoPINNTorchModelSettings(registry),
        PtychoPINNTorchTrainingSettings(registry),
        PtychoPINNTorchInferenceSettings(registry),
    )


@pytest.mark.parametrize('mode', ['Unsupervised', 'Supervised'])
def test_ptychodus_build_configs_constructs_all_five_configs(mode: str) -> None:
    settings = _ptychodus_torch_settings()
    data_settings, model_settings, training_settings, inference_settings = settings
    from ptychodus.model.ptychopinn_torch.reconstructor import _build_configs

    data_settings.grid_size_x.set_value(3)
    data_settings.grid_size_y.set_value(3)
    data_settings.model_size.set_value(64)
    training_settings.gradient_clip_val.set_value(0.5)
    model_settings.auxiliary_amplitude_loss.set_value('Total_Variation')

    configs = _build_configs(mode, *settings)

    data, model, training, inference, datagen = configs
    assert [type(config) for config in configs] == [
        DataConfig, ModelConfig, TrainingConfig, InferenceConfig, DatagenConfig
    ]
    assert data.grid_size == (3, 3) and data.N == 64
    assert model.mode == mode
    assert model.amp_loss == 'Total_Variation' and model.phase_loss is None
    assert training.gradient_clip_val == 0.5
    assert training.framework == 'Lightning' and training.orchestrator == 'Lightning'
    assert inference.patch_weighting == inference_settings.patch_weighting_method.get_value()
    assert pickle.loads(pickle.dumps(configs)) == configs

    tf_model = to_model_config(data, model)
    expected_type = {'Unsupervised': 'pinn', 'Supervised': 'supervised'}[mode]
    assert (tf_model.N, tf_model.gridsize, tf_model.model_type) == (64, 3, expected_type)
    assert tf_model.amp_activation == 'swish'
    tf_training = to_training_config(
        tf_model, data, model, training,
        overrides={'train_data_file': 'train.npz', 'test_data_file': 'test.npz', 'n_groups': 100,
                   'nphotons': 1e9},
    )
    assert tf_training.nepochs == training_settings.epochs.get_value()
    assert tf_training.neighbor_count == data_settings.num_nearest_neighbors_for_lookup.get_value()


def test_grid_size_square_maps_to_gridsize() -> None:
    assert to_model_config(_data(grid_size=(3, 3)), ModelConfig()).gridsize == 3
    assert to_model_config(_data(grid_size=(1, 1)), ModelConfig()).gridsize == 1


@pytest.mark.parametrize('grid_size', [(2, 3), (1, 2)])
def test_non_square_grid_size_is_rejected(grid_size: tuple[int, int]) -> None:
    with pytest.raises(ValueError, match=r'grid_size.*not square'):
        to_model_config(_data(grid_size=grid_size), ModelConfig())


@pytest.mark.parametrize('grid_size', [(2,), 2, (2, 2, 2)])
def test_malformed_grid_size_is_rejected(grid_size: Any) -> None:
    with pytest.raises(ValueError, match='grid_size'):
        to_model_config(_data(grid_size=grid_size), ModelConfig())


@pytest.mark.parametrize(
    ('mode', 'model_type'), [('Unsupervised', 'pinn'), ('Supervised', 'supervised')]
)
def test_mode_maps_to_model_type(mode: str, model_type: str) -> None:
    assert to_model_config(_data(), ModelConfig(mode=mode)).model_type == model_type


def test_unknown_mode_is_rejected() -> None:
    with pytest.raises(ValueError, match=r"mode.*'unsupervised'"):
        to_model_config(_data(), ModelConfig(mode='unsupervised'))  # type: ignore[arg-type]


@pytest.mark.parametrize(('torch_name', 'tf_name'), [
    ('silu', 'swish'), ('SiLU', 'swish'), ('sigmoid', 'sigmoid'), ('swish', 'swish'),
    ('softplus', 'softplus'), ('relu', 'relu'),
])
def test_amp_activation_mapping(torch_name: str, tf_name: str) -> None:
    tf_model = to_model_config(_data(), ModelConfig(amp_activation=torch_name))
    assert tf_model.amp_activation == tf_name


@pytest.mark.parametrize('name', ['gelu', 'tanh', ''])
def test_unknown_amp_activation_is_rejected(name: str) -> None:
    with pytest.raises(ValueError, match='amp_activation'):
        to_model_config(_data(), ModelConfig(amp_activation=name))


@pytest.mark.parametrize(('probe_mask', 'expected'), [
    (None, False), (False, False), (True, True), (np.ones((64, 64), dtype=np.float32), True),
])
def test_probe_mask_maps_to_bool(probe_mask: Any, expected: bool) -> None:
    assert to_model_config(_data(), ModelConfig(probe_mask=probe_mask)).probe_mask is expected


def test_tensor_probe_mask_maps_to_true() -> None:
    torch = _real_torch()
    model = ModelConfig(probe_mask=torch.ones(64, 64))
    assert to_model_config(_data(), model).probe_mask is True


def test_unsupported_probe_mask_is_rejected() -> None:
    with pytest.raises(ValueError, match='probe_mask'):
        to_model_config(_data(), ModelConfig(probe_mask='disk'))


def test_model_fields_carried_over() -> None:
    data = _data(N=128, probe_scale=2.5)
    model = ModelConfig(
        n_filters_scale=3, object_big=True, probe_big=False, pad_object=False,
        gaussian_smoothing_sigma=0.75,
    )
    tf_model = to_model_config(data, model)
    assert (tf_model.N, tf_model.probe_scale, tf_model.n_filters_scale) == (128, 2.5, 3)
    assert (tf_model.object_big, tf_model.probe_big, tf_model.pad_object) == (True, False, False)
    assert tf_model.gaussian_smoothing_sigma == 0.75


def test_model_overrides_win() -> None:
    tf_model = to_model_config(
        _data(grid_size=(2, 2)),
        ModelConfig(),
        overrides={'gridsize': 1, 'amp_activation': 'relu', 'N': 32},
    )
    assert (tf_model.gridsize, tf_model.amp_activation, tf_model.N) == (1, 'relu', 32)


def test_overridden_fields_are_not_translated() -> None:
    data = _data(grid_size=(2, 3))
    model = ModelConfig(mode='Other', amp_activation='gelu', probe_mask='disk')  # type: ignore
    overrides = {'gridsize': 2, 'model_type': 'pinn', 'amp_activation': 'relu', 'probe_mask': True}
    tf_model = to_model_config(data, model, overrides)
    assert (tf_model.gridsize, tf_model.model_type, tf_model.amp_activation) == (2, 'pinn', 'relu')
    assert tf_model.probe_mask is True


def test_model_overrides_are_validated() -> None:
    with pytest.raises(ValueError, match='ModelConfig.gridsize'):
        to_model_config(_data(), ModelConfig(), overrides={'gridsize': 0})


def test_training_field_mappings() -> None:
    data = _data(K=7, subsample_seed=11, nphotons=2e8)
    model = ModelConfig(intensity_scale_trainable=True)
    training = _training(epochs=12, batch_size=32, nll=False, output_dir='runs/x', n_groups=300)
    config = _bridged_training(data, model, training)
    assert isinstance(config, TFTrainingConfig)
    assert config.nepochs == 12 and config.batch_size == 32
    assert config.neighbor_count == 7
    assert config.subsample_seed == 11
    assert config.nll_weight == 0.0
    assert config.nphotons == 2e8
    assert config.n_groups == 300
    assert config.intensity_scale_trainable is True
    assert config.backend == 'pytorch'
    assert config.train_data_file == Path('train.npz') and config.test_data_file == Path('test.npz')
    assert config.output_dir == Path('runs/x')
    assert not hasattr(config.model, 'intensity_scale_trainable')


def test_nll_true_maps_to_weight_one() -> None:
    assert _bridged_training(training=_training(nll=True)).nll_weight == 1.0


def test_torch_default_nphotons_is_an_error_explaining_the_fix() -> None:
    data = DataConfig()
    model = ModelConfig()
    with pytest.raises(ValueError, match=r'(?s)100000.*1e\+09.*overrides'):
        to_training_config(to_model_config(data, model), data, model, _training())


def test_nphotons_override_resolves_the_default_divergence() -> None:
    data = DataConfig()
    config = to_training_config(
        to_model_config(data, ModelConfig()), data, ModelConfig(), _training(), {'nphotons': 1e5}
    )
    assert config.nphotons == 1e5


def test_training_needs_train_data_file() -> None:
    with pytest.raises(ValueError, match='train_data_file'):
        _bridged_training(training=_training(train_data_file=None))
    config = _bridged_training(
        training=_training(train_data_file=None), overrides={'train_data_file': 'other.npz'}
    )
    assert config.train_data_file == Path('other.npz')


def test_training_needs_n_groups() -> None:
    with pytest.raises(ValueError, match='n_groups'):
        _bridged_training(training=_training(n_groups=None))
    config = _bridged_training(training=_training(n_groups=None), overrides={'n_groups': 9})
    assert config.n_groups == 9


def test_missing_test_data_file_warns() -> None:
    with pytest.warns(UserWarning, match='test_data_file'):
        config = _bridged_training(training=_training(test_data_file=None))
    assert config.test_data_file is None


def test_test_data_file_present_does_not_warn() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        _bridged_training()


def test_training_overrides_win_over_mapped_values() -> None:
    config = _bridged_training(
        data=_data(K=6),
        training=_training(epochs=5),
        overrides={
            'neighbor_count': 9, 'nepochs': 3, 'backend': 'tensorflow', 'sequential_sampling': True,
            'mae_weight': 0.5, 'enable_oversampling': True, 'neighbor_pool_size': 12,
        },
    )
    assert (config.neighbor_count, config.nepochs, config.backend) == (9, 3, 'tensorflow')
    assert config.sequential_sampling is True and config.mae_weight == 0.5
    assert config.enable_oversampling is True and config.neighbor_pool_size == 12


def test_training_overrides_are_validated() -> None:
    with pytest.raises(ValueError, match='TrainingConfig.neighbor_count'):
        _bridged_training(overrides={'neighbor_count': 0})


def test_inference_field_mappings() -> None:
    config = _bridged_inference(data=_data(K=5, subsample_seed=4))
    assert isinstance(config, TFInferenceConfig)
    assert config.neighbor_count == 5 and config.subsample_seed == 4
    assert config.backend == 'pytorch'
    assert config.model_path == Path('model_dir') and config.test_data_file == Path('test.npz')
    assert config.sequential_sampling is None and config.n_groups is None  # None: params.cfg keeps the training value


@pytest.mark.parametrize('missing', ['model_path', 'test_data_file'])
def test_inference_needs_model_path_and_test_data_file(missing: str) -> None:
    overrides = {'model_path': 'model_dir', 'test_data_file': 'test.npz'}
    del overrides[missing]
    with pytest.raises(ValueError, match=missing):
        _bridged_inference(overrides=overrides)


def test_inference_overrides_win() -> None:
    config = _bridged_inference(overrides={
        'model_path': 'm', 'test_data_file': 't.npz', 'neighbor_count': 8, 'n_groups': 20,
        'sequential_sampling': True, 'debug': True,
    })
    assert (config.neighbor_count, config.n_groups, config.sequential_sampling, config.debug) == (
        8, 20, True, True
    )


@pytest.mark.parametrize('bridge', ['model', 'training', 'inference'])
def test_unknown_override_keys_are_rejected_by_name(bridge: str) -> None:
    overrides = {'nepoch': 3, 'gird_size': 2}
    with pytest.raises(ValueError, match=r"\['gird_size', 'nepoch'\]"):
        if bridge == 'model':
            to_model_config(_data(), ModelConfig(), overrides)
        elif bridge == 'training':
            _bridged_training(overrides=overrides)
        else:
            _bridged_inference(overrides={'model_path': 'm', 'test_data_file': 't', **overrides})


def test_model_overrides_cannot_set_training_fields() -> None:
    with pytest.raises(ValueError, match='nepochs'):
        to_model_config(_data(), ModelConfig(), {'nepochs': 3})


def test_bridges_never_mutate_their_inputs() -> None:
    data = _data(K=7, subsample_seed=3)
    model = ModelConfig(amp_activation='SiLU')
    training = _training(test_data_file=None, n_groups=None)
    inference = InferenceConfig()
    model_overrides = {'N': 32}
    training_overrides = {'n_groups': 10, 'nphotons': 1e6}
    inference_overrides = {'model_path': 'm', 'test_data_file': 't.npz'}
    before = copy.deepcopy((data, model, training, inference, model_overrides, training_overrides,
                            inference_overrides))

    tf_model = to_model_config(data, model, model_overrides)
    tf_model_before = copy.deepcopy(tf_model)
    with pytest.warns(UserWarning):
        tf_training = to_training_config(tf_model, data, model, training, training_overrides)
    tf_inference = to_inference_config(tf_model, data, inference, inference_overrides)

    assert (data, model, training, inference, model_overrides, training_overrides,
            inference_overrides) == before
    tf_training.model.N = 256
    tf_inference.model.gridsize = 5
    assert tf_model == tf_model_before


def test_bridged_legacy_dict_equals_direct_construction() -> None:
    data = _data(N=128, grid_size=(2, 2), K=7, subsample_seed=5, nphotons=1e8, probe_scale=2.0)
    model = ModelConfig(mode='Supervised', amp_activation='silu', object_big=True, probe_big=False,
                        n_filters_scale=3, intensity_scale_trainable=True)
    training = _training(epochs=20, batch_size=8, nll=False, n_groups=256, output_dir='runs/y')
    bridged = to_training_config(to_model_config(data, model), data, model, training)

    direct = TFTrainingConfig(
        model=TFModelConfig(
            N=128, gridsize=2, n_filters_scale=3, model_type='supervised', amp_activation='swish',
            object_big=True, probe_big=False, probe_mask=False, pad_object=True, probe_scale=2.0,
            gaussian_smoothing_sigma=0.0,
        ),
        train_data_file=Path('train.npz'),
        test_data_file=Path('test.npz'),
        batch_size=8,
        nepochs=20,
        nll_weight=0.0,
        nphotons=1e8,
        n_groups=256,
        subsample_seed=5,
        neighbor_count=7,
        intensity_scale_trainable=True,
        output_dir=Path('runs/y'),
        backend='pytorch',
    )

    params.reset()
    update_legacy_dict(params.cfg, bridged)
    from_bridge = (params.params(), params.cfg.configured_keys())
    params.reset()
    update_legacy_dict(params.cfg, direct)
    from_direct = (params.params(), params.cfg.configured_keys())

    assert from_bridge == from_direct
    assert from_bridge[0]['gridsize'] == 2 and from_bridge[0]['neighbor_count'] == 7
    assert from_bridge[0]['bigN'] == 128 + params.get('offset')


def test_bridged_inference_legacy_dict_equals_direct_construction() -> None:
    data = _data(N=64, grid_size=(1, 1), K=4)
    bridged = to_inference_config(
        to_model_config(data, ModelConfig()), data, InferenceConfig(),
        {'model_path': 'm', 'test_data_file': 't.npz', 'n_groups': 50},
    )
    direct = TFInferenceConfig(
        model=TFModelConfig(
            N=64, gridsize=1, amp_activation='swish', object_big=True, probe_scale=4.0
        ),
        model_path=Path('m'), test_data_file=Path('t.npz'), n_groups=50, neighbor_count=4,
        backend='pytorch',
    )
    params.reset()
    update_legacy_dict(params.cfg, bridged)
    from_bridge = params.params()
    params.reset()
    update_legacy_dict(params.cfg, direct)
    assert from_bridge == params.params()

