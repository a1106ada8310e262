"""PtychoPINN as a LightningModule: a U-Net that refines a physics input, trained through the ptychographic forward model."""

from __future__ import annotations

import io
import logging
from dataclasses import replace
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from ptycho_torch.model import checkpoints, physics
from ptycho_torch.model.input_cache import InputCache, batch_rows, byte_budget, default_budget
from ptycho_torch.config_file import as_config
from ptycho_torch.config_resolve import require_supported
from ptycho_torch.model.pinn import PtychoPINN

logger = logging.getLogger(__name__)

__all__ = ["PtychoPINN_Lightning", "as_config"]

LOSS_KINDS = {"Poisson": "poisson", "MAE": "mae"}
LIGHTNING_VERSION_KEY = "pytorch-lightning_version"  # Lightning's loader needs it; weights-only exports (ptycho_torch.pretrained) lack it
SCHEDULERS = ("Default", "WarmupCosine", "Exponential")  # the names the data pipeline's config accepts too


class PtychoPINN_Lightning(L.LightningModule):
    """Trains a :class:`~ptycho_torch.model.pinn.PtychoPINN` (``.network``) through the physics: loss, optimizer, logging.

    By default the network reads the group's object after ``object_estimate_steps`` (2)
    error-reduction steps and outputs a multiplicative correction of it (specs/model.md sections 5
    and 6). ``Unsupervised``: patches -> (``object_big``: probe-weighted merge of the group onto one
    region and extraction back) -> ``kappa * sum_modes |FFT(P * O)|^2`` compared with the measured
    counts by the Poisson NLL (``loss_function='Poisson'``) or the amplitude MAE, plus
    ``truth_loss_weight`` times :func:`physics.phase_invariant_error` against ground truth ``Y`` when
    that weight is positive. ``Supervised``: L1 of the complex patches against ``Y``.

    Input: ``PtychoDataset`` batches ``(batch, probe, scale)`` (specs/data_contracts.md section 6):
    ``images (B, C, N, N)`` float32 normalised amplitudes, ``coords_relative (B, C, 1, 2)`` object
    pixels, ``probe (B, C, P, N, N)`` complex64, ``scale (B, 1, 1, 1)``; ``C = grid_size[0] *
    grid_size[1]``. Output of :meth:`forward` (the network's prediction): ``(B, C, N, N)`` complex object patches
    (dimensionless transmission; the absolute phase is arbitrary). Logged losses, per pixel:
    ``<kind>_train_loss``, ``<kind>_val_loss`` and ``val_loss``, ``<kind>`` being ``poisson``,
    ``mae`` or ``supervised``. Inference needs only ``.network``; :func:`checkpoints.load_network`
    reads a checkpoint into it without Lightning.

    Args:
        model_config, data_config, training_config, inference_config: the torch configs, as
            dataclasses or dicts (checkpoint hyper-parameters); saved in checkpoints as plain dicts.
        seed: seed of the network initialisation (the global RNG is left alone).

    During ``fit`` on the CPU each group's physics input (a function of its data alone) is computed once and kept for
    the later epochs (:mod:`~ptycho_torch.model.input_cache`, addressed by a digest of the group's data), up to
    :attr:`input_cache_bytes` (2 GiB, or an eighth of the machine's memory if less; 0 recomputes it in every batch); the
    groups beyond it are recomputed. The weights are the same bits either way.

    Refused (ValueError naming the field): ``mode`` other than ``'Unsupervised'``/``'Supervised'``,
    ``loss_function`` other than ``'Poisson'``/``'MAE'``, an unknown ``scheduler``, and what
    :class:`PtychoPINN` refuses. Training without ``Y`` in the batch is a KeyError when the loss
    needs it. :meth:`load_from_checkpoint` reads with ``weights_only=True`` only.
    """

    def __init__(self, model_config=None, data_config=None, training_config=None, inference_config=None, seed: int = 0):
        super().__init__()
        self.network = PtychoPINN(model_config, data_config, training_config, inference_config, seed=seed)
        self._input_cache, self._input_cache_bytes = None, default_budget()
        self._check_supported()
        require_supported(self.model_config, self.training_config, self.inference_config, data=self.data_config)  # DataConfig: the dataset's check
        self.save_hyperparameters({**self.network.configs(), "seed": int(seed)})
        kind = "supervised" if self.model_config.mode == "Supervised" else LOSS_KINDS[self.model_config.loss_function]
        self.loss_name = f"{kind}_train_loss"
        self.val_loss_name = f"{kind}_val_loss"

    model_config = property(lambda self: self.network.model_config)
    data_config = property(lambda self: self.network.data_config)
    training_config = property(lambda self: self.network.training_config)
    inference_config = property(lambda self: self.network.inference_config)
    N = property(lambda self: self.network.N)
    C = property(lambda self: self.network.C)
    generator = property(lambda self: self.network.generator)
    log_gain = property(lambda self: self.network.log_gain)

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path, map_location=None, hparams_file=None, strict=None, weights_only=True, **kwargs):
        """Lightning's loader, always with ``weights_only=True`` (nothing is unpickled), after checking the file.

        An empty, truncated or foreign file, one without the configs of its network, or weights that do not fit
        that network (checked before it is built: :func:`~ptycho_torch.model.checkpoints.require_weights_fit`) raises
        :class:`~ptycho_torch.model.checkpoints.CheckpointError` naming it; keyword configs override the stored ones.
        Stored fields this version does not know (a checkpoint of another version) are dropped with a WARNING.
        A weights-only export (``state_dict`` and configs, as the shipped models of :mod:`ptycho_torch.pretrained`) loads too.
        """
        if weights_only is not True:
            raise ValueError("PtychoPINN checkpoints are loaded with weights_only=True only (nothing is unpickled)")
        if isinstance(checkpoint_path, (str, Path)):
            data = checkpoints.read_checkpoint_bytes(checkpoint_path)
            checkpoint = checkpoints.read_checkpoint(checkpoint_path, data, overrides=kwargs)
            stored = checkpoint.get("hyper_parameters")
            hparams = checkpoints.known_hyper_parameters(checkpoint_path, stored)
            configs = checkpoints.network_configs(checkpoint_path, hparams or {}, kwargs)
            checkpoints.require_weights_fit(checkpoint_path, configs, checkpoint["state_dict"], strict=strict is not False,
                                            overridden=any(kwargs.get(name) is not None for name in configs))
            if LIGHTNING_VERSION_KEY not in checkpoint or hparams is not stored:  # weights and configs only (a shipped model), or keys dropped
                checkpoint[LIGHTNING_VERSION_KEY] = checkpoint.get(LIGHTNING_VERSION_KEY, L.__version__)
                checkpoint["hyper_parameters"] = hparams
                data = io.BytesIO()
                torch.save(checkpoint, data)
                data = data.getvalue()
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
        """Older checkpoints: weights without the ``network.`` prefix, and settings they predate at their old behaviour."""
        state = checkpoint.get("state_dict")
        if isinstance(state, dict):
            checkpoint["state_dict"] = {f"{checkpoints.NETWORK_PREFIX}{key}": value for key, value in checkpoints.network_state(state).items()}
        stored = (checkpoint.get("hyper_parameters") or {}).get("model_config")
        changed = {name: old for name, old in checkpoints.upgrade_legacy_settings(stored).items() if getattr(self.model_config, name) != old}
        if not changed:
            return
        logger.info("checkpoint written before %s existed: loading it as %s", ", ".join(changed), changed)
        self.network.model_config = replace(self.model_config, **changed)
        self.hparams["model_config"].update(changed)
        if "generator_input" in changed or "base_filters" in changed:  # the number of input channels or the widths change
            self.network.generator = self.network.new_generator()

    def _check_supported(self) -> None:
        mc = self.model_config
        if mc.mode not in ("Unsupervised", "Supervised"):
            raise ValueError(f"ModelConfig.mode={mc.mode!r}; use 'Unsupervised' or 'Supervised'")
        if mc.loss_function not in LOSS_KINDS:
            raise ValueError(f"ModelConfig.loss_function={mc.loss_function!r}; use 'Poisson' or 'MAE'")
        if self.training_config.scheduler not in SCHEDULERS:
            raise ValueError(f"TrainingConfig.scheduler={self.training_config.scheduler!r}; use one of {SCHEDULERS}")

    # ---- prediction: the network's ----------------------------------------------------------

    def forward(self, batch, probe, scale) -> torch.Tensor:
        """The predicted object patches ``(B, C, N, N)`` of a dataset batch (``network.predict_patches``)."""
        return self.network(batch, probe, scale)

    # ---- training ---------------------------------------------------------------------------

    @property
    def input_cache_bytes(self) -> int:
        """Bytes of physics inputs a fit keeps across its epochs (by default 2 GiB or an eighth of the machine's memory, whichever
        is less; 0: recomputed in every batch); set before ``fit``."""
        return self._input_cache_bytes

    @input_cache_bytes.setter
    def input_cache_bytes(self, value) -> None:
        self._input_cache_bytes = byte_budget(value)

    def on_fit_start(self) -> None:
        keeps = self.input_cache_bytes > 0 and self.model_config.generator_input == "object_estimate"
        self._input_cache = InputCache(self.input_cache_bytes) if keeps else None

    def on_fit_end(self) -> None:
        if self._input_cache is not None and self._input_cache.rows:
            logger.info("%s", self._input_cache.summary())
        self._input_cache = None

    def configure_callbacks(self):
        return [_ReleaseInputCache()]

    def loss_of(self, batch) -> torch.Tensor:
        td, probe, scale = batch
        scale = scale.reshape(-1)
        measurement = self.network.measurement(td, probe, scale)
        windows = self.network.group_windows(td)
        inputs = self._generator_input(td, probe, scale, measurement, windows)
        patches = self.network.predict_patches(td, probe, scale, measurement=measurement, inputs=inputs, windows=windows)
        if self.model_config.mode == "Supervised":
            if "Y" not in td.keys():
                raise KeyError("Supervised training needs ground-truth patches 'Y': build the PtychoDataset with ground_truth=True from a scan with objectGuess or Y")
            return (patches - td["Y"]).abs().mean()
        counts = physics.counts_from_amplitudes(td["images"], scale)
        predicted = measurement.counts(patches, self.network.count_gain())
        if self.model_config.loss_function == "Poisson":
            loss = physics.poisson_nll(predicted, counts).mean()
        else:
            loss = physics.mae_amplitude_loss(predicted, counts).mean()
        weight = float(self.model_config.truth_loss_weight)
        if weight > 0:
            if "Y" not in td.keys():
                raise KeyError("ModelConfig.truth_loss_weight > 0 needs ground-truth patches 'Y': build the PtychoDataset with ground_truth=True from scans with objectGuess or Y, or set truth_loss_weight=0")
            loss = loss + weight * physics.phase_invariant_error(patches, td["Y"], measurement.weights).mean()
        return loss

    def _generator_input(self, td, probe, scale, measurement, windows) -> torch.Tensor | None:
        """The batch's generator input, its cached groups read and the others computed (and kept); None outside a fit's cache."""
        cache = self._input_cache
        if cache is not None and not self._fitting():
            self._input_cache = cache = None  # left by a fit that raised: never read outside one
        keys = cache.keys_of(td, probe, scale) if cache is not None else None
        if keys is None:
            return None
        rows = cache.lookup(keys)
        missing = [i for i, row in enumerate(rows) if row is None]
        device = td["images"].device
        if not missing:
            return torch.stack(rows).to(device)
        if len(missing) == len(keys):
            inputs = self.network.generator_input(td, probe, scale, measurement=measurement, windows=windows)
            cache.put(keys, inputs)
            return inputs
        index = torch.tensor(missing, device=device)
        computed = self.network.generator_input(batch_rows(td, index), batch_rows(probe, index), scale[index])
        cache.put([keys[i] for i in missing], computed)
        inputs = torch.stack([computed.new_empty(computed.shape[1:]) if row is None else row.to(device) for row in rows])
        inputs[index] = computed
        return inputs

    def _fitting(self) -> bool:
        trainer = self._trainer
        return trainer is not None and trainer.state.fn == "fit"

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


class _ReleaseInputCache(Callback):
    """Drops the fit's physics inputs when the fit raises or is interrupted (Lightning then skips ``on_fit_end`` and ``teardown``)."""

    def on_exception(self, trainer, pl_module, exception) -> None:
        pl_module._input_cache = None
