"""Tests of the ``ptycho.config`` dataclasses, their validation and the legacy-dict bridge."""

from __future__ import annotations

from pathlib import Path
import pickle
import warnings

import pytest

from ptycho import params
from ptycho.config import (
    KEY_MAPPINGS,
    InferenceConfig,
    ModelConfig,
    TrainingConfig,
    dataclass_to_legacy_dict,
    update_legacy_dict,
    validate_inference_config,
    validate_model_config,
    validate_training_config,
)

MODEL_DEFAULTS = {
    'gridsize': 1,
    'n_filters_scale': 2,
    'model_type': 'pinn',
    'amp_activation': 'sigmoid',
    'object_big': True,
    'probe_big': True,
    'probe_mask': False,
    'pad_object': True,
    'probe_scale': 4.0,
    'gaussian_smoothing_sigma': 0.0,
}

TRAINING_DEFAULTS = {
    'train_data_file': None,
    'test_data_file': None,
    'batch_size': 16,
    'nepochs': 50,
    'mae_weight': 0.0,
    'nll_weight': 1.0,
    'realspace_mae_weight': 0.0,
    'realspace_weight': 0.0,
    'nphotons': 1e9,
    'n_groups': 512,
    'n_images': None,
    'n_subsample': None,
    'subsample_seed': None,
    'neighbor_count': 4,
    'enable_oversampling': False,
    'neighbor_pool_size': None,
    'positions_provided': True,
    'probe_trainable': False,
    'intensity_scale_trainable': True,
    'output_dir': Path('training_outputs'),
    'sequential_sampling': False,
    'backend': 'tensorflow',
}

INFERENCE_DEFAULTS = {
    'n_groups': None,
    'n_images': None,
    'n_subsample': None,
    'subsample_seed': None,
    'neighbor_count': 4,
    'enable_oversampling': False,
    'neighbor_pool_size': None,
    'sequential_sampling': None,  # not a PtychoPINN InferenceConfig field: None leaves params.cfg alone
    'debug': False,
    'output_dir': Path('inference_outputs'),
    'backend': 'tensorflow',
}


