"""The five torch configs held together, rebuilt from dicts, and checked against a loaded network."""

from __future__ import annotations

from ptycho_torch.api.data import GROUP_COUNTING_FIELDS
from ptycho_torch.config_file import as_config
from ptycho_torch.config_params import DataConfig, DatagenConfig, InferenceConfig, ModelConfig, TrainingConfig
from ptycho_torch.config_resolve import require_supported

__all__ = ["ARCHITECTURE_FIELDS", "ConfigManager", "as_config", "configs_of_module"]

# Fields that fix the shapes of the network's weights (or what they mean): a checkpoint only
# works with configs that agree on all of them.
ARCHITECTURE_FIELDS: dict[str, tuple[str, ...]] = {
    "data_config": ("N", "C", "grid_size"),
    "model_config": (
        "architecture", "n_filters_scale", "C_model", "C_forward", "object_big", "probe_big",
        "amp_activation", "batch_norm", "use_shared_decoder", "decoder_last_c_outer_fraction",
        "decoder_last_amp_channels", "eca_encoder", "cbam_encoder", "cbam_bottleneck", "cbam_decoder",
        "eca_decoder", "spatial_decoder", "decoder_spatial_kernel", "num_datasets", "generator_input",
        "object_estimate_steps", "generator_output", "base_filters",
    ),
}

_CONFIG_CLASSES = {
    "data_config": DataConfig,
    "model_config": ModelConfig,
    "training_config": TrainingConfig,
    "inference_config": InferenceConfig,
}


def configs_of_module(module) -> dict[str, Any]:
    """The four configs a Lightning module was built with, as dataclasses (attributes, else its hparams)."""
    found = {}
    hparams = getattr(module, "hparams", {}) or {}
    for name, cls in _CONFIG_CLASSES.items():
        value = getattr(module, name, None)
        if value is None:
            value = hparams.get(name)
        found[name] = as_config(value, cls, unknown="drop") if value is not None else None
    return found


class ConfigManager:
    """Holds ``data_config``, ``model_config``, ``training_config``, ``inference_config``, ``datagen_config``.

    Each may be given as its dataclass (copied, never aliased), a dict (lists become tuples where
    the field is a tuple; unknown keys are logged and dropped, so a checkpoint of a newer version
    loads) or None (defaults); any other type is a TypeError (:func:`ptycho_torch.config_file.as_config`
    with ``unknown='drop'``). Fields this package cannot honour are refused at non-default values
    (ValueError naming them, :mod:`ptycho_torch.config_resolve`). :meth:`from_loaded_model` takes a
    loaded model's own configs and freezes the architecture; :meth:`validate_arch_compatibility`
    raises ValueError listing every ``ARCHITECTURE_FIELDS`` field where configs and network differ.
    """

    def __init__(self, data_config=None, model_config=None, training_config=None, inference_config=None, datagen_config=None):
        self.data_config: DataConfig = as_config(data_config, DataConfig, unknown="drop")
        self.model_config: ModelConfig = as_config(model_config, ModelConfig, unknown="drop")
        self.training_config: TrainingConfig = as_config(training_config, TrainingConfig, unknown="drop")
        self.inference_config: InferenceConfig = as_config(inference_config, InferenceConfig, unknown="drop")
        self.datagen_config: DatagenConfig = as_config(datagen_config, DatagenConfig, unknown="drop")
        require_supported(self.data_config, self.model_config, self.training_config, self.inference_config, honoured=GROUP_COUNTING_FIELDS)
        self.arch_frozen = False

    def __repr__(self) -> str:
        return (
            f"ConfigManager(N={self.data_config.N}, C={self.data_config.C}, mode={self.model_config.mode!r}, "
            f"n_filters_scale={self.model_config.n_filters_scale}, epochs={self.training_config.epochs})"
        )

    @classmethod
    def from_loaded_model(cls, ptycho_model) -> ConfigManager:
        """The configs of a loaded :class:`PtychoModel` (its network's own, where it has one); architecture frozen."""
        configs = {name: getattr(ptycho_model, name, None) for name in _CONFIG_CLASSES}
        network = getattr(ptycho_model, "model", None)
        if network is not None:
            configs.update({name: value for name, value in configs_of_module(network).items() if value is not None})
        manager = cls(**configs, datagen_config=DatagenConfig())
        manager.arch_frozen = True
        return manager

    def validate_arch_compatibility(self, ptycho_model) -> None:
        """Raise ValueError listing every architecture field where these configs and the model's network differ."""
        network = getattr(ptycho_model, "model", None)
        if network is None:
            raise ValueError("the PtychoModel holds no network yet; load a checkpoint or create a model first")
        theirs = configs_of_module(network)
        mismatches = []
        for name, fields in ARCHITECTURE_FIELDS.items():
            if theirs[name] is None:
                continue
            ours = getattr(self, name)
            for field in fields:
                mine, other = getattr(ours, field, None), getattr(theirs[name], field, None)
                if mine != other:
                    mismatches.append(f"{name}.{field}: configs {mine!r} vs model {other!r}")
        if mismatches:
            raise ValueError(
                "the configs do not match the loaded model's architecture ("
                + "; ".join(mismatches)
                + "); use the configs stored in the checkpoint, or train a new model with these settings"
            )
