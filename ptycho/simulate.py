"""Deterministic ptychography forward model that writes the NPZ data contract."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.fft
import scipy.ndimage

from .patches import extract_patches

logger = logging.getLogger(__name__)

DIFFRACTION_KEYS = ("diffraction", "diff3d")


def _require_int(name: str, value: object, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _require_positive(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{name} must be a positive number, got {value!r}")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")


@dataclass(frozen=True)
class SimulationSettings:
    """Parameters of a simulated scan; ``None`` fields take the defaults derived from ``N``.

    Positions are a row-major raster with ``ceil(sqrt(n_points))`` columns and spacing
    ``step`` (default ``N / 8``), each coordinate displaced by a uniform draw in
    ``[-jitter, jitter]`` (default ``step / 10``). The probe is a defocused pinhole whose
    geometric beam diameter is ``probe_diameter`` (default ``3 N / 8``). ``object_size``
    (default: just large enough for the scan) is the side of the square object. Counts are
    scaled so a pattern holds ``nphotons`` on average; ``poisson_noise=False`` stores the
    noise-free amplitude. ``include_Y`` adds the object patches as ``Y``. ``chunk_size``
    bounds the patterns processed at once and does not change the result. The object is a
    family of smooth islands with fine texture: ``feature_size_px`` (default ``N / 10``) is the
    smoothing length of the islands, ``phase_scale_rad`` the phase the islands add.
    """

    n_points: int
    N: int = 64
    object_size: int | None = None
    step: float | None = None
    jitter: float | None = None
    probe_diameter: float | None = None
    nphotons: float = 1e6
    poisson_noise: bool = True
    seed: int = 0
    include_Y: bool = False
    chunk_size: int = 2048
    feature_size_px: float | None = None
    phase_scale_rad: float = 0.8

    def __post_init__(self) -> None:
        _require_int("n_points", self.n_points, minimum=1)
        _require_int("N", self.N, minimum=8)
        _require_int("chunk_size", self.chunk_size, minimum=1)
        _require_int("seed", self.seed, minimum=0)
        if self.object_size is not None:
            _require_int("object_size", self.object_size, minimum=self.N + 2)
        if self.step is not None:
            _require_positive("step", self.step)
        if self.jitter is not None and not (math.isfinite(self.jitter) and self.jitter >= 0):
            raise ValueError(f"jitter must be a finite number >= 0 pixels, got {self.jitter!r}")
        if self.probe_diameter is not None:
            _require_positive("probe_diameter", self.probe_diameter)
            if self.probe_diameter > self.N / 2:
                raise ValueError(
                    f"probe_diameter must be at most N / 2 = {self.N / 2} pixels so the "
                    f"patterns are oversampled, got {self.probe_diameter}"
                )
        _require_positive("nphotons", self.nphotons)
        if self.feature_size_px is not None:
            _require_positive("feature_size_px", self.feature_size_px)
        if isinstance(self.phase_scale_rad, bool) or not isinstance(self.phase_scale_rad, (int, float)) or not math.isfinite(self.phase_scale_rad):
            raise ValueError(f"phase_scale_rad must be a finite number of radians, got {self.phase_scale_rad!r}")

    @property
    def scan_step(self) -> float:
        """Raster spacing in pixels."""
        return float(self.step) if self.step is not None else self.N / 8

    @property
    def scan_jitter(self) -> float:
        """Largest displacement of a position from its raster site, per coordinate."""
        return float(self.jitter) if self.jitter is not None else self.scan_step / 10

    @property
    def object_feature_px(self) -> float:
        """Smoothing length of the object's islands in pixels."""
        return float(self.feature_size_px) if self.feature_size_px is not None else self.N / 10

    @property
    def beam_diameter(self) -> float:
        """Geometric diameter of the probe in pixels."""
        return float(self.probe_diameter) if self.probe_diameter is not None else 3 * self.N / 8


