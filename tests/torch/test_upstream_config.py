"""PtychoPINN's config fields, defaults, legacy-dict semantics and error phrases, as its users rely on them.

The expected defaults below are PtychoPINN's (2026-07 ``ptycho/config/config.py`` and
``ptycho_torch/config_params.py``). Runs without torch; about 2 s.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from ptycho import params
from ptycho.config.config import InferenceConfig as TFInferenceConfig
from ptycho.config.config import ModelConfig as TFModelConfig
from ptycho.config.config import TrainingConfig as TFTrainingConfig
from ptycho.config.config import update_legacy_dict
from ptycho.grouping import GroupingSettings, sample_groups
from ptycho_torch.config_bridge import to_inference_config, to_model_config, to_training_config
from ptycho_torch.config_params import DataConfig, InferenceConfig, ModelConfig, TrainingConfig

UPSTREAM_TF_MODEL = {
    'architecture': 'cnn', 'fno_modes': 12, 'fno_width': 32, 'fno_blocks': 4, 'fno_cnn_blocks': 2,
    'learned_input_channels': 1, 'max_hidden_channels': None, 'resnet_width': None,
    'fno_input_transform': 'none', 'generator_output_mode': 'real_imag', 'amp_activation': 'sigmoid',
    'object_layout': None, 'training_canvas': None, 'training_patch_weighting': None, 'probe_big': True,
    'probe_mask': False, 'probe_mask_sigma': 1.0, 'probe_mask_diameter': None, 'pad_object': True,
    'probe_scale': 4.0, 'gaussian_smoothing_sigma': 0.0,
}
UPSTREAM_TF_TRAINING = {
    'torch_loss_mode': 'poisson', 'torch_mae_pred_l2_match_target': False, 'gradient_clip_val': None,
    'gradient_clip_algorithm': 'norm', 'optimizer': 'adam', 'momentum': 0.9, 'weight_decay': 0.0,
    'adam_beta1': 0.9, 'adam_beta2': 0.999, 'scheduler': 'Default', 'lr_warmup_epochs': 0,
    'lr_min_ratio': 0.1, 'plateau_factor': 0.5, 'plateau_patience': 2, 'plateau_min_lr': 5e-5,
    'plateau_threshold': 0.0, 'sequential_sampling': False, 'n_groups': 512,
}
UPSTREAM_TORCH = {
    DataConfig: {'probe_scale': 4.0, 'probe_normalize': True, 'normalize': 'Batch', 'K': 6, 'C': 4},
    ModelConfig: {
        'architecture': 'cnn', 'fno_modes': 12, 'fno_width': 32, 'fno_blocks': 4, 'fno_cnn_blocks': 2,
        'learned_input_channels': 1, 'fno_input_transform': 'none', 'max_hidden_channels': None,
        'resnet_width': None, 'hybrid_skip_connections': False, 'hybrid_downsample_steps': 2,
        'hybrid_downsample_op': 'stride_conv', 'hybrid_encoder_conv_hidden_scale': 1.0,
        'hybrid_encoder_spectral_hidden_scale': 1.0, 'hybrid_encoder_conv_hidden_channels': None,
        'hybrid_encoder_spectral_hidden_channels': None, 'hybrid_resnet_blocks': 6, 'hybrid_skip_style': 'add',
        'spectral_bottleneck_blocks': 6, 'spectral_bottleneck_modes': 12, 'spectral_bottleneck_share_weights': True,
        'spectral_bottleneck_gate_init': 0.1, 'spectral_bottleneck_gate_mode': 'shared',
        'generator_output_mode': 'real_imag', 'C_model': 4, 'C_forward': 4, 'probe_mask': False,
        'probe_mask_tensor': None, 'probe_mask_sigma': 1.0, 'probe_mask_diameter': None, 'object_big': True,
        'probe_big': True, 'n_filters_scale': 2, 'mode': 'Unsupervised', 'loss_function': 'Poisson',
    },
    TrainingConfig: {
        'scheduler': 'Default', 'lr_warmup_epochs': 0, 'lr_min_ratio': 0.1, 'plateau_factor': 0.5,
        'plateau_patience': 2, 'plateau_min_lr': 5e-5, 'plateau_threshold': 0.0, 'gradient_clip_val': None,
        'gradient_clip_algorithm': 'norm', 'optimizer': 'adam', 'momentum': 0.9, 'weight_decay': 0.0,
        'adam_beta1': 0.9, 'adam_beta2': 0.999, 'log_grad_norm': False, 'grad_norm_log_freq': 1,
        'torch_loss_mode': 'poisson', 'torch_mae_pred_l2_match_target': False, 'accum_steps': 1,
        'learning_rate': 1e-3, 'output_dir': 'training_outputs',
    },
    InferenceConfig: {'log_patch_stats': False, 'patch_stats_limit': None, 'window': 20, 'pad_eval': True},
}


def test_training_then_inference_leaves_params_as_upstream():
    model = TFModelConfig(N=64, gridsize=2)
    training = TFTrainingConfig(model=model, sequential_sampling=True, n_groups=100, subsample_seed=3)
    inference = TFInferenceConfig(model=model, model_path=Path("m"), test_data_file=Path("t.npz"))
    params.reset()
    update_legacy_dict(params.cfg, training)
    update_legacy_dict(params.cfg, inference)
    assert params.get("sequential_sampling") is True  # InferenceConfig has no such field upstream
    assert params.get("n_groups") == 100 and params.get("subsample_seed") == 3  # None never overwrites
    assert params.get("test_data_file_path") == "t.npz"


def test_inference_grouping_without_sequential_sampling_is_random_sampling():
    inference = TFInferenceConfig(model=TFModelConfig(N=16, gridsize=2), model_path=Path("m"), test_data_file=Path("t.npz"))
    x, y = np.meshgrid(np.arange(8.0), np.arange(8.0))
    from ptycho_torch.data_settings import grouping_key

    key = grouping_key(inference)
    assert key.settings.sequential_sampling is False
    explicit = GroupingSettings(gridsize=2, K=4, nsamples=10, seed=1, sequential_sampling=False)
    assert sample_groups(x.ravel(), y.ravel(), explicit).shape == (10, 4)


@pytest.mark.parametrize(("name", "expected"), sorted(UPSTREAM_TF_MODEL.items()))
def test_ptycho_model_config_has_upstreams_fields_and_defaults(name, expected):
    assert getattr(TFModelConfig(), name) == expected


@pytest.mark.parametrize(("name", "expected"), sorted(UPSTREAM_TF_TRAINING.items()))
def test_ptycho_training_config_has_upstreams_fields_and_defaults(name, expected):
    assert getattr(TFTrainingConfig(model=TFModelConfig()), name) == expected


@pytest.mark.parametrize(
    ("config_type", "name", "expected"),
    [(kind, name, value) for kind, values in UPSTREAM_TORCH.items() for name, value in sorted(values.items())],
)
def test_torch_configs_have_upstreams_fields_and_defaults(config_type, name, expected):
    assert getattr(config_type(), name) == expected


def test_new_fields_are_carried_through_the_bridge_into_params():
    data = DataConfig(N=64, nphotons=1e6)
    model = ModelConfig(architecture="fno", fno_modes=8, learned_input_channels=3, fno_input_transform="log1p", probe_mask_sigma=2.0)
    training = TrainingConfig(
        n_groups=10, train_data_file="a.npz", test_data_file="b.npz", optimizer="adamw", gradient_clip_val=1.5,
        gradient_clip_algorithm="value", lr_warmup_epochs=3, scheduler="WarmupCosine", torch_loss_mode="mae",
        weight_decay=0.01,
    )
    tf_model = to_model_config(data, model)
    config = to_training_config(tf_model, data, model, training)
    assert (tf_model.architecture, tf_model.fno_modes, tf_model.learned_input_channels, tf_model.fno_input_transform) == ("fno", 8, 3, "log1p")
    assert tf_model.probe_mask_sigma == 2.0 and tf_model.probe_mask is False
    assert to_model_config(data, ModelConfig(probe_mask_tensor=np.ones((64, 64)))).probe_mask is True  # an explicit mask enables it
    assert (config.optimizer, config.gradient_clip_val, config.gradient_clip_algorithm) == ("adamw", 1.5, "value")
    assert (config.lr_warmup_epochs, config.scheduler, config.torch_loss_mode, config.weight_decay) == (3, "WarmupCosine", "mae", 0.01)
    params.reset()
    update_legacy_dict(params.cfg, config)
    assert params.get("architecture") == "fno" and params.get("optimizer") == "adamw" and params.get("lr_warmup_epochs") == 3


def test_older_warmup_names_still_reach_the_bridge():
    data, model = DataConfig(nphotons=1e6), ModelConfig()
    training = TrainingConfig(n_groups=10, train_data_file="a.npz", test_data_file="b.npz", warmup_epochs=4, min_lr_ratio=0.2)
    config = to_training_config(to_model_config(data, model), data, model, training)
    assert (config.lr_warmup_epochs, config.lr_min_ratio) == (4, 0.2)


def test_bad_new_field_values_are_refused_by_name():
    with pytest.raises(ValueError, match=r"ModelConfig.architecture must be one of .*'cnn'.* got 'transformer'"):
        to_model_config(DataConfig(), ModelConfig(architecture="transformer"))
    data, model = DataConfig(nphotons=1e6), ModelConfig()
    with pytest.raises(ValueError, match=r"TrainingConfig.optimizer must be one of \['adam', 'adamw', 'sgd'\], got 'lion'"):
        to_training_config(to_model_config(data, model), data, model, TrainingConfig(n_groups=1, train_data_file="a", test_data_file="b", optimizer="lion"))


def test_configs_with_new_fields_pickle_under_the_module_path():
    model = ModelConfig(probe_mask_tensor=np.ones((4, 4)), architecture="hybrid")
    clone = pickle.loads(pickle.dumps(model))
    assert type(clone).__module__ == "ptycho_torch.config_params" and clone.architecture == "hybrid"
    np.testing.assert_array_equal(clone.probe_mask_tensor, np.ones((4, 4)))
    assert pickle.loads(pickle.dumps(TrainingConfig(optimizer="sgd"))).optimizer == "sgd"


def test_shared_field_groups_are_declared_once_and_keep_the_positional_fields():
    from dataclasses import fields

    from ptycho.config.config import GeneratorFields, GroupingFields, LRScheduleFields, ObjectProbeFields, OptimizerFields

    for group, owners in ((GeneratorFields, (TFModelConfig, ModelConfig)), (ObjectProbeFields, (TFModelConfig, ModelConfig)),
                          (OptimizerFields, (TFTrainingConfig, TrainingConfig)), (LRScheduleFields, (TFTrainingConfig, TrainingConfig)),
                          (GroupingFields, (TFTrainingConfig, TFInferenceConfig))):
        for owner in owners:
            assert issubclass(owner, group) and not set(owner.__dict__["__annotations__"]) & {f.name for f in fields(group)}
    # the groups' fields are keyword-only; the leading fields stay positional, in PtychoPINN's order
    model = TFModelConfig(32, 2, 3, "supervised", "relu")
    assert (model.N, model.gridsize, model.n_filters_scale, model.model_type, model.amp_activation) == (32, 2, 3, "supervised", "relu")
    training = TFTrainingConfig(model, "a.npz", "b.npz", 8, 3, 0.0, 1.0, 0.0, 0.0, 1e6, optimizer="sgd", n_groups=9)
    assert (training.batch_size, training.nepochs, training.nphotons, training.optimizer, training.n_groups) == (8, 3, 1e6, "sgd", 9)
    assert TFInferenceConfig(model, "m", "t.npz", n_groups=4).n_groups == 4
    assert TrainingConfig(["d"], False, "cpu").device == "cpu"


# --- error phrases PtychoPINN scripts match on ---------------------------------------------------

def test_error_texts_carry_upstreams_phrases_and_our_fix():
    data = DataConfig(nphotons=1e6)
    with pytest.raises(ValueError, match=r"Non-square grids are not supported.*\(2, 2\)"):
        to_model_config(DataConfig(grid_size=(2, 3)), ModelConfig())
    with pytest.raises(ValueError, match=r"Invalid mode 'unsupervised'.*one of \['Supervised', 'Unsupervised'\]"):
        to_model_config(data, ModelConfig(mode="unsupervised"))
    with pytest.raises(ValueError, match=r"Unknown activation 'gelu'.*'silu' becomes 'swish'"):
        to_model_config(data, ModelConfig(amp_activation="gelu"))
    tf_model = to_model_config(data, ModelConfig())
    with pytest.raises(ValueError, match=r"train_data_file is required.*TrainingConfig\(train_data_file=\.\.\.\)"):
        to_training_config(tf_model, data, ModelConfig(), TrainingConfig(n_groups=1))
    with pytest.raises(ValueError, match=r"model_path is required.*overrides=\{'model_path'"):
        to_inference_config(tf_model, data, InferenceConfig(), {"test_data_file": "t.npz"})
    with pytest.raises(ValueError, match=r"nphotons default divergence.*DataConfig\(nphotons=\.\.\.\)"):
        to_training_config(tf_model, DataConfig(), ModelConfig(), TrainingConfig(n_groups=1, train_data_file="a"))


def test_oversampling_errors_carry_upstreams_phrases():
    x, y = np.meshgrid(np.arange(4.0), np.arange(4.0))
    with pytest.raises(ValueError, match=r"K choose C oversampling is required but not enabled \(OVERSAMPLING-001\).*neighbor_pool_size >= 4"):
        sample_groups(x.ravel(), y.ravel(), GroupingSettings(gridsize=2, K=6, nsamples=40))
    with pytest.raises(ValueError, match=r"K choose C oversampling requires neighbor_pool_size >= C.*neighbor_pool_size=3.*OVERSAMPLING-001"):
        sample_groups(x.ravel(), y.ravel(), GroupingSettings(gridsize=2, K=6, nsamples=40, enable_oversampling=True, neighbor_pool_size=3))
