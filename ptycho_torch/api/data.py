"""Training data from a directory of exported NPZ files, and inference data from Ptychodus's arrays."""

from __future__ import annotations

import logging
import os
import tempfile
import warnings
import weakref
from dataclasses import replace
from enum import Enum
from pathlib import Path

import numpy as np

from ptycho.scan_file import ScanFile, scan_files
from ptycho.scan_geometry import check_scan_geometry
from ptycho.validation import BadDiffractionError, bad_pattern_flags, check_amplitude_block, probe_value_problem
from ptycho_torch.config_resolve import check_strategy, grid_side, to_inference_config, to_model_config
from ptycho_torch.run_dirs import discard_failed_run, new_run_dir
from ptycho_torch.store.atomic import require_writable_directory

logger = logging.getLogger(__name__)

__all__ = ["DataloaderFormats", "PtychoDataLoader", "default_cache_dir"]

DEFAULT_SEED = 42


class DataloaderFormats(Enum):
    """What :class:`PtychoDataLoader` builds for training."""

    LIGHTNING_MODULE = "lightning_module"
    LIGHTNING_ONLY_MODULE = "lightning_only_module"
    TENSORDICT = "tensordict"
    PYTORCH = "pytorch"
    NUMPY = "numpy"


CACHE_ENV = "PTYCHOPINN_CACHE_DIR"


def default_cache_dir() -> Path:
    """Where memory maps and group caches of training data live: ``$PTYCHOPINN_CACHE_DIR`` (a blank value is unset), else the user cache."""
    configured = os.environ.get(CACHE_ENV, "").strip()
    if configured:
        return Path(configured).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "ptychopinn" / "memmap"