PRESETS: dict[str, SimulationSettings] = {
    "embedded": SimulationSettings(
        n_points=512,
        N=64,
        step=8.0,
        jitter=0.8,
        probe_diameter=24.0,
        nphotons=1e6,
        seed=0,
    ),
}


def make_probe(N: int, diameter: float) -> np.ndarray:
    """Unit-norm ``(N, N)`` complex128 defocused-pinhole probe centred on pixel ``N // 2``.

    A soft-edged circular pupil of radius ``N / 4`` frequency pixels carries a quadratic
    (defocus) phase whose stationary points fill a disc of the given diameter.
    """
    freq = scipy.fft.fftfreq(N) * N
    radius = np.hypot(freq[:, None], freq[None, :])
    pupil_radius = N / 4
    pupil = 0.5 * (1 - np.tanh((radius - pupil_radius) / 1.0))
    curvature = math.pi * pupil_radius * (diameter / 2) / N
    field = pupil * np.exp(1j * curvature * (radius / pupil_radius) ** 2)
    probe = scipy.fft.fftshift(scipy.fft.ifft2(field))
    return probe / np.sqrt(np.sum(np.abs(probe) ** 2))


def make_object(size: int, feature_px: float, rng: np.random.Generator, phase_scale_rad: float = 0.8) -> np.ndarray:
    """``(size, size)`` complex64 object: islands of smoothing length ``feature_px`` plus fine texture.

    Amplitude in (0, 1]; phase from ``-0.15`` to about ``phase_scale_rad + 0.15`` rad.
    """
    features_amplitude = _blobs(size, feature_px, rng)
    features_phase = _blobs(size, feature_px, rng)
    texture_amplitude = np.tanh(_unit_field(size, 1.0, rng))
    texture_phase = np.tanh(_unit_field(size, 1.0, rng))
    amplitude = 0.9 - 0.35 * features_amplitude + 0.08 * texture_amplitude
    phase = phase_scale_rad * features_phase + 0.15 * texture_phase
    return (amplitude * np.exp(1j * phase)).astype(np.complex64)


def _unit_field(size: int, sigma: float, rng: np.random.Generator) -> np.ndarray:
    field = scipy.ndimage.gaussian_filter(rng.standard_normal((size, size)), sigma)
    return (field - field.mean()) / field.std()


