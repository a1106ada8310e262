"""PtychoPINN as a LightningModule: a U-Net that refines a physics input, trained through the ptychographic forward model."""

from __future__ import annotations

import io
import logging
import math
from dataclasses import asdict, replace
from pathlib import Path

import lightning as L
import torch

from ptycho_torch.model import checkpoints, physics
from ptycho_torch.config_coerce import as_config
from ptycho_torch.config_bridge import lr_schedule
from ptycho_torch.config_params import DataConfig, InferenceConfig, ModelConfig, TrainingConfig
from ptycho_torch.config_support import require_supported
from ptycho_torch.model.networks import build_generator

logger = logging.getLogger(__name__)

__all__ = ["PtychoPINN_Lightning", "as_config"]

LOSS_KINDS = {"Poisson": "poisson", "MAE": "mae"}
INPUT_IMAGES_PER_MEMBER = {"object_estimate": 2, "diffraction": 1}  # real and imaginary part / amplitude
GENERATOR_OUTPUTS = ("correction", "object")
SCHEDULERS = ("Default", "WarmupCosine", "Exponential")  # the names the data pipeline's config accepts too
# What a checkpoint written before a ModelConfig field existed was trained with (checked in this order).
SETTINGS_BEFORE_THEY_EXISTED = (("generator_input", "diffraction"), ("generator_output", "object"), ("base_filters", 32))


def _plain(config) -> dict:
    """A dataclass as a dict of plain values that ``torch.load(weights_only=True)`` accepts."""
    out = asdict(config)
    mask = out.get("probe_mask")
    if mask is not None and not isinstance(mask, (bool, torch.Tensor)):
        out["probe_mask"] = torch.as_tensor(mask)  # e.g. a NumPy array
    return out


