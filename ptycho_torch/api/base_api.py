"""The API Ptychodus's PtychoPINN-Torch plugin drives: configs, data, model, trainer and inference engine."""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from ptycho_torch.api.configs import ConfigManager
from ptycho_torch.api.data import DataloaderFormats, PtychoDataLoader
from ptycho_torch.config_file import as_config
from ptycho_torch.config_params import DataConfig, InferenceConfig, ModelConfig, TrainingConfig

logger = logging.getLogger(__name__)

__all__ = [
    "ConfigManager",
    "DataloaderFormats",
    "INIT_ENV",
    "RECONSTRUCT_ENV",
    "InferenceEngine",
    "PtychoDataLoader",
    "PtychoModel",
    "Trainer",
    "load_model",
]

ORCHESTRATION = "lightning"
CPU_INFERENCE_BATCH = 128  # groups per inference batch on the CPU: a few hundred MB at N=64, C=4
INIT_ENV = "PTYCHOPINN_INIT"  # what training starts from: unset (the shipped model of the pattern size, if any), 'random', a name or a .ckpt
INIT_RANDOM = "random"
# how Reconstruct reconstructs: unset, the network's single pass; else ptycho-reconstruct's method options, e.g.
# '--start flat --refine 7 --object-network 5' (ptycho_torch.cli_reconstruct.METHOD_OPTIONS)
RECONSTRUCT_ENV = "PTYCHOPINN_RECONSTRUCT"
INFERENCE_PRECISION = "auto"  # Reconstruct's arithmetic, as ptycho-reconstruct's default: bf16 where the device computes it natively


class PtychoModel:
    """A network (``.model``, a ``PtychoPINN_Lightning``, or None before one is made or loaded) and its four configs.

    Each config may be given as its dataclass, a dict (e.g. checkpoint hyper-parameters) or None
    (defaults); a value of another type is a TypeError. ``_new_model`` builds a fresh network;
    ``_extract_configs_from_checkpoint`` reads a checkpoint's configs with ``weights_only=True`` on
    the CPU (a missing, empty, foreign or code-carrying file is a ``CheckpointError`` naming it).
    """

    def __init__(self, model_config=None, data_config=None, training_config=None, inference_config=None):
        self.model_config: ModelConfig = as_config(model_config, ModelConfig, unknown="drop")
        self.data_config: DataConfig = as_config(data_config, DataConfig, unknown="drop")
        self.training_config: TrainingConfig = as_config(training_config, TrainingConfig, unknown="drop")
        self.inference_config: InferenceConfig = as_config(inference_config, InferenceConfig, unknown="drop")
        self.model = None

    @classmethod
    def _new_model(cls, model, config_manager: ConfigManager, init: str | None = None) -> PtychoModel:
        """The network of class ``model`` that training starts from: fine-tuned from an initial model, else random.

        ``init`` (default: ``$PTYCHOPINN_INIT``): unset, the shipped model for ``data_config.N``
        (:mod:`ptycho_torch.pretrained`) when this installation has one for that pattern size and group
        size, else random weights (INFO); ``'random'``: random weights; a shipped model's name or a
        checkpoint path: that model (an unknown name, a missing file or another pattern or group size
        is an error naming it). When starting from a model its architecture replaces the configs' (a
        WARNING lists every architecture setting so replaced, and ``config_manager.model_config`` is
        updated); everything else (mode, loss, epochs, learning rate, ...) comes from ``config_manager``.
        """
        cm = config_manager
        if init is not None:
            initial = _initial_network(init, cm)
        else:
            requested = initial_model_setting()
            with _naming_init_env(requested):
                initial = _initial_network(requested, cm)
        if initial is not None:
            from ptycho_torch.model.fine_tuning import adopt_architecture

            cm.model_config, cm.data_config = adopt_architecture(initial, cm.model_config, cm.data_config)
        wrapped = cls(model_config=cm.model_config, data_config=cm.data_config, training_config=cm.training_config, inference_config=cm.inference_config)
        wrapped.model = model(cm.model_config, cm.data_config, cm.training_config, cm.inference_config)
        if initial is not None:
            from ptycho_torch.model.fine_tuning import start_from

            start_from(wrapped.model, initial)
        return wrapped

    @staticmethod
    def _extract_configs_from_checkpoint(path):
        """``(data, model, training, inference)`` configs stored in a checkpoint's hyper-parameters (None where absent).

        Read with ``weights_only=True`` on the CPU, so a GPU checkpoint opens anywhere and nothing is unpickled.
        """
        from ptycho_torch.model.checkpoints import known_hyper_parameters, read_checkpoint

        hparams = known_hyper_parameters(path, read_checkpoint(Path(path))["hyper_parameters"])  # unknown keys: one WARNING naming the file
        classes = (("data_config", DataConfig), ("model_config", ModelConfig), ("training_config", TrainingConfig), ("inference_config", InferenceConfig))
        return tuple(as_config(hparams[name], cls, unknown="drop") if hparams.get(name) is not None else None for name, cls in classes)