def _blobs(size: int, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Smooth random field pushed through a steep sigmoid: islands with soft edges, in (0, 1)."""
    return 0.5 * (1 + np.tanh(2.5 * _unit_field(size, sigma, rng)))


def raster_positions(settings: SimulationSettings, rng: np.random.Generator) -> np.ndarray:
    """``(n_points, 2)`` jittered raster ``(x, y)`` in pixels, centred on the origin."""
    n = settings.n_points
    columns = math.ceil(math.sqrt(n))
    rows = math.ceil(n / columns)
    row, column = np.divmod(np.arange(n), columns)
    step = settings.scan_step
    nominal = np.column_stack([column * step, row * step]).astype(np.float64)
    nominal -= np.array([(columns - 1) * step, (rows - 1) * step]) / 2
    jitter = rng.uniform(-settings.scan_jitter, settings.scan_jitter, size=(n, 2))
    return nominal + jitter


def required_object_size(settings: SimulationSettings) -> int:
    """Smallest square object that holds every patch of the scan."""
    columns = math.ceil(math.sqrt(settings.n_points))
    rows = math.ceil(settings.n_points / columns)
    extent = (max(columns, rows) - 1) * settings.scan_step + 2 * settings.scan_jitter
    return math.ceil(extent) + settings.N + 2


def patch_centre_bounds(object_size: int, N: int) -> tuple[float, float]:
    """Range of patch centres whose bilinear ``N x N`` window lies inside the object."""
    return float(N // 2), float(object_size - 1 - N + N // 2)


def _place_in_object(offsets: np.ndarray, object_size: int, N: int) -> np.ndarray:
    low, high = patch_centre_bounds(object_size, N)
    positions = offsets + (low + high) / 2
    if positions.min() < low or positions.max() > high:
        raise ValueError(
            f"object_size={object_size} is too small for this scan: positions span "
            f"[{positions.min():.1f}, {positions.max():.1f}] but must stay in "
            f"[{low}, {high}]; use object_size=None or a larger object_size"
        )
    return positions


def simulate_scan(settings: SimulationSettings) -> dict[str, np.ndarray]:
    """Simulate a scan and return the NPZ contract arrays.

    Diffraction is the amplitude ``|fftshift(fft2(probeGuess * patch, norm='ortho'))|`` of each
    object patch (``extract_patches(objectGuess, xcoords, ycoords, N)``), with Poisson noise
    on the counts unless disabled. ``probeGuess`` carries the photon scale: noise-free, the
    mean of ``sum(amplitude**2)`` over patterns equals ``nphotons``.
    """
    started = time.perf_counter()
    object_rng, scan_rng, noise_rng = (
        np.random.default_rng(child) for child in np.random.SeedSequence(settings.seed).spawn(3)
    )
    N = settings.N
    object_size = settings.object_size or required_object_size(settings)
    positions = _place_in_object(raster_positions(settings, scan_rng), object_size, N)
    if settings.scan_step >= settings.beam_diameter:
        logger.warning(
            "step %.3g >= probe diameter %.3g: neighbouring positions do not overlap",
            settings.scan_step,
            settings.beam_diameter,
        )
    obj = make_object(object_size, settings.object_feature_px, object_rng, settings.phase_scale_rad)
    unit_probe = make_probe(N, settings.beam_diameter).astype(np.complex64)
    arrays = simulate_patterns(
        obj, unit_probe, positions[:, 0], positions[:, 1],
        nphotons=settings.nphotons, noise_rng=noise_rng, poisson_noise=settings.poisson_noise,
        include_Y=settings.include_Y, chunk_size=settings.chunk_size,
    )
    logger.info(
        "simulated %d patterns of %dx%d on a %dx%d object in %.2f s",
        settings.n_points, N, N, object_size, object_size, time.perf_counter() - started,
    )
    return arrays


def simulate_patterns(
    obj: np.ndarray,
    unit_probe: np.ndarray,
    xcoords: np.ndarray,
    ycoords: np.ndarray,
    *,
    nphotons: float,
    noise_rng: np.random.Generator,
    poisson_noise: bool = True,
    include_Y: bool = False,
    chunk_size: int = 2048,
) -> dict[str, np.ndarray]:
    """The forward model of :func:`simulate_scan` for a given object, probe and positions.

    ``obj`` is a complex64 ``(M, M)`` object, ``unit_probe`` a complex64 ``(N, N)`` probe (its norm
    does not matter: the counts are scaled so the noise-free mean of ``sum(amplitude**2)`` over
    patterns is ``nphotons``), ``xcoords``/``ycoords`` the patch centres in object pixels (inside
    :func:`patch_centre_bounds`). Returns the NPZ contract arrays.
    """
    _require_positive("nphotons", nphotons)
    _require_int("chunk_size", chunk_size, minimum=1)
    xcoords = np.ascontiguousarray(xcoords, dtype=np.float64)
    ycoords = np.ascontiguousarray(ycoords, dtype=np.float64)
    N = unit_probe.shape[-1]
    if unit_probe.shape != (N, N) or xcoords.shape != ycoords.shape or xcoords.ndim != 1:
        raise ValueError(f"need an (N, N) probe and equal 1-D coordinates, got {unit_probe.shape}, {xcoords.shape}, {ycoords.shape}")
    diffraction, energies, patches = _unit_intensities(obj, unit_probe, xcoords, ycoords, N, include_Y, chunk_size)
    scale = nphotons / float(np.mean(energies))
    _intensities_to_amplitudes(diffraction, scale, noise_rng, poisson_noise, chunk_size)

    arrays = {
        "xcoords": xcoords,
        "ycoords": ycoords,
        "xcoords_start": xcoords.copy(),
        "ycoords_start": ycoords.copy(),
        "diffraction": diffraction,
        "probeGuess": (unit_probe.astype(np.complex128) * math.sqrt(scale)).astype(np.complex64),
        "objectGuess": obj,
        "scan_index": np.zeros(xcoords.shape[0], dtype=np.int64),
    }
    if patches is not None:
        arrays["Y"] = patches
    return arrays


def _chunks(n: int, chunk_size: int) -> list[slice]:
    return [slice(start, min(start + chunk_size, n)) for start in range(0, n, chunk_size)]


def _unit_intensities(
    obj: np.ndarray,
    probe: np.ndarray,
    xcoords: np.ndarray,
    ycoords: np.ndarray,
    N: int,
    include_Y: bool,
    chunk_size: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Centred far-field intensities for the unit probe, their sums, and the patches if asked."""
    n = xcoords.shape[0]
    intensities = np.empty((n, N, N), dtype=np.float32)
    energies = np.empty(n, dtype=np.float64)
    patches = np.empty((n, N, N), dtype=np.complex64) if include_Y else None
    shifted_probe = probe * _centring_modulation(N) if N % 2 == 0 else probe
    for chunk in _chunks(n, chunk_size):
        patch = extract_patches(obj, xcoords[chunk], ycoords[chunk], N)
        if patches is not None:
            patches[chunk] = patch
        patch *= shifted_probe
        far_field = scipy.fft.fft2(patch, norm="ortho", overwrite_x=True, workers=-1)
        del patch
        intensity = np.square(far_field.real)
        intensity += np.square(far_field.imag)
        del far_field
        if N % 2:
            intensity = scipy.fft.fftshift(intensity, axes=(1, 2))
        energies[chunk] = intensity.sum(axis=(1, 2), dtype=np.float64)
        intensities[chunk] = intensity
    return intensities, energies, patches


def _centring_modulation(N: int) -> np.ndarray:
    """``(-1) ** (i + j)``: for even ``N`` it moves the zero frequency of ``fft2`` to ``N // 2``."""
    sign = 1 - 2 * (np.arange(N) % 2)
    return np.outer(sign, sign).astype(np.complex64)


def _intensities_to_amplitudes(
    intensities: np.ndarray,
    scale: float,
    rng: np.random.Generator,
    poisson_noise: bool,
    chunk_size: int,
) -> None:
    """Scale to photon counts, draw Poisson counts if asked, store amplitudes in place."""
    for chunk in _chunks(intensities.shape[0], chunk_size):
        expected = intensities[chunk].astype(np.float64)
        expected *= scale
        counts = rng.poisson(expected) if poisson_noise else expected
        intensities[chunk] = np.sqrt(counts)


def write_scan_npz(
    path: str | os.PathLike[str],
    settings: SimulationSettings,
    *,
    compressed: bool = True,
    diffraction_key: str = "diffraction",
) -> Path:
    """Simulate a scan and write it as an NPZ at exactly ``path``; returns that path.

    The diffraction stack exists once in memory and is streamed into the archive. The file
    appears atomically (written beside ``path``, then renamed).
    """
    if diffraction_key not in DIFFRACTION_KEYS:
        raise ValueError(
            f"diffraction_key must be one of {DIFFRACTION_KEYS}, got {diffraction_key!r}"
        )
    arrays = simulate_scan(settings)
    arrays[diffraction_key] = arrays.pop("diffraction")
    return save_scan_npz(path, arrays, compressed=compressed)


def save_scan_npz(path: str | os.PathLike[str], arrays: dict[str, np.ndarray], *, compressed: bool = True) -> Path:
    """Write ``arrays`` as an NPZ at exactly ``path`` atomically (beside it, then renamed); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save = np.savez_compressed if compressed else np.savez
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(temporary, "wb") as stream:
            save(stream, **arrays)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    logger.info("wrote %s (%d bytes)", path, path.stat().st_size)
    return path


def corpus_settings(n_scans: int, seed: int, base: SimulationSettings = PRESETS["embedded"]) -> list[SimulationSettings]:
    """``n_scans`` scans in ``base``'s regime with other objects, doses and positions, reproducible from ``seed``.

    Each scan has its own simulation seed (its object, jitter and noise) and draws its raster step
    within +-12.5 % of ``base``'s, its jitter between 0.5 and 1.5 times ``base``'s and its dose
    log-uniformly within a factor 10 of ``base.nphotons`` either way. Probe, pattern size and
    object family stay ``base``'s.
    """
    _require_int("n_scans", n_scans, minimum=1)
    rng = np.random.default_rng(seed)
    scan_seeds = rng.integers(0, 2**31 - 1, size=n_scans)
    step = rng.uniform(0.875, 1.125, size=n_scans) * base.scan_step
    jitter = rng.uniform(0.5, 1.5, size=n_scans) * base.scan_jitter
    dose = base.nphotons * 10 ** rng.uniform(-1, 1, size=n_scans)
    return [
        dataclasses.replace(base, seed=int(s), step=float(st), jitter=float(j), nphotons=float(d))
        for s, st, j, d in zip(scan_seeds, step, jitter, dose)
    ]


CORPUS_PREFIX = "scan"  # write_corpus's file names: scan000.npz, scan001.npz, ...


def corpus_paths(directory: str | os.PathLike[str], n_scans: int, prefix: str = CORPUS_PREFIX) -> list[Path]:
    """The files :func:`write_corpus` writes for ``n_scans`` scans: ``directory/<prefix><index:03d>.npz``."""
    return [Path(directory) / f"{prefix}{index:03d}.npz" for index in range(n_scans)]


def write_corpus(directory: str | os.PathLike[str], settings: Sequence[SimulationSettings], *, prefix: str = CORPUS_PREFIX) -> list[Path]:
    """Write one NPZ per settings at :func:`corpus_paths`; returns the paths."""
    return [write_scan_npz(path, one) for path, one in zip(corpus_paths(directory, len(settings), prefix), settings)]


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m ptycho.simulate",
        description="Simulate a ptychography scan and write it as an NPZ (the data contract).",
    )
    parser.add_argument("--preset", choices=sorted(PRESETS), help="start from a named preset")
    parser.add_argument("--n-points", type=int, help="number of scan positions")
    parser.add_argument("--N", type=int, help="diffraction pattern side in pixels")
    parser.add_argument("--object-size", type=int, help="object side in pixels")
    parser.add_argument("--step", type=float, help="raster step in pixels")
    parser.add_argument("--jitter", type=float, help="maximum position jitter in pixels")
    parser.add_argument("--probe-diameter", type=float, help="probe diameter in pixels")
    parser.add_argument("--nphotons", type=float, help="mean counts per pattern")
    parser.add_argument("--seed", type=int, help="random seed")
    parser.add_argument("--feature-size", type=float, dest="feature_size_px", help="smoothing length of the object's islands in pixels (default N/10)")
    parser.add_argument("--phase-scale", type=float, dest="phase_scale_rad", help="phase added by the object's islands in radians (default 0.8)")
    parser.add_argument("--corpus", type=int, metavar="N_SCANS",
                        help="write N_SCANS scans with other objects, doses and positions into the directory --out (seeded by --seed)")
    parser.add_argument("--noise-free", action="store_true", help="no Poisson noise")
    parser.add_argument("--with-Y", action="store_true", help="also store the object patches as Y")
    parser.add_argument("--chunk-size", type=int, help="patterns simulated at once")
    parser.add_argument("--diffraction-key", choices=DIFFRACTION_KEYS, default="diffraction")
    parser.add_argument("--uncompressed", action="store_true", help="write with np.savez")
    parser.add_argument("--out", required=True, type=Path, help="output .npz path (a directory with --corpus)")
    parser.add_argument("--overwrite", action="store_true", help="replace the file(s) at --out (refused without it)")
    return parser


def settings_from_args(args: argparse.Namespace) -> SimulationSettings:
    """Settings of a preset (if any) overridden by the options given on the command line."""
    overrides = {
        field: getattr(args, field)
        for field in ("n_points", "N", "object_size", "step", "jitter", "probe_diameter",
                      "nphotons", "seed", "chunk_size", "feature_size_px", "phase_scale_rad")
        if getattr(args, field) is not None
    }
    if args.noise_free:
        overrides["poisson_noise"] = False
    if args.with_Y:
        overrides["include_Y"] = True
    if args.preset is not None:
        return dataclasses.replace(PRESETS[args.preset], **overrides)
    if "n_points" not in overrides:
        raise ValueError("give --n-points or --preset")
    return SimulationSettings(**overrides)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    parser = _build_parser()
    args = parser.parse_args(argv)
    _check_out(parser, args.out, corpus=args.corpus is not None)
    _check_not_replacing(parser, args)
    if args.corpus is not None:
        return _write_corpus_from_args(parser, args)
    try:
        settings = settings_from_args(args)
        path = write_scan_npz(
            args.out,
            settings,
            compressed=not args.uncompressed,
            diffraction_key=args.diffraction_key,
        )
    except ValueError as error:
        parser.error(str(error))
    logger.info(
        "%s: %d patterns of %dx%d under %r, %.1f MB",
        path, settings.n_points, settings.N, settings.N, args.diffraction_key, path.stat().st_size / 1e6,
    )
    return 0


def _check_out(parser: argparse.ArgumentParser, out: Path, *, corpus: bool) -> None:
    """Refuse, before any simulation, an ``--out`` that cannot be written: a directory for one scan, a file for a corpus,
    or a path below a file."""
    if not corpus and out.is_dir():
        parser.error(f"--out {out} is a directory; give the scan's file name, e.g. {out / 'scan.npz'} (or --corpus N to write N scans into it)")
    if corpus and out.exists() and not out.is_dir():
        parser.error(f"--out {out} is a file; --corpus writes its scans into a directory: choose another --out")
    for parent in (out if corpus else out.parent, *(out if corpus else out.parent).parents):
        if parent.exists() and not parent.is_dir():
            parser.error(f"--out {out}: {parent} is a file, not a directory; choose another --out")


def existing_paths(paths: Iterable[Path]) -> tuple[list[Path], str]:
    """The ``paths`` that exist (a file, a directory or a link), and the first three of them listed for a message."""
    existing = [path for path in paths if path.exists() or path.is_symlink()]
    return existing, ", ".join(str(path) for path in existing[:3]) + (f" and {len(existing) - 3} more" if len(existing) > 3 else "")


def _check_not_replacing(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse, before any simulation, to replace an existing file (a measured scan, say) without ``--overwrite``."""
    if args.overwrite:
        return
    existing, listed = existing_paths(corpus_paths(args.out, args.corpus) if args.corpus is not None else [args.out])
    if existing:
        parser.error(f"--out: {listed} exists; pass --overwrite to replace it with a simulated scan, or choose another --out")


def _write_corpus_from_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    try:
        base = settings_from_args(args) if args.preset or args.n_points else PRESETS["embedded"]
        paths = write_corpus(args.out, corpus_settings(args.corpus, base.seed if args.seed is None else args.seed, base))
    except ValueError as error:
        parser.error(str(error))
    logger.info("%s: %d scans of %d patterns", args.out, len(paths), base.n_points)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