class PtychoDataLoader:
    """Training data (``PtychoDataLoader(data_dir, config_manager, data_format, output_dir)``) or inference data (:meth:`from_np`).

    For training, every ``*.npz`` directly inside ``data_dir`` (e.g. files written by Ptychodus's
    Export Training Data) is one experiment of a memory-mapped ``PtychoDataset`` (``.dataset``);
    sub-directories (such as earlier ``run_*`` outputs) are never read. ``output_dir`` (default
    ``data_dir``) becomes ``output_dir/run_<UTC timestamp>`` (created exclusively,
    :func:`ptycho_torch.run_dirs.new_run_dir`), where the trainer writes checkpoints and configs.
    Memory maps and group caches go to ``cache_dir`` (default :func:`default_cache_dir`; the run
    directory when that is not writable), never the working directory.

    Groups per file: ``DataConfig.n_subsample`` x the scan points inside ``x_bounds``/``y_bounds``
    (fractions of the scan range), as PtychoPINN counts them, oversampled when that exceeds the
    points; seed ``DataConfig.subsample_seed`` or 42. Ptychodus exports (``diff3d`` with
    ``bad_pixels``) are read as photon counts whatever their dtype. ``data_format``
    ``'lightning_only_module'`` (default) or ``'lightning_module'`` builds ``.data_module``,
    ``'tensordict'`` or ``'pytorch'`` ``.dataloader``.

    Refused before any work (ValueError or FileNotFoundError naming the file and the Ptychodus
    setting to change): a missing directory or one without ``.npz`` files; ``DataConfig.N`` other than
    the pattern size; a non-square grid or ``C`` other than its size; a file of fewer scan points than ``C``; a directory mixing Ptychodus
    exports with other files; Supervised training without ``objectGuess`` in every file;
    ``data_format='numpy'``; a ``$PTYCHOPINN_INIT`` that names no model (an unknown name, a missing file, a shipped
    model of another pattern size). A refused run leaves no run directory.
    """

    def __init__(self, data_dir, config_manager, data_format=DataloaderFormats.LIGHTNING_ONLY_MODULE, output_dir=None, *, cache_dir=None, progress: bool = True):
        self.data_dir = Path(data_dir)
        self.config_manager = config_manager
        self.data_format = DataloaderFormats(data_format)
        from ptycho_torch.api.base_api import check_initial_model_setting

        check_initial_model_setting(config_manager.data_config.N)  # a PTYCHOPINN_INIT naming no model: refused before any work
        if self.data_format in (DataloaderFormats.LIGHTNING_MODULE, DataloaderFormats.LIGHTNING_ONLY_MODULE):
            # Trainer._from_lightning's build_trainer reads it: an unknown one is refused here, before the data is memory-mapped
            check_strategy(config_manager.training_config.strategy, "Distributed Strategy (TrainingConfig.strategy)")
        self.output_dir = new_run_dir(Path(output_dir) if output_dir is not None else self.data_dir)
        try:
            self.cache_dir = _writable_cache_dir(cache_dir, self.output_dir)
            self.dataset = _training_dataset(self.data_dir, config_manager, self.cache_dir, progress)
        except BaseException:
            discard_failed_run(self.output_dir)  # a refused run leaves no empty run directory behind
            raise
        self.data_module = None
        self.dataloader = None
        if self.data_format in (DataloaderFormats.LIGHTNING_MODULE, DataloaderFormats.LIGHTNING_ONLY_MODULE):
            from ptycho_torch.model.training import PtychoDataModule

            cm = config_manager
            self.data_module = PtychoDataModule(self.dataset, cm.data_config, cm.model_config, cm.training_config, data_dir=self.cache_dir, progress=progress)
        elif self.data_format in (DataloaderFormats.TENSORDICT, DataloaderFormats.PYTORCH):
            from ptycho_torch.dataloader import TensorDictDataLoader

            training = config_manager.training_config
            self.dataloader = TensorDictDataLoader(self.dataset, batch_size=training.batch_size, shuffle=True, num_workers=training.num_workers)
        else:
            raise ValueError(
                f"data_format {self.data_format.value!r} is not supported for training; use 'lightning_only_module' "
                "(a LightningDataModule) or 'tensordict' (a DataLoader of TensorDict batches)"
            )

    @classmethod
    def from_np(cls, diff_patterns, probe, positions, config_manager, *, progress: bool = True) -> PtychoDataLoader:
        """Inference data from arrays: one group per scan point.

        ``diff_patterns (n, N, N)``: measured photon counts in the detector's dtype (integers or
        floats); ``probe (modes, N, N)`` or ``(N, N)`` complex; ``positions (n, 2)``: ``[y, x]`` in
        object pixels. The arrays are written once to a private temporary directory that is removed
        with the loader (or by :meth:`close`).

        Refused (ValueError), before anything is written: patterns that are not an ``(n, N, N)`` stack of
        real numbers, fewer than a group's ``DataConfig.C`` points, whose ``N`` is not ``DataConfig.N`` (any ``N`` when ``$PTYCHOPINN_RECONSTRUCT`` starts from a
        flat object, which runs no network, as ``ptycho-reconstruct --start flat`` does), or that hold NaN, inf or negative counts; a probe of
        another shape, all zero or not finite; positions not ``(n, 2)``, not finite, or spanning less than a
        pixel (metres or microns instead of object pixels).
        """
        N, flat = _inference_pattern_size(diff_patterns, config_manager.data_config.N)
        patterns, probe_stack, positions = _checked_arrays(diff_patterns, probe, positions, N)
        if not flat:  # a flat start forms groups of one
            _check_enough_points(len(patterns), config_manager.data_config)
        loader = cls.__new__(cls)
        loader.config_manager = config_manager
        loader.data_format = DataloaderFormats.TENSORDICT
        loader.data_module = None
        loader.dataloader = None
        workspace = tempfile.TemporaryDirectory(prefix="ptychopinn-inference-")
        loader._workspace = workspace
        weakref.finalize(loader, workspace.cleanup)
        root = Path(workspace.name)
        loader.data_dir = loader.output_dir = loader.cache_dir = root
        scan = root / "scan.npz"
        np.savez(scan, xcoords=positions[:, 1], ycoords=positions[:, 0], diff3d=patterns, probeGuess=probe_stack, scan_index=np.zeros(len(positions), dtype=np.int64))
        loader.dataset = _inference_dataset(scan, config_manager, root / "memmap", progress, N, groups_of_one=flat)
        return loader

    def close(self) -> None:
        """Remove the temporary files of :meth:`from_np` now (also done when the loader is collected)."""
        workspace = getattr(self, "_workspace", None)
        if workspace is not None:
            workspace.cleanup()