class PtychoPINN_Lightning(L.LightningModule):
    """Predicts the object patches of a group from its diffraction in one pass and trains them through the physics.

    By default the generator reads the group's object after ``object_estimate_steps`` (2)
    error-reduction steps and outputs a multiplicative correction of it (specs/model.md sections 5
    and 6). ``Unsupervised``: patches -> (``object_big``: probe-weighted merge of the group onto one
    region and extraction back) -> ``kappa * sum_modes |FFT(P * O)|^2`` compared with the measured
    counts by the Poisson NLL (``loss_function='Poisson'``) or the amplitude MAE, plus
    ``truth_loss_weight`` times :func:`physics.phase_invariant_error` against ground truth ``Y`` when
    that weight is positive. ``Supervised``: L1 of the complex patches against ``Y``.

    Input: ``PtychoDataset`` batches ``(batch, probe, scale)`` (specs/data_contracts.md section 6):
    ``images (B, C, N, N)`` float32 normalised amplitudes, ``coords_relative (B, C, 1, 2)`` object
    pixels, ``probe (B, C, P, N, N)`` complex64, ``scale (B, 1, 1, 1)``; ``C = grid_size[0] *
    grid_size[1]``. Output of :meth:`predict_patches`: ``(B, C, N, N)`` complex object patches
    (dimensionless transmission; the absolute phase is arbitrary). Logged losses, per pixel:
    ``<kind>_train_loss``, ``<kind>_val_loss`` and ``val_loss``, ``<kind>`` being ``poisson``,
    ``mae`` or ``supervised``.

    Args:
        model_config, data_config, training_config, inference_config: the torch configs, as
            dataclasses or dicts (checkpoint hyper-parameters); saved in checkpoints as plain dicts.
        seed: seed of the network initialisation (the global RNG is left alone).

    Refused (ValueError naming the field): ``mode`` other than ``'Unsupervised'``/``'Supervised'``,
    ``loss_function`` other than ``'Poisson'``/``'MAE'``, an unknown ``scheduler``,
    ``generator_input`` or ``generator_output``, ``generator_output='correction'`` with
    ``generator_input='diffraction'``, ``object_estimate_steps`` < 1, a negative or non-finite
    ``truth_loss_weight``, a non-square ``grid_size``, ``N`` not divisible by 8, and generator options
    the U-Net does not implement. Training without ``Y`` in the batch is a KeyError when the loss
    needs it. :meth:`load_from_checkpoint` reads with ``weights_only=True`` only.
    """

    def __init__(self, model_config=None, data_config=None, training_config=None, inference_config=None, seed: int = 0):
        super().__init__()
        self.model_config = as_config(model_config, ModelConfig)
        self.data_config = as_config(data_config, DataConfig)
        self.training_config = as_config(training_config, TrainingConfig)
        self.inference_config = as_config(inference_config, InferenceConfig)
        self._check_supported()
        require_supported(self.model_config, self.training_config, self.inference_config, data=self.data_config)  # DataConfig: the dataset's check
        self.save_hyperparameters({
            "model_config": _plain(self.model_config),
            "data_config": _plain(self.data_config),
            "training_config": _plain(self.training_config),
            "inference_config": _plain(self.inference_config),
            "seed": int(seed),
        })
        self.N = int(self.data_config.N)
        self.C = int(self.data_config.grid_size[0]) * int(self.data_config.grid_size[1])
        self.generator = self._new_generator(int(seed))
        self.log_gain = torch.nn.Parameter(torch.zeros(()), requires_grad=bool(self.model_config.intensity_scale_trainable))
        kind = "supervised" if self.model_config.mode == "Supervised" else LOSS_KINDS[self.model_config.loss_function]
        self.loss_name = f"{kind}_train_loss"
        self.val_loss_name = f"{kind}_val_loss"

    def _new_generator(self, seed: int) -> torch.nn.Module:
        with torch.random.fork_rng(devices=[]):  # seeded initialisation without touching the global RNG
            torch.manual_seed(seed)
            return build_generator(self.model_config, self.C, in_channels=self.C * INPUT_IMAGES_PER_MEMBER[self.model_config.generator_input])

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path, map_location=None, hparams_file=None, strict=None, weights_only=True, **kwargs):
        """Lightning's loader, always with ``weights_only=True`` (nothing is unpickled), after checking the file.

        An empty, truncated or foreign file, or one without the configs of its network, raises
        :class:`~ptycho_torch.model.checkpoints.CheckpointError` naming it; keyword configs override the stored ones.
        """
        if weights_only is not True:
            raise ValueError("PtychoPINN checkpoints are loaded with weights_only=True only (nothing is unpickled)")
        if isinstance(checkpoint_path, (str, Path)):
            data = checkpoints.read_checkpoint_bytes(checkpoint_path)
            checkpoints.read_checkpoint(checkpoint_path, data, overrides=kwargs)
            source = io.BytesIO(data)
        else:
            source = checkpoint_path
        try:
            return super().load_from_checkpoint(source, map_location=map_location, hparams_file=hparams_file, strict=strict,
                                                weights_only=True, **kwargs)
        except RuntimeError as exc:
            if "state_dict" not in str(exc):
                raise
            raise checkpoints.CheckpointError(
                f"checkpoint {checkpoint_path}: its weights do not fit the network of its configs ({str(exc).splitlines()[0]}); "
                "load it without overriding model_config/data_config, or train a model with these settings"
            ) from None

    def on_load_checkpoint(self, checkpoint) -> None:
        """A checkpoint written before a setting existed was trained as that setting's old behaviour.

        Before ``generator_input`` the network read the diffraction; before ``generator_output`` it
        output the object itself; before ``base_filters`` its first width was 32 per ``n_filters_scale``.
        """
        stored = (checkpoint.get("hyper_parameters") or {}).get("model_config") or {}
        if not isinstance(stored, dict):
            return
        changed = {name: old for name, old in SETTINGS_BEFORE_THEY_EXISTED if name not in stored and getattr(self.model_config, name) != old}
        if not changed:
            return
        logger.info("checkpoint written before %s existed: loading it as %s", ", ".join(changed), changed)
        rebuild = "generator_input" in changed or "base_filters" in changed
        self.model_config = replace(self.model_config, **changed)
        self.hparams["model_config"].update(changed)
        if rebuild:  # the number of input channels or the widths change
            self.generator = self._new_generator(int(self.hparams.get("seed", 0)))

    def _check_supported(self) -> None:
        mc = self.model_config
        if mc.mode not in ("Unsupervised", "Supervised"):
            raise ValueError(f"ModelConfig.mode={mc.mode!r}; use 'Unsupervised' or 'Supervised'")
        if mc.loss_function not in LOSS_KINDS:
            raise ValueError(f"ModelConfig.loss_function={mc.loss_function!r}; use 'Poisson' or 'MAE'")
        if self.training_config.scheduler not in SCHEDULERS:
            raise ValueError(f"TrainingConfig.scheduler={self.training_config.scheduler!r}; use one of {SCHEDULERS}")
        gy, gx = self.data_config.grid_size
        if gy != gx:
            raise ValueError(f"DataConfig.grid_size={tuple(self.data_config.grid_size)} must be square, e.g. (2, 2)")
        if mc.generator_input not in INPUT_IMAGES_PER_MEMBER:
            raise ValueError(f"ModelConfig.generator_input={mc.generator_input!r}; use one of {sorted(INPUT_IMAGES_PER_MEMBER)}")
        if mc.generator_input == "object_estimate" and (int(mc.object_estimate_steps) != mc.object_estimate_steps or mc.object_estimate_steps < 1):
            raise ValueError(f"ModelConfig.object_estimate_steps={mc.object_estimate_steps!r} must be an integer >= 1 (or set generator_input='diffraction')")
        if mc.generator_output not in GENERATOR_OUTPUTS:
            raise ValueError(f"ModelConfig.generator_output={mc.generator_output!r}; use one of {GENERATOR_OUTPUTS}")
        if mc.generator_output == "correction" and mc.generator_input != "object_estimate":
            raise ValueError("ModelConfig.generator_output='correction' corrects the object estimate; with generator_input='diffraction' use generator_output='object'")
        if not (isinstance(mc.truth_loss_weight, (int, float)) and math.isfinite(mc.truth_loss_weight) and mc.truth_loss_weight >= 0):
            raise ValueError(f"ModelConfig.truth_loss_weight={mc.truth_loss_weight!r} must be a finite number >= 0 (0: physics loss only)")
        if self.data_config.N % 8:
            raise ValueError(f"DataConfig.N={self.data_config.N}: the U-Net needs N divisible by 8")

    # ---- prediction -------------------------------------------------------------------------

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """Raw generator output ``(B, C, N, N)`` complex from :meth:`generator_input` images: the object
        patches (``generator_output='object'``) or the factor that corrects the estimate (``'correction'``)."""
        amplitude, phase = self.generator(inputs)
        return torch.polar(amplitude, phase)

    def generator_input(self, batch, probe, scale) -> torch.Tensor:
        """What the generator sees, ``(B, k C, N, N)``: the real and imaginary part of ``object_estimate - 1``
        (``ModelConfig.generator_input='object_estimate'``), or the normalised amplitudes (``'diffraction'``)."""
        images = batch["images"]
        if self.model_config.generator_input == "diffraction":
            return images
        probe = physics.unit_peak(physics.as_probe_modes(probe))
        with torch.no_grad():  # a function of the data alone
            counts = physics.counts_from_amplitudes(images, scale)
            modulus = physics.measured_modulus(counts, self.count_scale(batch, probe, scale))
            coords = batch["coords_relative"].to(images.dtype)
            estimate = physics.object_estimate(modulus, probe, coords, int(self.model_config.object_estimate_steps)) - 1
        return torch.cat([estimate.real, estimate.imag], dim=1).to(images.dtype)

    def predict_patches(self, batch, probe, scale, *, use_network: bool = True) -> torch.Tensor:
        """Complex object patches ``(B, C, N, N)`` of a dataset batch, group-consistent under ``object_big``.

        ``use_network=False`` returns the physics input alone (the object estimate, merged the same
        way): what the pipeline gives without the network.
        """
        probe = physics.unit_peak(physics.as_probe_modes(probe))  # |P|^2 stays in range whatever the file's scale
        inputs = self.generator_input(batch, probe, scale.reshape(-1))
        if not use_network:
            if self.model_config.generator_input != "object_estimate":
                raise ValueError("use_network=False needs generator_input='object_estimate': the diffraction alone is no object")
            patches = self._estimate_from(inputs)
        elif self.model_config.generator_output == "correction":
            patches = self._estimate_from(inputs) * self(inputs)
        else:
            patches = self(inputs)
        if self.model_config.object_big and self.C > 1:
            coords = batch["coords_relative"].to(patches.real.dtype)
            M = physics.region_size(self.N, coords)
            region, _ = physics.merge_group(patches, physics.probe_weight(probe).to(patches.real.dtype), coords, M)
            patches = physics.extract_from_region(region, coords, self.N)
        return patches

    def _estimate_from(self, inputs: torch.Tensor) -> torch.Tensor:
        """The complex object estimate ``(B, C, N, N)`` that :meth:`generator_input` encoded as ``[Re(O - 1), Im(O - 1)]``."""
        return torch.complex(inputs[:, : self.C], inputs[:, self.C : 2 * self.C]) + 1

    def predicted_counts(self, patches: torch.Tensor, probe: torch.Tensor, scale: torch.Tensor, batch=None) -> torch.Tensor:
        """Expected photon counts ``(B, C, N, N)`` of object patches under the batch's probe and count scale.

        ``batch`` (the TensorDict) supplies the experiment's count scale (:meth:`count_scale`); without
        it, ``scale`` is taken as the experiment's.
        """
        probe = physics.unit_peak(physics.as_probe_modes(probe))  # kappa * |F(P O)|^2 does not depend on P's scale
        kappa = self.count_scale(batch, probe, scale) * torch.exp(2 * self.log_gain)
        return kappa[:, None, None, None] * physics.far_field_intensity(patches, probe)

    def count_scale(self, batch, probe: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """``kappa (B,)`` of each item's experiment (specs/model.md section 3).

        It comes from the experiment's mean counts per pattern, ``1 / physics_scaling_constant``,
        not from ``scale``, which under ``DataConfig.normalize='Group'`` is each group's own: a group
        in a dark part of the object must predict a dark object, not one of unit mean transmission.
        A batch without ``physics_scaling_constant`` (or ``batch=None``) uses ``scale``.
        """
        scale = scale.reshape(-1)
        if batch is not None and "physics_scaling_constant" in batch.keys():
            mean_counts = 1 / batch["physics_scaling_constant"].reshape(-1).to(torch.float64)
            scale = ((self.N / 2) / torch.sqrt(mean_counts)).to(scale.dtype)  # the scale of normalize='Batch'
        return physics.count_scale(scale, probe, self.N)

    # ---- training ---------------------------------------------------------------------------

    def loss_of(self, batch) -> torch.Tensor:
        td, probe, scale = batch
        scale = scale.reshape(-1)
        patches = self.predict_patches(td, probe, scale)
        if self.model_config.mode == "Supervised":
            if "Y" not in td.keys():
                raise KeyError("Supervised training needs ground-truth patches 'Y': build the PtychoDataset with ground_truth=True from a scan with objectGuess or Y")
            return (patches - td["Y"]).abs().mean()
        counts = physics.counts_from_amplitudes(td["images"], scale)
        predicted = self.predicted_counts(patches, probe, scale, td)
        if self.model_config.loss_function == "Poisson":
            loss = physics.poisson_nll(predicted, counts).mean()
        else:
            loss = physics.mae_amplitude_loss(predicted, counts).mean()
        weight = float(self.model_config.truth_loss_weight)
        if weight > 0:
            if "Y" not in td.keys():
                raise KeyError("ModelConfig.truth_loss_weight > 0 needs ground-truth patches 'Y': build the PtychoDataset with ground_truth=True from scans with objectGuess or Y, or set truth_loss_weight=0")
            weights = physics.probe_weight(physics.unit_peak(physics.as_probe_modes(probe)))
            loss = loss + weight * physics.phase_invariant_error(patches, td["Y"], weights).mean()
        return loss

    def training_step(self, batch, batch_idx):
        loss = self.loss_of(batch)
        self.log(self.loss_name, loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(batch[0]), sync_dist=True)
        return loss

    def validation_step(self, batch, batch_idx):
        loss = self.loss_of(batch)
        self.log(self.val_loss_name, loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(batch[0]), sync_dist=True)
        self.log("val_loss", loss, on_step=False, on_epoch=True, batch_size=len(batch[0]), sync_dist=True)
        return loss

    def configure_optimizers(self):
        from ptycho_torch.model import optimizers  # the optimizer and scheduler the TrainingConfig names

        optimizer = optimizers.build_optimizer(self.parameters(), self.training_config)
        scheduler = optimizers.build_scheduler(optimizer, self.training_config)
        if scheduler is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}


def _warmup_cosine(epochs: int, warmup: int, min_ratio: float):
    """Learning-rate factor per epoch: linear warm-up, then cosine decay to ``min_ratio``."""

    def factor(epoch: int) -> float:
        if epoch < warmup:
            return (epoch + 1) / (warmup + 1)
        progress = (epoch - warmup) / max(1, epochs - warmup)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor
