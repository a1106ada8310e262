"""The one table of fields accepted at their default only, and its check (issue 28); torch-free."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import fields
from fnmatch import fnmatchcase

import pytest

from ptycho_torch.config_params import DataConfig, InferenceConfig, ModelConfig, TrainingConfig
from ptycho_torch.config_resolve import DEFAULT_ONLY, default_only_fields, require_supported, unsupported_settings


def test_every_rule_names_a_field_of_its_config():
    for config_type, rules in DEFAULT_ONLY.items():
        names = [f.name for f in fields(config_type)]
        for rule in rules:
            assert any(fnmatchcase(name, rule.pattern) for name in names), (config_type.__name__, rule.pattern)


def test_defaults_and_ptychodus_channel_copies_pass():
    for config_type in (DataConfig, ModelConfig, TrainingConfig, InferenceConfig):
        assert unsupported_settings(config_type()) == []
    data = DataConfig(C=1, grid_size=(1, 1))
    model = ModelConfig(C_model=1, C_forward=1, decoder_last_amp_channels=1, probe_mask=None)  # what Ptychodus sets for C=1
    require_supported(data, model, TrainingConfig(orchestrator="Lightning", strategy="ddp_spawn", device="cuda"))


@pytest.mark.parametrize(("config", "field"), [
    (ModelConfig(hybrid_skip_connections=True), "hybrid_skip_connections"),
    (ModelConfig(spectral_bottleneck_blocks=3), "spectral_bottleneck_blocks"),
    (ModelConfig(amp_loss="Total_Variation"), "amp_loss"),
    (ModelConfig(amp_loss_coeff=2.0), "amp_loss_coeff"),
    (ModelConfig(probe_mask=True), "probe_mask"),
    (ModelConfig(C_model=9), "C_model"),
    (TrainingConfig(epochs_fine_tune=3), "epochs_fine_tune"),
    (TrainingConfig(finetune_stage1_epochs=2), "finetune_stage1_epochs"),
    (TrainingConfig(torch_loss_mode="mae"), "torch_loss_mode"),
    (TrainingConfig(momentum=0.5), "momentum"),
    (TrainingConfig(optimizer="sgd", adam_beta1=0.5), "adam_beta1"),
    (TrainingConfig(gradient_clip_algorithm="value"), "gradient_clip_algorithm"),
    (TrainingConfig(lr_warmup_epochs=2), "lr_warmup_epochs"),
    (InferenceConfig(middle_trim=16), "middle_trim"),
    (InferenceConfig(patch_weighting="uniform"), "patch_weighting"),
    (DataConfig(scan_pattern="Rectangular"), "scan_pattern"),
])
def test_a_non_default_unsupported_field_is_listed_and_refused_by_name(config, field):
    assert [item.field for item in unsupported_settings(config)] == [field]
    name = type(config).__name__
    with pytest.raises(ValueError, match=rf"{name}\.{field}=.* has no effect here: .*; leave it at .* or remove it"):
        require_supported(config)


def test_a_field_in_effect_is_not_listed():
    assert unsupported_settings(TrainingConfig(optimizer="sgd", momentum=0.5)) == []
    assert unsupported_settings(TrainingConfig(optimizer="adamw", adam_beta1=0.5, weight_decay=0.05)) == []
    assert unsupported_settings(TrainingConfig(gradient_clip_val=1.0, gradient_clip_algorithm="value")) == []
    assert unsupported_settings(TrainingConfig(scheduler="WarmupCosine", warmup_epochs=2, min_lr_ratio=0.0)) == []


def test_the_message_names_the_field_as_the_file_writes_it():
    with pytest.raises(ValueError, match=r"^train.json: training\.momentum=0\.5 has no effect here: only optimizer='sgd' reads it; leave it at 0\.9"):
        require_supported(TrainingConfig(momentum=0.5), where={"TrainingConfig": "train.json: training"})


def test_prefix_rules_cover_whole_families():
    model = default_only_fields(ModelConfig)
    assert {name for name in model if name.startswith(("hybrid_", "spectral_"))} == {
        f.name for f in fields(ModelConfig) if f.name.startswith(("hybrid_", "spectral_"))}
    assert len([name for name in default_only_fields(TrainingConfig) if name.startswith("finetune_")]) == 14


CONFIG_MODULES = ("config_params", "config_resolve", "config_file", "data_settings", "config_bridge")


@pytest.mark.parametrize("module", CONFIG_MODULES)
def test_every_config_module_imports_without_torch_or_lightning(module):
    code = (f"import sys; sys.modules['torch'] = sys.modules['lightning'] = None; import ptycho_torch.{module}; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'lightning', 'tensordict') and sys.modules[m] is not None))")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "[]"


def test_migrating_lists_every_field_accepted_at_its_default_only():
    from pathlib import Path

    page = (Path(__file__).resolve().parents[1] / "docs" / "migrating.md").read_text()
    missing = [rule.pattern for rules in DEFAULT_ONLY.values() for rule in rules if f"`{rule.pattern}`" not in page]
    assert missing == []
