"""Iterative baseline: Pty-chi 2.2.0 (LSQML, ePIE, DM) on scans with a known object, probe and positions, scored like ours."""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import logging
import os
import subprocess
import sys
import time
import types
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from scipy import signal

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.quality import reconstruction_quality  # noqa: E402

logger = logging.getLogger("bench_ptychi")

PTYCHI_VERSION = "2.2.0"
INSTALL_HINT = (
    f"Pty-chi is not installed: `make bench-ptychi`, or "
    f"`pip install -r requirements/bench-ptychi.txt && pip install --no-deps ptychi=={PTYCHI_VERSION}`"
)
ENGINES = ("lsqml", "epie", "dm")
COVERAGE_FLOOR = 0.05  # covered: probe-intensity coverage >= 5 % of its maximum (the stitching's rule)


@dataclass(frozen=True)
class PtychiSettings:
    """The Pty-chi set-up of benchmarks/README.md (Ptychodus's defaults where it has them)."""

    batch_size: int = 100
    threads: int = 1
    epie_alpha: float = 0.1
    random_seed: int | None = 0
    coverage_floor: float = COVERAGE_FLOOR


@dataclass(frozen=True)
class Scan:
    """The arrays of a scan NPZ that the baseline needs."""

    amplitudes: np.ndarray  # (P, N, N) float32, centred far-field amplitudes
    probe: np.ndarray  # (N, N) complex64, the simulator's probe (ortho-normalised FFT)
    truth: np.ndarray  # (H, W) complex64, objectGuess
    x_px: np.ndarray  # (P,) patch centres on objectGuess's grid
    y_px: np.ndarray


def load_scan(path: str | os.PathLike[str]) -> Scan:
    with np.load(path, allow_pickle=False) as data:
        return Scan(
            amplitudes=np.asarray(data["diffraction"], dtype=np.float32),
            probe=np.asarray(data["probeGuess"], dtype=np.complex64),
            truth=np.asarray(data["objectGuess"], dtype=np.complex64),
            x_px=np.asarray(data["xcoords"], dtype=np.float64),
            y_px=np.asarray(data["ycoords"], dtype=np.float64),
        )


# --- torchvision stand-in -------------------------------------------------------------------------

def _gaussian_kernel_1d(size: int, sigma: float):
    import torch

    offsets = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    return kernel / kernel.sum()


class _GaussianBlurStandIn:
    """Separable Gaussian blur of the last two axes with reflect padding (what ptychi asks of torchvision's)."""

    def __init__(self, kernel_size, sigma=(0.1, 2.0)):
        self.kernel_size = (kernel_size, kernel_size) if isinstance(kernel_size, int) else tuple(kernel_size)
        if any(k <= 0 or k % 2 == 0 for k in self.kernel_size):
            raise ValueError(f"kernel_size must be odd and positive, got {kernel_size}")
        self.sigma_range = (float(sigma), float(sigma)) if isinstance(sigma, (int, float)) else tuple(map(float, sigma))

    def __call__(self, image):
        import torch

        low, high = self.sigma_range
        sigma = low if low == high else float(torch.empty(1).uniform_(low, high))
        shape = image.shape
        flat = image.reshape(-1, 1, *shape[-2:])
        ky, kx = (_gaussian_kernel_1d(k, sigma).to(image.dtype) for k in self.kernel_size)
        pad_y, pad_x = self.kernel_size[0] // 2, self.kernel_size[1] // 2
        flat = torch.nn.functional.pad(flat, (pad_x, pad_x, pad_y, pad_y), mode="reflect")
        flat = torch.nn.functional.conv2d(flat, ky.view(1, 1, -1, 1))
        flat = torch.nn.functional.conv2d(flat, kx.view(1, 1, 1, -1))
        return flat.reshape(shape)


def install_torchvision_stand_in_if_missing() -> bool:
    """Put a ``torchvision.transforms.GaussianBlur`` stand-in in ``sys.modules`` if torchvision does not import.

    ``ptychi.utils`` imports that one class (for random initial objects, unused here); the PyPI
    torchvision wheel does not import next to the CPU torch build this project pins. Returns True
    if the stand-in was installed.
    """
    try:
        import torchvision.transforms  # noqa: F401

        return False
    except Exception as error:  # a broken wheel raises RuntimeError/OSError, not only ImportError
        logger.info("torchvision does not import (%s: %s); using a GaussianBlur stand-in", type(error).__name__, error)
    for name in [name for name in sys.modules if name == "torchvision" or name.startswith("torchvision.")]:
        del sys.modules[name]
    package = types.ModuleType("torchvision")
    package.__path__ = []
    transforms = types.ModuleType("torchvision.transforms")
    transforms.GaussianBlur = _GaussianBlurStandIn
    package.transforms = transforms
    sys.modules["torchvision"] = package
    sys.modules["torchvision.transforms"] = transforms
    return True