def _writable_cache_dir(cache_dir, run_dir: Path) -> Path:
    wanted = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    try:
        return require_writable_directory(wanted)
    except OSError as exc:
        fallback = run_dir / "memmap"
        source = f" ({CACHE_ENV}; set it to a directory you can write, or unset it)" if cache_dir is None and os.environ.get(CACHE_ENV, "").strip() else ""
        logger.warning("cache directory %s%s is not writable (%s); caching in %s instead", wanted, source, exc, fallback)
        return fallback


def _training_dataset(data_dir: Path, config_manager, cache_dir: Path, progress: bool):
    from ptycho_torch.dset_loader_pt_mmap import PtychoDataset

    files = _training_files(data_dir)
    data, model, training = config_manager.data_config, config_manager.model_config, config_manager.training_config
    headers = [_header(path) for path in files]
    _check_pattern_size(data.N, files, headers)
    _check_channels(data)
    units = _diffraction_units(files, headers)
    from ptycho_torch.model.training import needs_ground_truth

    supervised = needs_ground_truth(model)
    if supervised:
        missing = [str(path) for path, header in zip(files, headers) if not header["has_object"]]
        if missing:
            raise ValueError(
                f"Supervised training needs the true object ('objectGuess') in every training file; missing in {', '.join(missing)}. "
                "Export the training data from a product whose object is the ground truth, or use the Unsupervised reconstructor"
            )
    _check_enough_training_points(data, files, headers)
    n_groups = _n_groups(data, headers)
    overrides = {
        "n_groups": n_groups,
        # more groups than scan points: draw several C-subsets of each point's neighbours, as PtychoPINN does
        "enable_oversampling": n_groups > min(header["n"] for header in headers),
        "neighbor_pool_size": max(int(data.K), int(data.C)),
        "nphotons": float(np.mean([header["photons"] for header in headers])),
        "subsample_seed": DEFAULT_SEED if data.subsample_seed is None else data.subsample_seed,
    }
    logger.info("training on %d file(s) in %s: %d groups per file, caches in %s", len(files), data_dir, overrides["n_groups"], cache_dir)
    with warnings.catch_warnings():  # the plugin trains without a test file; the reminder would only confuse
        warnings.filterwarnings("ignore", message="no test_data_file for training", category=UserWarning)
        return PtychoDataset(
            data_dir, _counted_groups_applied(data), model, training,
            overrides=overrides, data_dir=cache_dir, diffraction_units=units, ground_truth=supervised, progress=progress,
        )


def _inference_pattern_size(diff_patterns, N: int) -> tuple[int, bool]:
    """``(N, flat)``: the pattern size the inference data is read at, the model's ``N`` or, when the reconstruction method
    (``$PTYCHOPINN_RECONSTRUCT``) starts from a flat object and so runs no network on them (``flat``), the patterns' own."""
    shape = np.shape(diff_patterns)
    if len(shape) != 3 or shape[1] != shape[2]:
        return N, False
    from ptycho_torch.api.base_api import check_scan_pattern_size

    flat = check_scan_pattern_size(int(shape[1]))  # and --object-network's size, before anything is written
    return (int(shape[1]) if flat else N), flat


def _inference_dataset(scan: Path, config_manager, cache_dir: Path, progress: bool, N: int, groups_of_one: bool = False):
    """The inference PtychoDataset of ``scan``; ``groups_of_one``: a flat start refines every point and forms no neighbour
    groups (as ``ptycho-reconstruct --start flat``), so scans of fewer points than the model's group are refined too."""
    from ptycho_torch.dset_loader_pt_mmap import PtychoDataset

    data, model = replace(config_manager.data_config, N=N), config_manager.model_config
    if groups_of_one:
        data = replace(data, grid_size=(1, 1), C=1)
    _check_channels(data)
    config = to_inference_config(
        to_model_config(data, model),
        data,
        config_manager.inference_config,
        overrides={
            "model_path": scan.parent,
            "test_data_file": scan,
            "subsample_seed": DEFAULT_SEED if data.subsample_seed is None else data.subsample_seed,
        },
    )
    return PtychoDataset(scan, config=config, data_dir=cache_dir, diffraction_units="counts", progress=progress, layout="nNN")  # from_np wrote it so