_INIT_FIX = (f"set {INIT_ENV} in the shell that starts Ptychodus to '{INIT_RANDOM}', a shipped model's name or a checkpoint file "
             "(.ckpt), or unset it to fine-tune the shipped model of the pattern size")


def initial_model_setting() -> str | None:
    """The initial model :data:`INIT_ENV` names (stripped; a leading ``~`` is the home directory, as for
    ``PTYCHOPINN_CACHE_DIR``), or None when it is unset or blank."""
    text = os.environ.get(INIT_ENV, "").strip()
    return (os.path.expanduser(text) if text.startswith("~") else text) or None


@contextmanager
def _naming_init_env(requested: str | None):
    """Re-raise an error about the initial model that :data:`INIT_ENV` named with the variable, its value and the fix first."""
    try:
        yield
    except (ValueError, OSError) as exc:
        if requested is None or INIT_ENV in str(exc):
            raise
        message = f"{INIT_ENV}={requested!r}: {exc}; {_INIT_FIX}"
        try:
            renamed = type(exc)(message)
        except TypeError:  # an exception class that takes other arguments
            renamed = ValueError(message)
        raise renamed from None


def check_initial_model_setting(N: int) -> None:
    """Refuse a :data:`INIT_ENV` that names no usable model (an unknown name, a missing or unreadable file, a model of
    another pattern size than ``N``), naming the variable, before any training data is read or any run directory is made."""
    from ptycho_torch.model.fine_tuning import load_initial_network

    requested = initial_model_setting()
    if requested is None or requested == INIT_RANDOM:
        return
    with _naming_init_env(requested):
        load_initial_network(requested, int(N))


def _initial_network(requested: str | None, config_manager: ConfigManager):
    """The plain network training starts from (see :meth:`PtychoModel._new_model`), or None for random weights."""
    from ptycho_torch import pretrained
    from ptycho_torch.model.fine_tuning import architecture_differences, load_initial_network

    N = int(config_manager.data_config.N)
    if requested == INIT_RANDOM:
        logger.info("%s=%s: training from random weights", INIT_ENV, INIT_RANDOM)
        return None
    if requested is None:
        requested = next((name for name, size in pretrained.available_models().items() if size == N), None)
        if requested is None:
            logger.info("no shipped model for %d x %d patterns (%s): training from random weights", N, N, _shipped_listing())
            return None
        explicit = False
    else:
        explicit = True
    path, network = load_initial_network(requested, N)
    data = config_manager.data_config
    groups = [f"{name} {ours!r} (the model's: {theirs!r})" for name, ours, theirs in architecture_differences(network, config_manager.model_config, data,
                                                                                                               {"data": ("C", "grid_size")})]
    if groups:
        message = (f"the initial model {requested} ({path}) was trained on groups of another size than these settings: {', '.join(groups)}")
        if explicit:
            raise ValueError(f"{message}; set Grid Size and Num Channels to the model's, or choose another initial model ({INIT_ENV})")
        logger.warning("%s: training from random weights (set Grid Size to the model's to fine-tune it)", message)
        return None
    replaced = [f"{name} {ours!r} -> {theirs!r}" for name, ours, theirs in architecture_differences(network, config_manager.model_config, data)]
    if replaced:
        logger.warning("fine-tuning %s (%s): its architecture replaces these settings: %s; to train a network of these settings "
                       "from random weights set %s=%s", requested, path, "; ".join(replaced), INIT_ENV, INIT_RANDOM)
    else:
        logger.info("fine-tuning %s (%s)", requested, path)
    return network


def _shipped_listing() -> str:
    from ptycho_torch import pretrained

    present = pretrained.available_models()
    if present:
        return "shipped models: " + ", ".join(f"{name} ({size} x {size} patterns)" for name, size in present.items())
    return f"no shipped model's weights are in this installation ({pretrained.MODELS_DIR}; python -m ptycho_torch.pretrained.build builds them)"


def load_model(model_path=None, *, pattern_size: int | None = None) -> tuple[PtychoModel, ConfigManager]:
    """``(PtychoModel, ConfigManager)`` to reconstruct with: the plain network of ``model_path``, or of the shipped model.

    The no-Lightning counterpart of loading a checkpoint with ``PtychoPINN_Lightning.load_from_checkpoint``:
    ``.model`` is a :class:`~ptycho_torch.model.pinn.PtychoPINN` in eval mode and the ConfigManager holds its
    configs (:meth:`ConfigManager.from_loaded_model`). ``model_path=None`` (no model was trained or
    loaded) takes the shipped model for ``pattern_size``; a size without one is refused
    (:class:`~ptycho_torch.pretrained.UnknownModelError` naming the sizes there are) before any data is
    read. A checkpoint trained on patterns other than ``pattern_size`` is a ValueError naming both.
    """
    from ptycho_torch import pretrained
    from ptycho_torch.model.checkpoints import load_network

    if model_path is None:
        if pattern_size is None:
            raise ValueError("no model was trained or loaded: give the scan's pattern_size to reconstruct with the shipped model for it")
        N = int(pattern_size)
        name = next((name for name, size in pretrained.available_models().items() if size == N), None)
        if name is None:
            raise pretrained.UnknownModelError(
                f"no model was trained or loaded, and no shipped model reconstructs {N} x {N} diffraction patterns "
                f"({_shipped_listing()}); load a model trained on {N} x {N} patterns (Load Model) or train one (Train), or refine "
                f"from a unit object, which needs no network: {RECONSTRUCT_ENV}='--start flat --refine 20'"
            )
        model_path = pretrained.resolve_checkpoint(name)
        logger.info("no model was trained or loaded: reconstructing with the shipped model %r (%s)", name, model_path)
    network = load_network(Path(model_path))
    if pattern_size is not None and network.N != int(pattern_size):
        raise ValueError(
            f"the model {model_path} was trained on {network.N} x {network.N} diffraction patterns but the scan holds "
            f"{int(pattern_size)} x {int(pattern_size)}; load a model trained at this size"
        )
    ptycho_model = PtychoModel(**network.configs())
    ptycho_model.model = network
    return ptycho_model, ConfigManager.from_loaded_model(ptycho_model)


class Trainer:
    """Trains a :class:`PtychoModel` on a :class:`PtychoDataLoader`; ``._trainer`` is the ``lightning.Trainer``.

    Checkpoints (``checkpoints/best-checkpoint.ckpt``, ``last.ckpt``), ``configs/*.json`` and
    ``metrics.csv`` go to the loader's run directory ``output_dir``. Refused (ValueError): an
    orchestration other than ``'lightning'``, a loader not built as ``'lightning_only_module'``.
    A run that fails or is interrupted re-raises; its directory is removed, or kept marked
    ``INCOMPLETE`` when it holds checkpoints.
    """

    def __init__(self, model: PtychoModel, dataloader: PtychoDataLoader, config_manager: ConfigManager, trainer):
        self.model = model
        self.dataloader = dataloader
        self.config_manager = config_manager
        self._trainer = trainer
        self.best_checkpoint: Path | None = None

    @classmethod
    def _from_lightning(cls, model: PtychoModel, dataloader: PtychoDataLoader, orchestration: str = ORCHESTRATION, config_manager: ConfigManager | None = None) -> Trainer:
        """A Lightning trainer writing checkpoints and configs into ``dataloader.output_dir``."""
        from ptycho_torch.model.training import build_trainer

        _check_orchestration(orchestration)
        if dataloader.data_module is None:
            raise ValueError("training with Lightning needs a PtychoDataLoader built with data_format 'lightning_only_module'")
        config_manager = config_manager or dataloader.config_manager
        trainer = build_trainer(config_manager.training_config, Path(dataloader.output_dir))
        return cls(model, dataloader, config_manager, trainer)

    def train(self, orchestration: str = ORCHESTRATION, experiment_name: str = "") -> Path | None:
        """Fit the model; returns the best checkpoint in the run directory (also kept as ``best_checkpoint``)."""
        _check_orchestration(orchestration)
        from ptycho_torch.workflow import train_model

        run_dir = Path(self.dataloader.output_dir)
        logger.info("training %s in %s", experiment_name or "PtychoPINN", run_dir)
        self.best_checkpoint = train_model(self.model.model, self.dataloader.data_module, self._trainer, run_dir)
        return self.best_checkpoint


