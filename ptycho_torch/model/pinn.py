"""PtychoPINN as a plain torch module: physics input, U-Net correction and group merge; inference needs no Lightning."""

from __future__ import annotations

import math
import numbers
from dataclasses import asdict

import torch

from ptycho_torch.config_file import as_config
from ptycho_torch.config_params import DataConfig, InferenceConfig, ModelConfig, TrainingConfig
from ptycho_torch.config_resolve import grid_side
from ptycho_torch.model import physics
from ptycho_torch.model.forward_model import FarFieldPtychography
from ptycho_torch.model.networks import build_generator

__all__ = ["CONFIG_NAMES", "choose_precision", "GENERATOR_OUTPUTS", "INPUT_IMAGES_PER_MEMBER", "MAX_OBJECT_ESTIMATE_STEPS", "PRECISIONS", "PtychoPINN", "plain_config"]

PRECISIONS = ("fp32", "bf16")

INPUT_IMAGES_PER_MEMBER = {"object_estimate": 2, "diffraction": 1}  # real and imaginary part / amplitude
MAX_OBJECT_ESTIMATE_STEPS = 100  # default 2, 40 the documented hybrid (docs/findings.md); each step is an FFT pair per pattern
GENERATOR_OUTPUTS = ("correction", "object")
FLOAT32_WORDS_PER_TRAINED_WEIGHT = 4  # the weight, its gradient and Adam's two moments
CONFIG_NAMES = ("model_config", "data_config", "training_config", "inference_config")


def choose_precision(requested: str, device) -> str:
    """The U-Net's arithmetic: ``'auto'`` is bfloat16 where the device computes it natively (a CPU with
    AVX512-BF16 or AMX, a CUDA device that supports it), else float32; ``'fp32'``/``'bf16'`` as asked."""
    if requested in PRECISIONS:
        return requested
    if requested != "auto":
        raise ValueError(f"precision {requested!r}; use auto, {' or '.join(PRECISIONS)}")
    device = torch.device(device)
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    native = getattr(getattr(torch.ops, "mkldnn", None), "_is_mkldnn_bf16_supported", None)
    return "bf16" if device.type == "cpu" and native is not None and native() else "fp32"


def plain_config(config) -> dict:
    """A dataclass as a dict of plain values that ``torch.load(weights_only=True)`` accepts."""
    out = asdict(config)
    mask = out.get("probe_mask")
    if mask is not None and not isinstance(mask, (bool, torch.Tensor)):
        out["probe_mask"] = torch.as_tensor(mask)  # e.g. a NumPy array
    return out