def _training_files(data_dir: Path) -> list[Path]:
    if not data_dir.exists():
        raise FileNotFoundError(f"training data directory {data_dir} does not exist; choose the directory holding the exported .npz files")
    try:
        return scan_files(data_dir)
    except FileNotFoundError as exc:
        raise FileNotFoundError(
            f"no training data in {data_dir}: it holds no .npz file. In Ptychodus, use Export Training Data "
            "(PtychoPINN-Torch reconstructor) to write one into this directory, then train again"
        ) from exc


def _header(path: Path) -> dict:
    """Pattern size, count of points inside the grouping bounds, photon estimate, and whether the file is a Ptychodus export."""
    with ScanFile(path) as scan_file:
        scan = scan_file.read_scan(load_diffraction=False, load_object=False)  # only its presence matters here
        key = scan_file.diffraction_key()
        _, first = next(scan_file.iter_disk_blocks(key, block_bytes=1 << 20))
        keys = set(scan_file.keys)
    exported = key == "diff3d" and "bad_pixels" in keys
    values = first.astype(np.float64)
    per_pixel = values.mean() if exported or first.dtype.kind in "iu" else np.mean(values**2)
    return {
        "N": scan.N,
        "n": scan.n,
        "x": scan.xcoords,
        "y": scan.ycoords,
        "exported": exported,
        "has_object": "objectGuess" in keys,
        "photons": per_pixel * scan.N * scan.N,
    }


def _check_pattern_size(N: int, files: list[Path], headers: list[dict]) -> None:
    for path, header in zip(files, headers):
        if header["N"] != N:
            raise ValueError(
                f"model size {N} (DataConfig.N) does not match the {header['N']} x {header['N']} diffraction patterns in {path}; "
                f"set Model Size to {header['N']} in the PtychoPINN-Torch data settings (or DataConfig(N={header['N']}))"
            )


def _check_enough_training_points(data, files: list[Path], headers: list[dict]) -> None:
    C = int(data.C)
    for path, header in zip(files, headers):
        if header["n"] < C:
            raise ValueError(
                f"{path} holds {header['n']} scan point(s) but a group holds {C} (Grid Size {tuple(data.grid_size)}); export a scan "
                f"with at least {C} points, or set Grid Size X and Y to 1 and Num Channels to 1 in the PtychoPINN-Torch data settings"
            )


def _check_channels(data) -> None:
    grid_side(data.grid_size, data.C, square_fix="set Grid Size X and Y to the same value in the PtychoPINN-Torch data settings",
              channels_fix="set Num Channels to {size}")


def _diffraction_units(files: list[Path], headers: list[dict]) -> str:
    """Ptychodus exports hold counts whatever their dtype; other files follow the package's own rule ('auto')."""
    exported = [header["exported"] for header in headers]
    if all(exported):
        return "counts"
    if any(exported):
        mixed = ", ".join(f"{path.name} ({'Ptychodus export' if flag else 'other'})" for path, flag in zip(files, exported))
        raise ValueError(f"the training directory mixes Ptychodus exports with other NPZ files: {mixed}; keep one kind per directory")
    return "auto"


GROUP_COUNTING_FIELDS = ("n_subsample", "x_bounds", "y_bounds")
"""DataConfig fields this API honours by turning them into ``n_groups`` (:func:`_n_groups`), as PtychoPINN counts groups."""


def _counted_groups_applied(data):
    """``data`` with the group-counting fields reset: ``_n_groups`` has turned them into ``n_groups``.

    The dataset refuses ``n_subsample`` and x/y bounds other than the defaults (it reads
    ``n_groups``); here they have done their job, so the dataset gets the defaults.
    """
    from ptycho_torch.config_params import DataConfig

    defaults = DataConfig()
    return replace(data, **{name: getattr(defaults, name) for name in GROUP_COUNTING_FIELDS})


def _n_groups(data, headers: list[dict]) -> int:
    """``n_subsample`` groups per scan point inside the x/y bounds (fractions of the scan range), as PtychoPINN counts them."""
    counts = []
    for header in headers:
        x, y = header["x"], header["y"]
        inside = _within(x, data.x_bounds) & _within(y, data.y_bounds)
        counts.append(max(1, int(inside.sum())))
    return max(1, int(data.n_subsample)) * max(counts)


