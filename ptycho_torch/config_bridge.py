"""PtychoPINN's module name for the translation of torch configs into ``ptycho.config`` dataclasses.

The functions live in :mod:`ptycho_torch.config_resolve`, with every other check of the configs;
this module keeps PtychoPINN's import path ``from ptycho_torch.config_bridge import to_model_config``.
"""

from ptycho_torch.config_resolve import to_inference_config, to_model_config, to_training_config

__all__ = [
    'to_inference_config',
    'to_model_config',
    'to_training_config',
]