class PtychoPINN(torch.nn.Module):
    """A group's object patches from its diffraction in one pass (specs/model.md sections 3 to 6).

    ``forward(batch, probe, scale)`` returns the prediction, :meth:`predict_patches`. The configs are
    kept as given (dataclasses or checkpoint dicts); ``seed`` seeds the initialisation without
    touching the global RNG. Refused (ValueError naming the field): an unknown ``generator_input`` or
    ``generator_output``, ``generator_output='correction'`` with ``generator_input='diffraction'``,
    ``object_estimate_steps`` not an integer from 1 to ``MAX_OBJECT_ESTIMATE_STEPS`` (100), a
    non-square ``grid_size``, ``N`` not divisible by 8 and generator options the U-Net does not implement.
    """

    def __init__(self, model_config=None, data_config=None, training_config=None, inference_config=None, seed: int = 0):
        super().__init__()
        self.model_config = as_config(model_config, ModelConfig)
        self.data_config = as_config(data_config, DataConfig)
        self.training_config = as_config(training_config, TrainingConfig)
        self.inference_config = as_config(inference_config, InferenceConfig)
        self.seed = int(seed)
        self._check_supported()
        self.N = int(self.data_config.N)
        self.C = int(self.data_config.grid_size[0]) * int(self.data_config.grid_size[1])
        self.precision = "fp32"  # or "bf16": the U-Net's arithmetic (choose_precision), a run-time choice, not a setting of the model
        self.generator = self.new_generator()
        self.log_gain = torch.nn.Parameter(torch.zeros(()), requires_grad=bool(self.model_config.intensity_scale_trainable))

    def new_generator(self) -> torch.nn.Module:
        """The generator of the current ``model_config``, initialised from ``seed`` (the global RNG is left alone).

        Refused (ValueError) before any memory is taken: widths whose weights, with their gradients and Adam's two
        moments, would need more than half of this machine's memory (shapes counted on the ``meta`` device)."""
        self._check_generator_size()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            generator = build_generator(self.model_config, self.C, in_channels=self.C * INPUT_IMAGES_PER_MEMBER[self.model_config.generator_input])
        return generator.to(memory_format=torch.channels_last)  # measured faster on CPU (docs/performance.md)

    def _check_generator_size(self) -> None:
        from ptycho_torch.model.footprint import memory_bytes

        if torch.get_default_device().type == "meta":
            return  # shapes only (checkpoints.require_weights_fit compares them with the weights): nothing is allocated

        in_channels = self.C * INPUT_IMAGES_PER_MEMBER[self.model_config.generator_input]
        with torch.device("meta"):
            parameters = sum(p.numel() for p in build_generator(self.model_config, self.C, in_channels=in_channels).parameters())
        needed, memory = parameters * 4 * FLOAT32_WORDS_PER_TRAINED_WEIGHT, memory_bytes()  # bytes
        if needed > memory // 2:
            mc = self.model_config
            raise ValueError(f"ModelConfig.n_filters_scale={mc.n_filters_scale!r} with base_filters={mc.base_filters!r}: the U-Net would hold "
                             f"{parameters:,} weights ({needed / 2**30:.1f} GiB with their gradients and Adam's moments), more than half "
                             f"of this machine's memory ({memory / 2**30:.1f} GiB); lower n_filters_scale or base_filters")

    def configs(self) -> dict:
        """The four configs as plain dicts (what a checkpoint stores)."""
        return {name: plain_config(getattr(self, name)) for name in CONFIG_NAMES}

    def _check_supported(self) -> None:
        mc = self.model_config
        grid_side(self.data_config.grid_size)
        if mc.generator_input not in INPUT_IMAGES_PER_MEMBER:
            raise ValueError(f"ModelConfig.generator_input={mc.generator_input!r}; use one of {sorted(INPUT_IMAGES_PER_MEMBER)}")
        steps = mc.object_estimate_steps
        if mc.generator_input == "object_estimate" and not (isinstance(steps, numbers.Real) and not isinstance(steps, bool) and math.isfinite(steps)
                                                            and int(steps) == steps and 1 <= steps <= MAX_OBJECT_ESTIMATE_STEPS):
            raise ValueError(f"ModelConfig.object_estimate_steps={steps!r} must be an integer from 1 to {MAX_OBJECT_ESTIMATE_STEPS} "
                             "(the default is 2; or set generator_input='diffraction')")
        if mc.generator_output not in GENERATOR_OUTPUTS:
            raise ValueError(f"ModelConfig.generator_output={mc.generator_output!r}; use one of {GENERATOR_OUTPUTS}")
        if mc.generator_output == "correction" and mc.generator_input != "object_estimate":
            raise ValueError("ModelConfig.generator_output='correction' corrects the object estimate; with generator_input='diffraction' use generator_output='object'")
        if not (isinstance(mc.truth_loss_weight, (int, float)) and math.isfinite(mc.truth_loss_weight) and mc.truth_loss_weight >= 0):
            raise ValueError(f"ModelConfig.truth_loss_weight={mc.truth_loss_weight!r} must be a finite number >= 0 (0: physics loss only)")
        if self.data_config.N % 8:
            raise ValueError(f"DataConfig.N={self.data_config.N}: the U-Net needs N divisible by 8")

    # ---- prediction -------------------------------------------------------------------------

    def forward(self, batch, probe, scale) -> torch.Tensor:
        """The predicted object patches ``(B, C, N, N)`` complex of a dataset batch (:meth:`predict_patches`)."""
        return self.predict_patches(batch, probe, scale)

    def measurement(self, batch, probe, scale) -> FarFieldPtychography:
        """The forward model of a dataset batch (probe at unit peak, the experiment's count scale), built once per batch."""
        return FarFieldPtychography.of_batch(probe, scale, batch)

    def generator_output(self, inputs: torch.Tensor) -> torch.Tensor:
        """Raw generator output ``(B, C, N, N)`` complex from :meth:`generator_input` images: the object
        patches (``generator_output='object'``) or the factor that corrects the estimate (``'correction'``).

        The convolutions run channels-last, and in bfloat16 when :attr:`precision` is ``'bf16'``; the
        1x1 heads and everything after them stay float32.
        """
        inputs = inputs.contiguous(memory_format=torch.channels_last)
        if self.precision == "bf16" and hasattr(self.generator, "features"):
            with torch.autocast(inputs.device.type, dtype=torch.bfloat16):
                features = self.generator.features(inputs)
            amplitude, phase = self.generator.heads(*(f.float() for f in features))
        else:
            amplitude, phase = self.generator(inputs)
        return torch.polar(amplitude.float(), phase.float())

    def generator_input(self, batch, probe, scale, *, measurement: FarFieldPtychography | None = None, windows=None) -> torch.Tensor:
        """What the generator sees, ``(B, k C, N, N)``: the real and imaginary part of ``object_estimate - 1``
        (``ModelConfig.generator_input='object_estimate'``), or the normalised amplitudes (``'diffraction'``).

        ``measurement`` and ``windows`` (:meth:`group_windows`): the batch's, when the caller built them.
        """
        images = batch["images"]
        if self.model_config.generator_input == "diffraction":
            return images
        measurement = measurement or self.measurement(batch, probe, scale)
        with torch.no_grad():  # a function of the data alone
            counts = physics.counts_from_amplitudes(images, scale)
            coords = batch["coords_relative"].to(images.dtype)
            if windows is not None and windows.fx.dtype != coords.dtype:
                windows = None
            estimate = measurement.physics_input(counts, coords, int(self.model_config.object_estimate_steps), windows=windows) - 1
        return torch.cat([estimate.real, estimate.imag], dim=1).to(images.dtype)

    def predict_patches(self, batch, probe, scale, *, use_network: bool = True,
                        measurement: FarFieldPtychography | None = None, inputs: torch.Tensor | None = None,
                        windows=None) -> torch.Tensor:
        """Complex object patches ``(B, C, N, N)`` of a dataset batch, group-consistent under ``object_big``.

        ``use_network=False`` returns the physics input alone (the object estimate, merged the same
        way): what the pipeline gives without the network. ``measurement``, ``inputs`` (:meth:`generator_input`)
        and ``windows`` (:meth:`group_windows`): the batch's, when the caller already has them.
        """
        scale = scale.reshape(-1)
        measurement = measurement or self.measurement(batch, probe, scale)
        if windows is None:
            windows = self.group_windows(batch)  # built once per batch for the physics input and the group merge
        if inputs is None:
            inputs = self.generator_input(batch, probe, scale, measurement=measurement, windows=windows)
        if not use_network:
            if self.model_config.generator_input != "object_estimate":
                raise ValueError("use_network=False needs generator_input='object_estimate': the diffraction alone is no object")
            patches = self._estimate_from(inputs)
        elif self.model_config.generator_output == "correction":
            patches = self._estimate_from(inputs) * self.generator_output(inputs)
        else:
            patches = self.generator_output(inputs)
        if self.model_config.object_big and self.C > 1:
            coords = batch["coords_relative"].to(patches.real.dtype)
            if windows is None or windows.fx.dtype != coords.dtype:
                windows = physics.GroupWindows(coords, self.N, physics.region_size(self.N, coords))
            region, _ = physics.merge_group(patches, measurement.weights.to(patches.real.dtype), coords, windows.M, windows=windows)
            patches = windows.extract(region)  # physics.extract_from_region(region, coords, N) with these windows
        return patches

    def group_windows(self, batch):
        """The batch's ``physics.GroupWindows`` on regions of ``physics.region_size``, in the images' dtype, when the
        physics input or the group merge uses them; else None."""
        estimate = self.model_config.generator_input == "object_estimate"
        if not (estimate or (self.model_config.object_big and self.C > 1)):
            return None
        coords = batch["coords_relative"].to(batch["images"].dtype if estimate else torch.float32)
        return physics.GroupWindows(coords, self.N, physics.region_size(self.N, coords))

    def _estimate_from(self, inputs: torch.Tensor) -> torch.Tensor:
        """The complex object estimate ``(B, C, N, N)`` that :meth:`generator_input` encoded as ``[Re(O - 1), Im(O - 1)]``."""
        return torch.complex(inputs[:, : self.C], inputs[:, self.C : 2 * self.C]) + 1

    def count_gain(self) -> torch.Tensor:
        """The learnt count gain ``exp(2 log_gain)`` (1 unless ``ModelConfig.intensity_scale_trainable``)."""
        return torch.exp(2 * self.log_gain)

    def predicted_counts(self, patches: torch.Tensor, probe: torch.Tensor, scale: torch.Tensor, batch=None) -> torch.Tensor:
        """Expected photon counts ``(B, C, N, N)`` of object patches under the batch's probe and count scale
        (:meth:`measurement`; without ``batch``, ``scale`` is taken as the experiment's), times :meth:`count_gain`."""
        return self.measurement(batch, probe, scale).counts(patches, self.count_gain())