def _require_same_patterns(dataset, network, runs_no_network: bool = False) -> None:
    """The loader's patterns and groups must be those the network was built for (else it fails deep in a convolution);
    ``runs_no_network``: a flat start, which refines the patterns of any size in groups of one."""
    if runs_no_network:
        return
    N, C = getattr(network, "N", dataset.N), getattr(network, "C", dataset.C)
    if dataset.N != N or dataset.C != C:
        raise ValueError(
            f"the loaded model was trained on groups of {C} patterns of {N} x {N} (data_config N={N}, grid_size {int(C ** 0.5)} x {int(C ** 0.5)}) but the data "
            f"holds groups of {dataset.C} patterns of {dataset.N} x {dataset.N}; build the PtychoDataLoader with the "
            "model's configs (ConfigManager.from_loaded_model), or use a model trained at this size"
        )


def _check_orchestration(orchestration: str) -> None:
    if str(orchestration).lower() != ORCHESTRATION:
        raise ValueError(f"orchestration {orchestration!r} is not supported; use 'lightning' (mlflow is not used by this package)")


class InferenceEngine:
    """Predicts every group of a loader's dataset and stitches the patches into one complex object.

    A :class:`PtychoModel` without a network (no model was trained or loaded) gets the shipped model
    for ``config_manager.data_config.N`` (:func:`load_model`), and ``config_manager`` then holds that
    model's configs (as :meth:`ConfigManager.from_loaded_model` would), so a loader built from it
    afterwards fits the model; a pattern size without a shipped model is refused here, before any
    data is read (:class:`~ptycho_torch.pretrained.UnknownModelError` naming the sizes there are).
    Inference runs through the plain network: Lightning is not imported.

    :data:`RECONSTRUCT_ENV` is read and checked here, when the engine is built (``.method``), so a value that
    cannot run is refused before Ptychodus writes and groups the scan for the loader (ValueError naming it).

    Refused (ValueError): configs whose architecture fields differ from the network's; loader data
    whose pattern size ``N`` or group size ``C`` differ from those the network was trained on.
    """

    def __init__(self, config_manager: ConfigManager, ptycho_model: PtychoModel):
        self.method = _reconstruction_method()  # refused here: Ptychodus builds the engine before it writes and groups the scan
        scan_size = None if ptycho_model.model is not None else int(config_manager.data_config.N)  # known only without a model
        if ptycho_model.model is None:
            shipped, configs = load_model(None, pattern_size=_shipped_size(config_manager.data_config.N, self.method))
            for name in ("model_config", "data_config", "training_config", "inference_config"):
                setattr(ptycho_model, name, getattr(shipped, name))
                setattr(config_manager, name, getattr(configs, name))
            config_manager.arch_frozen = True
            ptycho_model.model = shipped.model
        self.config_manager = config_manager
        self.ptycho_model = ptycho_model
        self.object_network = _check_method_fits(self.method, ptycho_model.model, scan_size)

    def predict_and_stitch(self, loader: PtychoDataLoader, *, progress: bool = True) -> np.ndarray:
        """Complex64 ``(H, W)`` object: ``ceil(scan span + N)`` pixels per axis, centred on the scan's bounding box.

        That is the grid of Ptychodus's default object for the same positions, so the result lands
        where the input object was. Runs on the GPU when torch sees one, else on the CPU with at
        most ``CPU_INFERENCE_BATCH`` groups per batch; each group of the loader is predicted once. With
        :data:`RECONSTRUCT_ENV` set, the method it named when the engine was built (``ptycho-reconstruct``'s options).
        """
        from ptycho_torch.workflow import ReconstructionSettings, reconstruct_scan, resolve_device

        method, object_network = self.method, self.object_network
        self.config_manager.validate_arch_compatibility(self.ptycho_model)
        network = self.ptycho_model.model
        flat = method.get("start") == "flat"  # a unit object refined against the patterns: no network runs on them, any size
        _require_same_patterns(loader.dataset, network, runs_no_network=flat)
        if object_network is not None:  # PtychoDataLoader.from_np has checked it already, before writing the scan
            _check_object_network_size(loader.dataset.N)
        device = resolve_device("auto")
        batch_size = max(1, int(self.config_manager.inference_config.batch_size))
        if device.type == "cpu" and batch_size > CPU_INFERENCE_BATCH:
            logger.info("inference batch %d capped at %d groups on the CPU to bound memory", batch_size, CPU_INFERENCE_BATCH)
            batch_size = CPU_INFERENCE_BATCH
        settings = ReconstructionSettings(**{"device": str(device), "precision": INFERENCE_PRECISION, "batch_size": batch_size,
                                             "groups": "all", "progress": progress, **method})
        return reconstruct_scan(network, loader.dataset, settings, object_network=object_network).object