def _inference(**kwargs: object) -> InferenceConfig:
    values: dict[str, object] = {
        'model': ModelConfig(N=64),
        'model_path': Path('model_dir'),
        'test_data_file': Path('test.npz'),
    }
    values.update(kwargs)
    return InferenceConfig(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize(('name', 'expected'), sorted(MODEL_DEFAULTS.items()))
def test_model_defaults(name: str, expected: object) -> None:
    assert getattr(ModelConfig(N=64), name) == expected


@pytest.mark.parametrize(('name', 'expected'), sorted(TRAINING_DEFAULTS.items()))
def test_training_defaults(name: str, expected: object) -> None:
    assert getattr(TrainingConfig(model=ModelConfig(N=64)), name) == expected


@pytest.mark.parametrize(('name', 'expected'), sorted(INFERENCE_DEFAULTS.items()))
def test_inference_defaults(name: str, expected: object) -> None:
    assert getattr(_inference(), name) == expected


def test_inference_requires_model_path_and_test_data_file() -> None:
    with pytest.raises(TypeError, match='model_path'):
        InferenceConfig(model=ModelConfig(N=64))  # type: ignore[call-arg]


def test_model_config_accepts_ptychodus_keywords_and_late_N() -> None:
    model = ModelConfig(
        N=0,
        gridsize=2,
        n_filters_scale=2,
        model_type='supervised',
        amp_activation='swish',
        object_big=True,
        probe_big=False,
        probe_mask=True,
        pad_object=False,
        probe_scale=4.0,
        gaussian_smoothing_sigma=0.5,
    )
    training = TrainingConfig(model=model)
    with pytest.raises(ValueError, match=r'ModelConfig\.N .*diffraction pattern size'):
        validate_model_config(model)
    training.model.N = 64
    validate_model_config(model)
    validate_training_config(training)
    assert model.N == 64


def test_update_legacy_dict_rejects_unset_N_without_touching_cfg() -> None:
    before = params.snapshot()
    training = TrainingConfig(model=ModelConfig(N=0, gridsize=1))
    with pytest.raises(ValueError, match='N'):
        update_legacy_dict(params.cfg, training)
    assert dict(params.cfg) == dict(before.values)
    assert params.cfg.configured_keys() == before.configured
    training.model.N = 64
    update_legacy_dict(params.cfg, training)
    assert params.get('N') == 64 and params.get('gridsize') == 1


def test_training_accepts_every_ptychodus_keyword() -> None:
    config = TrainingConfig(
        model=ModelConfig(N=0),
        train_data_file=Path(),
        test_data_file=None,
        batch_size=32,
        nepochs=7,
        mae_weight=0.25,
        nll_weight=0.75,
        realspace_mae_weight=0.5,
        realspace_weight=0.5,
        nphotons=1e6,
        positions_provided=False,
        probe_trainable=True,
        intensity_scale_trainable=False,
        output_dir=Path(),
    )
    config.model.N = 32
    update_legacy_dict(params.cfg, config)
    assert params.get('nphotons') == 1e6
    assert params.get('probe.trainable') is True
    assert params.get('intensity_scale.trainable') is False
    assert params.get('positions.provided') is False
    assert params.get('train_data_file_path') == '.'


def test_inference_accepts_every_ptychodus_keyword() -> None:
    config = InferenceConfig(
        model=ModelConfig(N=64),
        model_path=Path(),
        test_data_file=Path(),
        debug=True,
        output_dir=Path(),
    )
    update_legacy_dict(params.cfg, config)
    assert params.get('debug') is True
    assert params.get('model_path') == '.'


def test_ptychodus_tensorflow_builders_produce_usable_configs() -> None:
    pytest.importorskip('ptychodus')
    from ptychodus.api.settings import SettingsRegistry
    from ptychodus.model.ptychopinn import reconstructor
    from ptychodus.model.ptychopinn.settings import (
        PtychoPINNModelSettings,
        PtychoPINNTrainingSettings,
    )

    registry = SettingsRegistry()
    model_settings = PtychoPINNModelSettings(registry)
    training_settings = PtychoPINNTrainingSettings(registry)
    model_settings.gridsize.set_value(2)
    training_settings.nphotons.set_value(2e6)

    training = reconstructor._build_training_config(model_settings, training_settings, 'PINN')
    assert isinstance(training, TrainingConfig)
    with pytest.raises(ValueError, match='N'):
        update_legacy_dict(params.cfg, training)
    training.model.N = 64
    update_legacy_dict(params.cfg, training)
    assert (params.get('N'), params.get('gridsize'), params.get('nphotons')) == (64, 2, 2e6)
    assert params.get('model_type') == 'pinn'
    assert params.get('bigN') == 64 + params.get('offset')

    inference = reconstructor._build_inference_config(
        model_settings, 'Supervised', 128, is_developer_mode_enabled=True
    )
    update_legacy_dict(params.cfg, inference)
    assert params.get('N') == 128
    assert params.get('model_type') == 'supervised' and params.get('debug') is True
    assert pickle.loads(pickle.dumps(inference)) == inference


def test_n_groups_none_means_512_for_training_and_all_for_inference() -> None:
    assert TrainingConfig(model=ModelConfig(), n_groups=None).n_groups == 512
    assert _inference(n_groups=None).n_groups is None


@pytest.mark.parametrize('make', [
    lambda **kw: TrainingConfig(model=ModelConfig(), **kw),
    _inference,
], ids=['training', 'inference'])
def test_n_images_is_a_deprecated_alias_of_n_groups(make) -> None:  # type: ignore[no-untyped-def]
    with pytest.warns(DeprecationWarning, match='n_groups'):
        config = make(n_images=100)
    assert config.n_groups == 100
    disagree = pytest.raises(ValueError, match='n_groups=5.*n_images=6')
    with pytest.warns(DeprecationWarning), disagree:
        make(n_groups=5, n_images=6)
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        assert make(n_groups=7).n_groups == 7


def test_deprecation_warning_points_at_the_caller() -> None:
    with pytest.warns(DeprecationWarning) as record:
        TrainingConfig(model=ModelConfig(), n_images=3)
    assert record[0].filename == __file__


def test_string_paths_become_paths() -> None:
    training = TrainingConfig(
        model=ModelConfig(),
        train_data_file='train.npz',
        test_data_file='test.npz',
        output_dir='out',
    )
    assert training.train_data_file == Path('train.npz')
    assert training.test_data_file == Path('test.npz')
    assert training.output_dir == Path('out')
    inference = _inference(model_path='model_dir', test_data_file='t.npz', output_dir='o')
    assert (inference.model_path, inference.test_data_file, inference.output_dir) == (
        Path('model_dir'), Path('t.npz'), Path('o')
    )


def test_legacy_dict_renames_flattens_and_stringifies_paths() -> None:
    config = TrainingConfig(
        model=ModelConfig(N=64, object_big=False, probe_big=False, probe_mask=True),
        train_data_file=Path('data/train.npz'),
        test_data_file=Path('data/test.npz'),
        output_dir=Path('runs/a'),
        probe_trainable=True,
        intensity_scale_trainable=False,
        positions_provided=False,
    )
    legacy = dataclass_to_legacy_dict(config)
    assert 'model' not in legacy
    assert not set(KEY_MAPPINGS) & set(legacy)
    assert legacy['object.big'] is False
    assert legacy['probe.big'] is False
    assert legacy['probe.mask'] is True
    assert legacy['probe.trainable'] is True
    assert legacy['intensity_scale.trainable'] is False
    assert legacy['positions.provided'] is False
    assert legacy['output_prefix'] == str(Path('runs/a'))
    assert legacy['train_data_file_path'] == str(Path('data/train.npz'))
    assert legacy['test_data_file_path'] == str(Path('data/test.npz'))
    assert legacy['N'] == 64 and legacy['gridsize'] == 1
    assert not any(isinstance(value, Path) for value in legacy.values())


def test_key_mappings_cover_exactly_the_documented_renames() -> None:
    assert KEY_MAPPINGS == {
        'object_big': 'object.big',
        'probe_big': 'probe.big',
        'probe_mask': 'probe.mask',
        'probe_trainable': 'probe.trainable',
        'intensity_scale_trainable': 'intensity_scale.trainable',
        'positions_provided': 'positions.provided',
        'output_dir': 'output_prefix',
        'train_data_file': 'train_data_file_path',
        'test_data_file': 'test_data_file_path',
    }


@pytest.mark.parametrize('config_type', [TrainingConfig, InferenceConfig])
def test_legacy_dict_carries_every_grouping_field(config_type: type) -> None:
    model = ModelConfig(N=32, gridsize=2)
    extra = {'model_path': 'm', 'test_data_file': 't.npz'} if config_type is InferenceConfig else {}
    config = config_type(
        model=model,
        n_groups=11,
        n_subsample=40,
        subsample_seed=3,
        neighbor_count=7,
        enable_oversampling=True,
        neighbor_pool_size=9,
        sequential_sampling=True,
        **extra,
    )
    update_legacy_dict(params.cfg, config)
    assert {key: params.get(key) for key in (
        'N', 'gridsize', 'n_groups', 'n_subsample', 'subsample_seed', 'neighbor_count',
        'enable_oversampling', 'neighbor_pool_size', 'sequential_sampling',
    )} == {
        'N': 32, 'gridsize': 2, 'n_groups': 11, 'n_subsample': 40, 'subsample_seed': 3,
        'neighbor_count': 7, 'enable_oversampling': True, 'neighbor_pool_size': 9,
        'sequential_sampling': True,
    }


def test_none_values_never_overwrite() -> None:
    params.cfg['test_data_file_path'] = 'keep.npz'
    update_legacy_dict(params.cfg, TrainingConfig(model=ModelConfig(), test_data_file=None))
    assert params.get('test_data_file_path') == 'keep.npz'
    assert 'train_data_file_path' not in params.cfg

    params.cfg['subsample_seed'] = 17
    params.cfg['n_groups'] = 33
    update_legacy_dict(params.cfg, _inference(n_groups=None, subsample_seed=None))
    assert params.get('subsample_seed') == 17
    assert params.get('n_groups') == 33


def test_legacy_dict_keeps_none_values_for_callers_to_filter() -> None:
    legacy = dataclass_to_legacy_dict(_inference())
    assert 'n_groups' in legacy and legacy['n_groups'] is None


def test_update_legacy_dict_accepts_a_bare_model_config_and_a_plain_dict() -> None:
    target: dict[str, object] = {'gridsize': 2}
    update_legacy_dict(target, ModelConfig(N=128, gridsize=3, probe_mask=True))
    assert target['gridsize'] == 3 and target['N'] == 128 and target['probe.mask'] is True
    assert set(target) == {
        'N', 'gridsize', 'n_filters_scale', 'model_type', 'amp_activation', 'object.big',
        'probe.big', 'probe.mask', 'pad_object', 'probe_scale', 'gaussian_smoothing_sigma',
        'architecture', 'fno_modes', 'fno_width', 'fno_blocks', 'fno_cnn_blocks',
        'learned_input_channels', 'fno_input_transform', 'generator_output_mode', 'probe_mask_sigma',
    }  # None-valued fields (max_hidden_channels, object_layout, ...) are not written


@pytest.mark.parametrize('bad', [{'N': 64}, None, 'config', ModelConfig])
def test_non_configs_are_rejected(bad: object) -> None:
    with pytest.raises(TypeError, match='ModelConfig'):
        update_legacy_dict({}, bad)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match='ModelConfig'):
        dataclass_to_legacy_dict(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize(('name', 'value'), [
    ('N', 0), ('N', -64), ('N', 64.0), ('N', True),
    ('gridsize', 0), ('n_filters_scale', 0),
    ('model_type', 'gan'), ('amp_activation', 'silu'),
    ('object_big', 1), ('probe_mask', None),
    ('probe_scale', 0.0), ('probe_scale', float('nan')),
    ('gaussian_smoothing_sigma', -1.0),
])
def test_validate_model_config_names_the_bad_field(name: str, value: object) -> None:
    model = ModelConfig(N=64)
    setattr(model, name, value)
    with pytest.raises(ValueError, match=f'ModelConfig.{name}'):
        validate_model_config(model)


@pytest.mark.parametrize(('name', 'value'), [
    ('batch_size', 0), ('nepochs', 0),
    ('mae_weight', 1.5), ('nll_weight', -0.1), ('realspace_weight', -1.0),
    ('nphotons', 0.0), ('nphotons', float('inf')),
    ('n_groups', 0), ('n_subsample', -1), ('subsample_seed', -1), ('subsample_seed', 1.5),
    ('neighbor_count', 0), ('neighbor_pool_size', 0),
    ('enable_oversampling', 'yes'), ('sequential_sampling', None),
    ('probe_trainable', 0), ('backend', 'jax'),
])
def test_validate_training_config_names_the_bad_field(name: str, value: object) -> None:
    config = TrainingConfig(model=ModelConfig(N=64))
    setattr(config, name, value)
    with pytest.raises(ValueError, match=f'TrainingConfig.{name}'):
        validate_training_config(config)
    with pytest.raises(ValueError, match=f'TrainingConfig.{name}'):
        update_legacy_dict(params.cfg, config)


@pytest.mark.parametrize(('name', 'value'), [
    ('model_path', None), ('test_data_file', None), ('debug', 'no'),
    ('n_groups', -3), ('neighbor_count', 0), ('backend', 'tf'),
])
def test_validate_inference_config_names_the_bad_field(name: str, value: object) -> None:
    config = _inference()
    setattr(config, name, value)
    with pytest.raises(ValueError, match=f'InferenceConfig.{name}'):
        validate_inference_config(config)


def test_validators_check_the_nested_model() -> None:
    with pytest.raises(ValueError, match='ModelConfig.gridsize'):
        validate_training_config(TrainingConfig(model=ModelConfig(N=64, gridsize=0)))
    with pytest.raises(ValueError, match='ModelConfig.N'):
        validate_inference_config(_inference(model=ModelConfig(N=0)))


def test_valid_configs_pass_validation() -> None:
    validate_training_config(
        TrainingConfig(model=ModelConfig(N=128, gridsize=2), backend='pytorch')
    )
    validate_inference_config(_inference(n_groups=10, neighbor_pool_size=6, backend='pytorch'))


def test_configs_pickle_and_compare_by_value() -> None:
    config = TrainingConfig(model=ModelConfig(N=64, gridsize=2), train_data_file='a.npz')
    clone = pickle.loads(pickle.dumps(config))
    assert clone == config and clone is not config