def _within(values: np.ndarray, bounds) -> np.ndarray:
    low, high = float(values.min()), float(values.max())
    span = high - low
    return (values >= low + bounds[0] * span) & (values <= low + bounds[1] * span)


def _checked_arrays(diff_patterns, probe, positions, N: int):
    patterns = np.asarray(diff_patterns)
    if patterns.ndim != 3 or patterns.shape[1] != patterns.shape[2]:
        raise ValueError(f"diff_patterns must be a stack (n, N, N) of square patterns, got shape {patterns.shape}")
    if patterns.shape[1] != N:
        raise ValueError(
            f"the model was trained on {N} x {N} patterns but the data holds {patterns.shape[1]} x {patterns.shape[2]} patterns; "
            "reconstruct with a model trained at this size (or crop/bin the patterns), or refine from a unit object, which needs no "
            "network: set PTYCHOPINN_RECONSTRUCT='--start flat --refine 20' in the shell that starts Ptychodus"
        )
    if patterns.dtype.kind not in "iuf":
        raise ValueError(f"diff_patterns must be real counts (integer or float), got dtype {patterns.dtype}")
    stack = np.asarray(probe)
    stack = stack[None] if stack.ndim == 2 else stack
    if stack.ndim != 3 or stack.shape[1:] != (N, N):
        raise ValueError(f"probe must be (modes, {N}, {N}) or ({N}, {N}), got shape {np.shape(probe)}")
    problem = probe_value_problem(stack)
    if problem:
        raise ValueError(f"probe: {problem.replace('probeGuess', 'the probe')}")
    points = np.asarray(positions, dtype=np.float64)
    if points.shape != (patterns.shape[0], 2):
        raise ValueError(f"positions must be (n, 2) [y, x] pixels with n={patterns.shape[0]} (one per pattern), got shape {points.shape}")
    if not np.isfinite(points).all():
        raise ValueError(f"positions hold non-finite values at rows {np.flatnonzero(~np.isfinite(points).all(axis=1))[:10].tolist()}")
    _check_pattern_values(patterns)
    check_scan_geometry("positions", points[:, 1], points[:, 0], stack, N)
    return patterns, stack.astype(np.complex64), points


def _check_enough_points(n: int, data) -> None:
    """A scan of fewer points than a group holds cannot be grouped: refused naming the model's group size and the fix."""
    C = int(data.C)
    if n < C:
        raise ValueError(
            f"the scan has {n} point(s) but the model reconstructs groups of {C} neighbouring points (grid_size {tuple(data.grid_size)}); "
            f"reconstruct a scan of at least {C} points, load a model trained with Grid Size 1 x 1 (Num Channels 1), or refine from a "
            "unit object, which forms no groups: set PTYCHOPINN_RECONSTRUCT='--start flat --refine 20' in the shell that starts Ptychodus"
        )


PATTERNS_PER_CHECK = 4096  # patterns whose values are checked at once (bounded memory for large scans)


def _check_pattern_values(patterns: np.ndarray) -> None:
    """Refuse NaN, inf or negative counts, naming the first pattern and pixel and every bad pattern's index, before anything is written."""
    starts = range(0, len(patterns), PATTERNS_PER_CHECK)
    try:
        for start in starts:
            check_amplitude_block("diff_patterns", patterns[start:start + PATTERNS_PER_CHECK], start, quantity="counts")
    except BadDiffractionError as exc:
        bad = np.flatnonzero(np.concatenate([bad_pattern_flags(patterns[i:i + PATTERNS_PER_CHECK]) for i in starts]))
        shown = ", ".join(str(int(i)) for i in bad[:10]) + (", ..." if len(bad) > 10 else "")
        raise ValueError(f"{exc}; {len(bad)} pattern(s) hold such values: [{shown}]; or drop those patterns and their rows of "
                         "positions (keep = np.isfinite(d).all(axis=(1, 2)) & (d >= 0).all(axis=(1, 2)); d[keep], positions[keep])") from None