_RECONSTRUCT_FIX = f"set {RECONSTRUCT_ENV} in the shell that starts Ptychodus, or unset it for the network's single pass"


def _check_method_fits(method: dict, network, scan_size: int | None = None):
    """What ``ptycho-reconstruct`` refuses for this network, refused naming :data:`RECONSTRUCT_ENV` before the loader is read:
    ``--start physics`` with a network that reads the diffraction itself, ``--object-network`` with its weights missing or
    unreadable, or for a ``scan_size`` (pattern size, when known) other than the object network's; the object network runs
    after a flat start, which runs no network, so the scan's size counts, not the model's (:func:`check_scan_pattern_size`
    checks it when the scan arrives). Returns the object network the method runs, loaded once here (None without it)."""
    from ptycho_torch.pretrained import UnknownModelError, load_object_network

    plain = getattr(network, "network", network)  # a PtychoPINN_Lightning's plain network
    reason = object_network = None
    if method.get("start") == "physics" and plain.model_config.generator_input != "object_estimate":
        reason = (f"--start physics: the loaded model reads the diffraction itself (generator_input="
                  f"{plain.model_config.generator_input!r}), it has no physics input; use --start network")
    elif method.get("object_network_after"):
        if scan_size is not None:
            _check_object_network_size(scan_size)
        try:
            object_network = load_object_network()
        except UnknownModelError as exc:
            reason = f"--object-network: {exc}"
    if reason is not None:
        raise _method_refused(reason)
    return object_network


def _method_refused(reason: str) -> ValueError:
    """The refusal of the method :data:`RECONSTRUCT_ENV` names, with its value, ``reason`` and the fix."""
    text = os.environ.get(RECONSTRUCT_ENV, "").strip()
    return ValueError(f"{RECONSTRUCT_ENV}={text!r}: {reason}; {_RECONSTRUCT_FIX}")


def _shipped_size(N: int, method: dict) -> int:
    """The pattern size of the shipped model to load when none was: ``N``'s, or, for a flat start (which runs no network and
    refines in groups of one) at a size no shipped model has, any shipped model's (only its configs are read)."""
    from ptycho_torch import pretrained

    sizes = sorted(set(pretrained.available_models().values()))
    if method.get("start") != "flat" or not sizes or int(N) in sizes:
        return int(N)
    logger.info("%s starts from a flat object, which runs no network: %d x %d patterns are refined with the shipped "
                "%d x %d model loaded for its configs only", RECONSTRUCT_ENV, N, N, sizes[0], sizes[0])
    return sizes[0]


def _check_object_network_size(N: int) -> None:
    from ptycho_torch.pretrained import UnknownModelError, object_network_for_pattern_size

    try:
        object_network_for_pattern_size(N)
    except UnknownModelError as exc:
        raise _method_refused(f"--object-network: {exc}") from None


def check_scan_pattern_size(N: int) -> bool:
    """Whether :data:`RECONSTRUCT_ENV` starts from a flat object, so no network runs on the scan's ``N`` x ``N`` patterns
    (any size); its ``--object-network`` for patterns of another size than the object network's is refused (ValueError
    naming the variable), so :meth:`PtychoDataLoader.from_np` refuses it before writing the scan."""
    method = _reconstruction_method(log=False)
    if method.get("object_network_after"):
        _check_object_network_size(N)
    return method.get("start") == "flat"


def _reconstruction_method(log: bool = True) -> dict:
    """The :class:`~ptycho_torch.workflow.ReconstructionSettings` fields :data:`RECONSTRUCT_ENV` asks for (none when unset)."""
    from ptycho_torch.cli import UsageError
    from ptycho_torch.cli_reconstruct import method_settings

    text = os.environ.get(RECONSTRUCT_ENV, "").strip()
    if not text:
        return {}
    try:
        method = method_settings(text, RECONSTRUCT_ENV)
    except UsageError as exc:
        raise ValueError(f"{exc}; {_RECONSTRUCT_FIX}") from None
    if log:
        logger.info("%s=%r: %s", RECONSTRUCT_ENV, text, ", ".join(f"{key}={value}" for key, value in method.items()))
    return method
