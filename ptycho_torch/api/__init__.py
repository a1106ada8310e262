"""The names Ptychodus's PtychoPINN-Torch plugin calls: configs, data loaders, model, trainer, inference."""