def import_ptychi():
    """``ptychi.api`` and ``ptychi.api.task``, imported lazily; says how to install Pty-chi if missing."""
    if importlib.util.find_spec("ptychi") is None:
        raise ImportError(INSTALL_HINT)
    install_torchvision_stand_in_if_missing()
    try:
        import ptychi
        import ptychi.api as api
        import ptychi.api.task as task
    except ImportError as error:
        raise ImportError(f"{INSTALL_HINT} ({error})") from error
    if ptychi.__version__ != PTYCHI_VERSION:
        logger.warning("ptychi %s, this baseline was set up for %s", ptychi.__version__, PTYCHI_VERSION)
    return api, task


# --- set-up ----------------------------------------------------------------------------------------

def position_origin_px(object_shape: tuple[int, int]) -> np.ndarray:
    """Object-buffer pixel (row, col) that Pty-chi position (0, 0) maps to; given explicitly (SPECIFIED)."""
    return np.round(np.asarray(object_shape, dtype=np.float64) / 2) - 0.5


def ptychi_positions_px(scan: Scan) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(position_y_px, position_x_px, origin) for Pty-chi.

    Our patch pixel (i, j) samples objectGuess at (y - N//2 + i, x - N//2 + j); Pty-chi's patch is
    centred at (N - 1) / 2 pixels from its first pixel, so its centre index on the buffer is
    ``y - 0.5`` (even N), and Pty-chi adds the origin to the positions it is given.
    """
    origin = position_origin_px(scan.truth.shape)
    centre_shift = scan.amplitudes.shape[-1] // 2 - (scan.amplitudes.shape[-1] - 1) / 2
    return scan.y_px - centre_shift - origin[0], scan.x_px - centre_shift - origin[1], origin


def ptychi_probe(scan: Scan) -> np.ndarray:
    """``probeGuess / N`` as ``(1, modes, N, N)``: Pty-chi's far field is an unnormalised FFT, ours ``norm='ortho'``."""
    N = scan.probe.shape[-1]
    probe = scan.probe.reshape(-1, N, N) / N
    return probe[None].astype(np.complex64)


def build_options(api, engine: str, epochs: int, origin: np.ndarray, settings: PtychiSettings):
    """Engine options: object on objectGuess's grid, probe and positions fixed, data centred."""
    engine_options = {"lsqml": api.LSQMLOptions, "epie": api.EPIEOptions, "dm": api.DMOptions}
    if engine not in engine_options:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    options = engine_options[engine]()
    options.data_options.fft_shift = True
    options.object_options.pixel_size_m = 1.0
    options.object_options.optimizable = True
    options.object_options.remove_object_probe_ambiguity.enabled = False
    options.object_options.determine_position_origin_coords_by = api.ObjectPosOriginCoordsMethods.SPECIFIED
    options.object_options.position_origin_coords = [float(origin[0]), float(origin[1])]
    options.probe_options.optimizable = False
    options.probe_position_options.optimizable = False
    reconstructor = options.reconstructor_options
    reconstructor.num_epochs = epochs
    reconstructor.batch_size = settings.batch_size
    reconstructor.default_device = api.Devices.CPU
    reconstructor.random_seed = settings.random_seed
    if engine == "lsqml":
        reconstructor.noise_model = api.NoiseModels.GAUSSIAN
        reconstructor.rescale_probe_intensity_in_first_epoch = False
    elif engine == "epie":
        options.object_options.alpha = settings.epie_alpha
        options.probe_options.alpha = settings.epie_alpha
    elif engine == "dm":
        reconstructor.chunk_length = settings.batch_size  # scores as with Ptychodus's 1, about 5x less CPU
    return options


def reconstruct_with_ptychi(
    scan_path: str | os.PathLike[str],
    engine: str,
    epochs: int,
    *,
    batch_size: int = 100,
    threads: int = 1,
) -> tuple[np.ndarray, float]:
    """Reconstruct the object of a scan with a Pty-chi engine; returns (object on objectGuess's grid, CPU seconds).

    CPU seconds are ``time.process_time()`` around building the task and running it, with
    ``threads`` torch threads.
    """
    import torch

    api, task_module = import_ptychi()
    settings = PtychiSettings(batch_size=batch_size, threads=threads)
    torch.set_num_threads(settings.threads)
    scan = load_scan(scan_path)
    position_y_px, position_x_px, origin = ptychi_positions_px(scan)
    options = build_options(api, engine.lower(), epochs, origin, settings)
    intensities = np.square(scan.amplitudes)  # the files store amplitudes; Pty-chi wants intensities
    initial_object = np.ones((1, *scan.truth.shape), dtype=np.complex64)
    started_cpu_s = time.process_time()
    task = task_module.PtychographyTask(
        options,
        diffraction_data=intensities,
        object_data=initial_object,
        probe_data=ptychi_probe(scan),
        probe_position_x_px=position_x_px,
        probe_position_y_px=position_y_px,
    )
    task.run()
    cpu_s = time.process_time() - started_cpu_s
    reconstruction = task.get_data_to_cpu("object", as_numpy=True)[0].astype(np.complex64)
    return reconstruction, cpu_s


# --- scoring ---------------------------------------------------------------------------------------

def probe_coverage(scan: Scan) -> np.ndarray:
    """Summed ``|probeGuess|^2`` of every scan position on objectGuess's grid (bilinear sub-pixel placement)."""
    height, width = scan.truth.shape
    N = scan.probe.shape[-1]
    corner_y, corner_x = scan.y_px - N // 2, scan.x_px - N // 2
    row0, col0 = np.floor(corner_y).astype(np.int64), np.floor(corner_x).astype(np.int64)
    fy, fx = corner_y - row0, corner_x - col0
    origin_row, origin_col = min(int(row0.min()), 0), min(int(col0.min()), 0)
    corners = np.zeros((max(int(row0.max()) + 2, height) - origin_row, max(int(col0.max()) + 2, width) - origin_col))
    for d_row, d_col, weight in ((0, 0, (1 - fy) * (1 - fx)), (0, 1, (1 - fy) * fx), (1, 0, fy * (1 - fx)), (1, 1, fy * fx)):
        np.add.at(corners, (row0 + d_row - origin_row, col0 + d_col - origin_col), weight)
    intensity = np.abs(scan.probe.astype(np.complex128)) ** 2
    coverage = signal.fftconvolve(corners, intensity.reshape(-1, N, N).sum(axis=0), mode="full")
    return np.clip(coverage[-origin_row : -origin_row + height, -origin_col : -origin_col + width], 0, None)


def covered_region(scan: Scan, floor: float = COVERAGE_FLOOR) -> np.ndarray:
    coverage = probe_coverage(scan)
    return coverage >= floor * coverage.max()


def score_reconstruction(reconstruction: np.ndarray, scan: Scan, coverage_floor: float = COVERAGE_FLOOR) -> dict:
    quality = reconstruction_quality(reconstruction, scan.truth, covered_region(scan, coverage_floor))
    return {
        "amplitude_r": quality.amplitude_r,
        "phase_r": quality.phase_r,
        "nrmse": quality.nrmse,
        "phase_contrast": quality.phase_contrast,
        "shift_px": list(quality.shift_px),
        "n_pixels": quality.n_pixels,
    }


# --- CLI -------------------------------------------------------------------------------------------

def load_average_1min() -> float:
    return os.getloadavg()[0]


def git_commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
            capture_output=True, text=True, check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def run_one(scan_path: Path, engine: str, epochs: int, settings: PtychiSettings, objects_dir: Path | None = None) -> dict:
    load_before = load_average_1min()
    started_wall_s = time.perf_counter()
    reconstruction, cpu_s = reconstruct_with_ptychi(
        scan_path, engine, epochs, batch_size=settings.batch_size, threads=settings.threads
    )
    wall_s = time.perf_counter() - started_wall_s
    record = {
        "scan": str(scan_path), "engine": engine, "epochs": epochs, "cpu_s": cpu_s, "wall_s": wall_s,
        "load_average_1min_before": load_before, "load_average_1min_after": load_average_1min(),
        **score_reconstruction(reconstruction, load_scan(scan_path), settings.coverage_floor),
    }
    if objects_dir is not None:
        objects_dir.mkdir(parents=True, exist_ok=True)
        record["object_path"] = str(objects_dir / f"{scan_path.stem}_{engine}_{epochs}.npy")
        np.save(record["object_path"], reconstruction)
    logger.info(
        "%s %s %d epochs: amp r %.3f phase r %.3f NRMSE %.3f in %.1f CPU s (load %.2f)",
        scan_path.name, engine, epochs, record["amplitude_r"], record["phase_r"], record["nrmse"], cpu_s, load_before,
    )
    return record


def warm_up(scan_path: Path, engine: str, settings: PtychiSettings) -> None:
    """One untimed 1-epoch run, so the first timed run does not pay the process's one-off torch start-up (2-3 CPU s)."""
    _, cpu_s = reconstruct_with_ptychi(scan_path, engine, 1, batch_size=settings.batch_size, threads=settings.threads)
    logger.info("warm-up: %s %s 1 epoch in %.1f CPU s (not recorded)", scan_path.name, engine, cpu_s)


ENGINE_LABELS = {"lsqml": "LSQML", "epie": "ePIE", "dm": "DM"}
COLUMNS = (("amplitude_r", "amp r", 3), ("phase_r", "phase r", 3), ("nrmse", "NRMSE", 3), ("phase_contrast", "phase contrast", 3), ("cpu_s", "CPU s", 1))


def markdown_table(records: list[dict], title: str) -> str:
    """One row per (engine, epochs); with several scans each cell is ``mean (min-max)``."""
    lines = [f"### {title}", "", "| engine | epochs | " + " | ".join(label for _, label, _ in COLUMNS) + " |",
             "|---|---:|" + "---:|" * len(COLUMNS)]
    keys = sorted({(r["engine"], r["epochs"]) for r in records}, key=lambda k: (ENGINES.index(k[0]), k[1]))
    for engine, epochs in keys:
        rows = [r for r in records if r["engine"] == engine and r["epochs"] == epochs]
        cells = []
        for key, _, digits in COLUMNS:
            values = np.array([r[key] for r in rows])
            cell = f"{values.mean():.{digits}f}"
            if len(values) > 1:
                cell += f" ({values.min():.{digits}f}-{values.max():.{digits}f})"
            cells.append(cell)
        lines.append(f"| {ENGINE_LABELS[engine]} | {epochs} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("scans", nargs="+", type=Path, help="scan NPZ files with objectGuess, probeGuess, xcoords, ycoords, diffraction")
    parser.add_argument("--engines", nargs="+", default=["lsqml", "epie"], choices=ENGINES)
    parser.add_argument("--epochs", nargs="+", type=int, default=[1, 3, 5, 10, 20, 50])
    parser.add_argument("--epie-epochs", nargs="+", type=int, default=None, help="epoch counts for ePIE (default: --epochs)")
    parser.add_argument("--dm-epochs", nargs="+", type=int, default=None, help="epoch counts for DM (default: --epochs)")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (CPU seconds are per process)")
    parser.add_argument("--coverage-floor", type=float, default=COVERAGE_FLOOR,
                        help="covered: coverage >= this fraction of its maximum (0.05, the stitching's rule)")
    parser.add_argument("--json", type=Path, default=None, help="write the raw records here")
    parser.add_argument("--save-objects", type=Path, default=None, metavar="DIR", help="save each reconstruction as DIR/SCAN_ENGINE_EPOCHS.npy")
    parser.add_argument("--no-warm-up", action="store_true", help="skip the untimed 1-epoch run before the timed ones")
    parser.add_argument("--verbose", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logger.setLevel(logging.INFO)
    warnings.filterwarnings("ignore", message="Converting a tensor with requires_grad=True to a scalar")
    settings = PtychiSettings(batch_size=args.batch_size, threads=args.threads, coverage_floor=args.coverage_floor)
    epochs_by_engine = {"lsqml": args.epochs, "epie": args.epie_epochs or args.epochs, "dm": args.dm_epochs or args.epochs}
    started = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    load_start = load_average_1min()
    if not args.no_warm_up:
        warm_up(args.scans[0], args.engines[0], settings)
    records = [run_one(scan, engine, epochs, settings, args.save_objects)
               for scan in args.scans for engine in args.engines for epochs in epochs_by_engine[engine]]
    import ptychi
    import torch

    meta = {
        "started": started, "finished": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "load_average_1min_start": load_start, "load_average_1min_end": load_average_1min(), "cpu_count": os.cpu_count(),
        "commit": git_commit(), "ptychi": ptychi.__version__, "torch": torch.__version__,
        "settings": asdict(settings), "warm_up": not args.no_warm_up, "command": " ".join(sys.argv),
    }
    for scan in args.scans:
        print(markdown_table([r for r in records if r["scan"] == str(scan)], f"{scan.name}"), end="\n\n")
    if len(args.scans) > 1:
        print(markdown_table(records, f"mean (min-max) over {len(args.scans)} scans"), end="\n\n")
    print(f"{started}, commit {meta['commit']}, ptychi {meta['ptychi']}, torch {meta['torch']}, "
          f"{settings.threads} torch thread(s), load average {load_start:.2f} -> {meta['load_average_1min_end']:.2f} "
          f"on {meta['cpu_count']} cores")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"meta": meta, "records": records}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
