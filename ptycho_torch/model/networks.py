"""Generators of PtychoPINN: a U-Net from a group's C input images to its C complex object patches."""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["CBAM", "UNetGenerator", "build_generator"]

UNSUPPORTED_FLAGS = ("eca_encoder", "eca_decoder", "spatial_decoder")
AMPLITUDE_ACTIVATIONS = {
    "exp": torch.exp,
    "softplus": nn.functional.softplus,
    "silu": nn.functional.silu,
    "swish": nn.functional.silu,
    "sigmoid": torch.sigmoid,
    "relu": nn.functional.relu,
}
_BIAS_FOR_UNIT = {"exp": 0.0, "softplus": math.log(math.e - 1), "silu": 1.2784645, "swish": 1.2784645, "sigmoid": 0.0, "relu": 1.0}


class CBAM(nn.Module):
    """Convolutional block attention: a channel gate (shared MLP on avg/max pools) then a 7x7 spatial gate."""

    def __init__(self, channels: int, reduction: int = 16, kernel: int = 7):
        super().__init__()
        hidden = max(1, channels // reduction)
        self.mlp = nn.Sequential(nn.Conv2d(channels, hidden, 1), nn.ReLU(inplace=True), nn.Conv2d(hidden, channels, 1))
        self.spatial = nn.Conv2d(2, 1, kernel, padding=kernel // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = self.mlp(x.mean(dim=(2, 3), keepdim=True)) + self.mlp(x.amax(dim=(2, 3), keepdim=True))
        x = x * torch.sigmoid(gate)
        pooled = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return x * torch.sigmoid(self.spatial(pooled))


def _double_conv(cin: int, cout: int, batch_norm: bool, attention: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for c_in in (cin, cout):
        layers.append(nn.Conv2d(c_in, cout, 3, padding=1, bias=not batch_norm))
        if batch_norm:
            layers.append(nn.BatchNorm2d(cout))
        layers.append(nn.ReLU(inplace=True))
    if attention:
        layers.append(CBAM(cout))
    return nn.Sequential(*layers)


class _Decoder(nn.Module):
    """Upsampling path: nearest x2, concatenate the skip, two 3x3 convolutions; per level."""

    def __init__(self, widths: list[int], batch_norm: bool, attention: bool):
        super().__init__()
        deep = widths[::-1]  # e.g. [4w, 2w, w]
        ins = [deep[0] * 2] + deep[:-1]
        self.blocks = nn.ModuleList(_double_conv(cin + skip, skip, batch_norm, attention) for cin, skip in zip(ins, deep))

    def forward(self, x: torch.Tensor, skips: list[torch.Tensor]) -> torch.Tensor:
        for block, skip in zip(self.blocks, reversed(skips)):
            x = nn.functional.interpolate(x, size=skip.shape[-2:], mode="nearest")
            x = block(torch.cat([x, skip], dim=1))
        return x


class UNetGenerator(nn.Module):
    """``(B, in_channels, N, N)`` inputs -> amplitude and phase ``(B, C, N, N)`` through a 3-level U-Net.

    Encoder widths ``[w, 2w, 4w]`` with ``w = base_filters * n_filters_scale`` and a ``8w`` bottleneck
    at ``N / 8``; amplitude and phase get their own decoder (or one shared decoder with
    ``use_shared_decoder``) and a 1x1 head each. The heads start at zero, so the initial object is
    ``activation(bias) = 1`` in amplitude and 0 in phase.
    """

    def __init__(self, C: int, n_filters_scale: int = 1, *, base_filters: int = 16, in_channels: int | None = None, batch_norm=False,
                 cbam_encoder=False, cbam_bottleneck=False,
                 cbam_decoder=False, use_shared_decoder=False, amp_activation="exp"):
        super().__init__()
        if amp_activation not in AMPLITUDE_ACTIVATIONS:
            raise ValueError(f"ModelConfig.amp_activation={amp_activation!r} is not supported; use one of {sorted(AMPLITUDE_ACTIVATIONS)}")
        w = int(base_filters) * int(n_filters_scale)
        widths = [w, 2 * w, 4 * w]
        ins = [in_channels or C] + widths[:-1]
        self.encoder = nn.ModuleList(_double_conv(cin, cout, batch_norm, cbam_encoder) for cin, cout in zip(ins, widths))
        self.bottleneck = _double_conv(widths[-1], 2 * widths[-1], batch_norm, cbam_bottleneck)
        self.amp_decoder = _Decoder(widths, batch_norm, cbam_decoder)
        self.phase_decoder = self.amp_decoder if use_shared_decoder else _Decoder(widths, batch_norm, cbam_decoder)
        self.amp_head = nn.Conv2d(w, C, 1)
        self.phase_head = nn.Conv2d(w, C, 1)
        for head, bias in ((self.amp_head, _BIAS_FOR_UNIT[amp_activation]), (self.phase_head, 0.0)):
            nn.init.zeros_(head.weight)
            nn.init.constant_(head.bias, bias)
        self.amp_activation = AMPLITUDE_ACTIVATIONS[amp_activation]
        self.shared = use_shared_decoder

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        amp_features, phase_features = self.features(x)
        return self.heads(amp_features, phase_features)

    def heads(self, amp_features: torch.Tensor, phase_features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Amplitude and phase ``(B, C, N, N)`` from the decoders' features (1x1 convolutions and the activation)."""
        return self.amp_activation(self.amp_head(amp_features)), self.phase_head(phase_features)

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The amplitude and phase decoders' last features ``(B, w, N, N)`` (the same tensor with a shared decoder)."""
        skips = []
        for block in self.encoder:
            x = block(x)
            skips.append(x)
            x = nn.functional.max_pool2d(x, 2)
        x = self.bottleneck(x)
        amp_features = self.amp_decoder(x, skips)
        phase_features = amp_features if self.shared else self.phase_decoder(x, skips)
        return amp_features, phase_features


def build_generator(model_config, C: int, in_channels: int) -> nn.Module:
    """The generator ``ModelConfig.architecture`` names, for ``in_channels`` input images; unsupported options are refused by name."""
    if model_config.architecture != "cnn":
        raise ValueError(f"ModelConfig.architecture={model_config.architecture!r} is not available; use 'cnn' (the U-Net)")
    for flag in UNSUPPORTED_FLAGS:
        if getattr(model_config, flag):
            raise ValueError(f"ModelConfig.{flag}=True is not implemented by the 'cnn' generator; set it to False")
    return UNetGenerator(
        C,
        model_config.n_filters_scale,
        base_filters=model_config.base_filters,
        in_channels=in_channels,
        batch_norm=model_config.batch_norm,
        cbam_encoder=model_config.cbam_encoder,
        cbam_bottleneck=model_config.cbam_bottleneck,
        cbam_decoder=model_config.cbam_decoder,
        use_shared_decoder=model_config.use_shared_decoder,
        amp_activation=model_config.amp_activation,
    )
