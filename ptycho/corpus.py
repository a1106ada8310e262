"""A simulated training corpus made for generalisation, and held-out scans from families it never saw.

Each scan is drawn reproducibly from one integer seed: :func:`recipe` names a probe family, an object
family and a trajectory with their parameters, a dose and a number of points (a :class:`ScanRecipe`);
:func:`simulate_recipe` turns it into the NPZ contract arrays through :func:`ptycho.simulate.simulate_patterns`
(the forward model of :func:`ptycho.simulate.simulate_scan`).

Families (parameters in pixels of an ``N x N`` pattern; ranges scale with ``N``, quoted for ``N = 64``):

* probes (unit-norm ``(N, N)`` complex, a pupil Fourier-transformed then defocused by a quadratic phase):
  ``pinhole`` (circular pupil), ``zone_plate`` (annular pupil: a central stop), ``aberrated`` (circular pupil
  with astigmatism, coma, spherical aberration and trefoil), all shifted off-centre and with smooth pupil
  phase noise (figure errors); held out: ``kb_mirror`` (a Kirkpatrick-Baez pair: rectangular, separable pupil,
  different defocus in x and y, 1-D figure errors per mirror).
* objects (complex64, amplitude in (0, 1]): ``islands`` (:func:`ptycho.simulate.make_object`), ``fine_texture``,
  ``dead_leaves``, ``lines_edges`` (bars, polygons, Siemens stars), ``smooth_phase`` (weak to strong phase, up to
  2 pi: wraps, weak amplitude); held out: ``particles`` (cell-like domes with nuclei on an empty background); added later
  (``MORE_TRAIN_OBJECTS``, not in the shipped model's corpus): ``circuit`` (layers of axis-aligned wires and pads on a
  uniform substrate), ``grains`` (polycrystalline cells of constant phase and amplitude), ``porous`` (a solid with voids).
* trajectories: ``raster`` (rotated, jittered), ``random`` (uniform with a minimum distance); held out:
  ``fermat`` (Fermat spiral, golden angle). The step (mean nearest-neighbour distance) is
  ``(1 - overlap) * probe_width(probe)``, overlap 0.5 to 0.85.
* dose: log-uniform 1e4 to 1e8 photons per pattern, Poisson noise.

Training scans have even seeds, held-out scans odd ones: they never share a seed.

    python -m ptycho.corpus train --out DIR --n-scans 32 --seed 1
    python -m ptycho.corpus heldout --out DIR --n-per-kind 2 --seed 1000
"""

from __future__ import annotations

import argparse
import dataclasses
import json
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
import scipy.spatial

from .simulate import _place_in_object, existing_paths, make_object, save_scan_npz, simulate_patterns

logger = logging.getLogger(__name__)

GOLDEN_ANGLE = math.pi * (3 - math.sqrt(5))
DOSE_RANGE = (1e4, 1e8)
OVERLAP_RANGE = (0.5, 0.85)
ENCIRCLED_ENERGY = 0.9
MAX_PROBE_WIDTH = 0.5  # of N: drawn probes are at most N / 2 wide (probe_width), so the patterns stay oversampled

PROBE_FAMILIES = ("pinhole", "zone_plate", "aberrated", "kb_mirror")
OBJECT_FAMILIES = ("islands", "fine_texture", "dead_leaves", "lines_edges", "smooth_phase", "particles", "circuit", "grains", "porous")
TRAJECTORIES = ("raster", "random", "fermat")
# Built from images that ship with a package (scikit-image): for evaluation only, never in a training corpus.
EVALUATION_OBJECT_FAMILIES = ("photograph",)
PHOTOGRAPHS = ("camera", "astronaut", "moon", "brick", "grass", "gravel", "coffee", "immunohistochemistry")

TRAIN_PROBES = ("pinhole", "zone_plate", "aberrated")
TRAIN_OBJECTS = ("islands", "fine_texture", "dead_leaves", "lines_edges", "smooth_phase")
# Families added after the shipped model was trained (so its recipe, TRAIN_OBJECTS, is unchanged); the object network's
# corpus may use them. Never the held-out family.
MORE_TRAIN_OBJECTS = ("circuit", "grains", "porous")
TRAIN_TRAJECTORIES = ("raster", "random")
HELD_OUT_PROBE, HELD_OUT_OBJECT, HELD_OUT_TRAJECTORY = "kb_mirror", "particles", "fermat"
# Held-out kinds: which of the three draws comes from a family training never saw ("seen": none, fresh seeds).
HELD_OUT_KINDS = {
    "seen": (TRAIN_PROBES, TRAIN_OBJECTS, TRAIN_TRAJECTORIES),
    "probe": ((HELD_OUT_PROBE,), TRAIN_OBJECTS, TRAIN_TRAJECTORIES),
    "object": (TRAIN_PROBES, (HELD_OUT_OBJECT,), TRAIN_TRAJECTORIES),
    "trajectory": (TRAIN_PROBES, TRAIN_OBJECTS, (HELD_OUT_TRAJECTORY,)),
    "all": ((HELD_OUT_PROBE,), (HELD_OUT_OBJECT,), (HELD_OUT_TRAJECTORY,)),
}
# Kinds written only when asked for (they need an optional package): not in the default held-out set.
OPTIONAL_HELD_OUT_KINDS = {"photograph": (TRAIN_PROBES, EVALUATION_OBJECT_FAMILIES, TRAIN_TRAJECTORIES)}
FILE_PROBE_PREFIX = "file:"
_MAX_SCANS = 2**12  # per corpus (training) or per held-out kind: keeps the seed spaces apart


Params = tuple[tuple[str, object], ...]


@dataclass(frozen=True)
class ScanRecipe:
    """Everything that defines one simulated scan; :func:`simulate_recipe` realises it from ``seed``.

    ``*_params`` are ``(name, value)`` pairs (see :meth:`params`); ``object_size`` None means just what
    the scan needs.
    """

    seed: int
    probe: str
    probe_params: Params
    object: str
    object_params: Params
    trajectory: str
    trajectory_params: Params
    dose: float
    n_points: int
    N: int = 64
    poisson_noise: bool = True
    object_size: int | None = None

    def params(self, part: str) -> dict:
        """``probe``, ``object`` or ``trajectory`` parameters as a dict."""
        return dict(getattr(self, f"{part}_params"))

    def to_dict(self) -> dict:
        record = dataclasses.asdict(self)
        for part in ("probe", "object", "trajectory"):
            record[f"{part}_params"] = self.params(part)
        return record

    @classmethod
    def from_dict(cls, record: dict) -> ScanRecipe:
        record = dict(record)
        for part in ("probe", "object", "trajectory"):
            record[f"{part}_params"] = tuple(sorted(record[f"{part}_params"].items()))
        return cls(**record)


@dataclass(frozen=True)
class Realisation:
    """A recipe's probe (unit norm), object, positions (object pixels) and the derived step and width."""

    probe: np.ndarray
    object: np.ndarray
    xcoords: np.ndarray
    ycoords: np.ndarray
    probe_width: float
    step: float


def _streams(seed: int) -> list[np.random.Generator]:
    """Independent streams of one scan seed: recipe, probe, object, positions, noise."""
    return [np.random.default_rng(child) for child in np.random.SeedSequence(seed).spawn(5)]


def _log_uniform(rng: np.random.Generator, low: float, high: float) -> float:
    return float(math.exp(rng.uniform(math.log(low), math.log(high))))


def _params(**values) -> Params:
    return tuple(sorted((k, float(v) if isinstance(v, (float, np.floating)) else v) for k, v in values.items()))


# ---------------------------------------------------------------- probes


def _draw_probe_params(family: str, N: int, rng: np.random.Generator) -> Params:
    if family.startswith(FILE_PROBE_PREFIX):
        return ()
    common = dict(
        offset_x=rng.uniform(-N / 16, N / 16),
        offset_y=rng.uniform(-N / 16, N / 16),
        defocus_sign=int(rng.choice((-1, 1))),
    )
    if family == "pinhole":
        return _params(pupil_radius=rng.uniform(N / 8, N / 4), defocus_diameter=rng.uniform(0.2 * N, 0.45 * N),
                       pupil_noise_rad=rng.uniform(0, 0.6), **common)
    if family == "zone_plate":
        return _params(pupil_radius=rng.uniform(N / 6, N / 4), stop_fraction=rng.uniform(0.25, 0.55),
                       defocus_diameter=rng.uniform(0.2 * N, 0.45 * N), pupil_noise_rad=rng.uniform(0, 0.6), **common)
    if family == "aberrated":
        return _params(pupil_radius=rng.uniform(N / 6, N / 4), defocus_diameter=rng.uniform(0.15 * N, 0.35 * N),
                       astig_0=rng.uniform(-4, 4), astig_45=rng.uniform(-4, 4), coma_x=rng.uniform(-1.5, 1.5),
                       coma_y=rng.uniform(-1.5, 1.5), spherical=rng.uniform(-1, 1), trefoil_x=rng.uniform(-1.5, 1.5),
                       trefoil_y=rng.uniform(-1.5, 1.5), pupil_noise_rad=rng.uniform(0, 0.4), **common)
    if family == "kb_mirror":
        return _params(half_width_x=rng.uniform(N / 7, N / 4), half_width_y=rng.uniform(N / 7, N / 4),
                       defocus_diameter_x=rng.uniform(0.2 * N, 0.45 * N), defocus_diameter_y=rng.uniform(0.2 * N, 0.45 * N),
                       cubic_x=rng.uniform(-1.5, 1.5), cubic_y=rng.uniform(-1.5, 1.5),
                       figure_error_rad=rng.uniform(0, 0.6), **common)
    raise ValueError(f"unknown probe family {family!r}; choose from {PROBE_FAMILIES} or '{FILE_PROBE_PREFIX}<path.npy|npz>'")


def _frequencies(N: int) -> tuple[np.ndarray, np.ndarray]:
    """Frequency coordinates ``(ky, kx)`` in cycles per ``N`` pixels, in ``fft2`` order."""
    k = scipy.fft.fftfreq(N) * N
    return k[:, None] * np.ones((1, N)), np.ones((N, 1)) * k[None, :]


def _soft_disc(radius: np.ndarray, edge: float) -> np.ndarray:
    return 0.5 * (1 - np.tanh(radius / 1.0 - edge))


def _smooth_noise(shape: tuple[int, ...], sigma: float, rng: np.random.Generator) -> np.ndarray:
    field = scipy.ndimage.gaussian_filter(rng.standard_normal(shape), sigma, mode="wrap")
    return field / (field.std() + 1e-12)


def _defocus(k2: np.ndarray, diameter: float, pupil_radius: float, N: int) -> np.ndarray:
    """Quadratic pupil phase whose stationary points fill a disc of ``diameter`` pixels at the pupil edge."""
    return math.pi * diameter * k2 / (2 * N * pupil_radius)


def _probe_from_pupil(pupil: np.ndarray, p: dict, N: int) -> np.ndarray:
    ky, kx = _frequencies(N)
    pupil = pupil * np.exp(-2j * math.pi * (kx * p.get("offset_x", 0.0) + ky * p.get("offset_y", 0.0)) / N)
    probe = scipy.fft.fftshift(scipy.fft.ifft2(pupil))
    return probe / np.sqrt(np.sum(np.abs(probe) ** 2))


def make_family_probe(family: str, params: dict, N: int, rng: np.random.Generator) -> np.ndarray:
    """Unit-norm ``(N, N)`` complex128 probe of ``family`` (see the module docstring), centred on ``N // 2`` plus its offset."""
    if family.startswith(FILE_PROBE_PREFIX):
        return load_probe(family[len(FILE_PROBE_PREFIX):], N)
    ky, kx = _frequencies(N)
    k = np.hypot(ky, kx)
    sign = params.get("defocus_sign", 1)
    if family in ("pinhole", "zone_plate", "aberrated"):
        R = params["pupil_radius"]
        pupil = _soft_disc(k, R)
        if family == "zone_plate":
            pupil = pupil * (1 - _soft_disc(k, params["stop_fraction"] * R))
        phase = sign * _defocus(k**2, params["defocus_diameter"], R, N)
        if family == "aberrated":
            rho, theta = k / R, np.arctan2(ky, kx)
            phase = phase + (
                params["astig_0"] * rho**2 * np.cos(2 * theta) + params["astig_45"] * rho**2 * np.sin(2 * theta)
                + (3 * rho**3 - 2 * rho) * (params["coma_x"] * np.cos(theta) + params["coma_y"] * np.sin(theta))
                + params["spherical"] * (6 * rho**4 - 6 * rho**2 + 1)
                + rho**3 * (params["trefoil_x"] * np.cos(3 * theta) + params["trefoil_y"] * np.sin(3 * theta))
            )
        phase = phase + params["pupil_noise_rad"] * _smooth_noise((N, N), R / 4, rng)
        return _probe_from_pupil(pupil * np.exp(1j * phase), params, N)
    if family == "kb_mirror":
        ax, ay = params["half_width_x"], params["half_width_y"]
        px = 0.5 * (1 - np.tanh(np.abs(kx[0]) - ax))
        py = 0.5 * (1 - np.tanh(np.abs(ky[:, 0]) - ay))
        fx = kx[0] / ax
        fy = ky[:, 0] / ay
        error = params["figure_error_rad"]
        phase_x = sign * _defocus(kx[0] ** 2, params["defocus_diameter_x"], ax, N) + params["cubic_x"] * fx**3
        phase_y = sign * _defocus(ky[:, 0] ** 2, params["defocus_diameter_y"], ay, N) + params["cubic_y"] * fy**3
        phase_x = phase_x + error * _smooth_noise((N,), ax / 4, rng)
        phase_y = phase_y + error * _smooth_noise((N,), ay / 4, rng)
        pupil = np.outer(py * np.exp(1j * phase_y), px * np.exp(1j * phase_x))
        return _probe_from_pupil(pupil, params, N)
    raise ValueError(f"unknown probe family {family!r}; choose from {PROBE_FAMILIES}")


def load_probe(path: str | os.PathLike[str], N: int) -> np.ndarray:
    """Unit-norm ``(N, N)`` complex128 probe from a ``.npy`` or ``.npz`` (``probeGuess``, or its only member); no pickle.

    A ``(modes, N, N)`` stack gives its first mode.
    """
    path = Path(path)
    loaded = np.load(path, allow_pickle=False)
    if isinstance(loaded, np.ndarray):
        probe = loaded
    else:
        with loaded:
            names = list(loaded.files)
            key = "probeGuess" if "probeGuess" in names else names[0] if len(names) == 1 else None
            if key is None:
                raise ValueError(f"{path}: an NPZ probe needs a 'probeGuess' member or a single member, found {names}")
            probe = loaded[key]
    probe = np.asarray(probe)
    if probe.ndim == 3:
        probe = probe[0]
    if probe.shape != (N, N) or not np.iscomplexobj(probe):
        raise ValueError(f"{path}: probe must be a complex ({N}, {N}) array (or a mode stack of them), got {probe.dtype} {probe.shape}")
    probe = probe.astype(np.complex128)
    norm = np.sqrt(np.sum(np.abs(probe) ** 2))
    if not (np.isfinite(norm) and norm > 0):
        raise ValueError(f"{path}: probe must be finite and not all zero")
    return probe / norm


def probe_width(probe: np.ndarray, fraction: float = ENCIRCLED_ENERGY) -> float:
    """Diameter in pixels of the disc around the intensity centroid that holds ``fraction`` of the probe's energy.

    For a uniform disc of diameter D it is ``sqrt(fraction) * D``; for the default pinhole of
    :func:`ptycho.simulate.make_probe` with diameter 24 it is 24.1.
    """
    intensity = np.abs(np.asarray(probe)) ** 2
    total = intensity.sum()
    y, x = np.indices(intensity.shape)
    cy, cx = (intensity * y).sum() / total, (intensity * x).sum() / total
    radius = np.hypot(y - cy, x - cx).ravel()
    order = np.argsort(radius)
    cumulative = np.cumsum(intensity.ravel()[order]) / total
    return float(2 * radius[order][min(np.searchsorted(cumulative, fraction), radius.size - 1)])


# ---------------------------------------------------------------- objects


def _draw_object_params(family: str, N: int, rng: np.random.Generator) -> Params:
    if family == "islands":
        return _params(feature_px=rng.uniform(N / 20, N / 6), phase_scale_rad=rng.uniform(0.3, 2.0))
    if family == "fine_texture":
        return _params(correlation_px=rng.uniform(0.7, 2.0), amplitude_contrast=rng.uniform(0.02, 0.3),
                       phase_scale_rad=rng.uniform(0.2, 1.5))
    if family == "dead_leaves":
        return _params(min_radius=rng.uniform(1.5, 3.0), max_radius=rng.uniform(N / 8, N / 3),
                       amplitude_contrast=rng.uniform(0.05, 0.6), phase_max_rad=rng.uniform(0.3, 1.8 * math.pi))
    if family == "lines_edges":
        return _params(shapes_per_area=rng.uniform(2, 8), max_width=rng.uniform(2, 8),
                       phase_per_shape_rad=rng.uniform(0.2, 1.5), absorption_per_shape=rng.uniform(0.02, 0.4),
                       star_probability=rng.uniform(0, 1))
    if family == "smooth_phase":
        return _params(correlation_px=rng.uniform(N / 16, N / 4), phase_range_rad=_log_uniform(rng, 0.2, 2 * math.pi),
                       amplitude_contrast=rng.uniform(0, 0.1))
    if family == "circuit":
        return _params(wire_width_px=rng.uniform(1.5, 6.0), wires_per_area=rng.uniform(4, 16), layers=int(rng.integers(1, 4)),
                       phase_per_layer_rad=rng.uniform(0.3, 2.0), absorption_per_layer=rng.uniform(0.02, 0.4))
    if family == "grains":
        return _params(grain_px=rng.uniform(3, N / 3), phase_max_rad=rng.uniform(0.3, 2.5), amplitude_contrast=rng.uniform(0.02, 0.5))
    if family == "porous":
        return _params(correlation_px=rng.uniform(1.5, 8.0), void_fraction=rng.uniform(0.2, 0.6), phase_rad=rng.uniform(0.3, 2.5),
                       absorption=rng.uniform(0.02, 0.5))
    if family == "photograph":
        first, second = rng.choice(len(PHOTOGRAPHS), size=2, replace=False)
        return _params(amplitude_image=PHOTOGRAPHS[first], phase_image=PHOTOGRAPHS[second],
                       amplitude_contrast=rng.uniform(0.1, 0.5), phase_scale_rad=rng.uniform(0.3, 2.0),
                       crop_x=rng.uniform(), crop_y=rng.uniform())
    if family == "particles":
        return _params(mean_radius=rng.uniform(N / 16, N / 5), fill_fraction=rng.uniform(0.15, 0.5),
                       phase_rad=rng.uniform(0.5, 3.0), absorption=rng.uniform(0.02, 0.5))
    raise ValueError(f"unknown object family {family!r}; choose from {OBJECT_FAMILIES} (or {EVALUATION_OBJECT_FAMILIES} for evaluation)")


def _unit(field: np.ndarray) -> np.ndarray:
    return (field - field.mean()) / (field.std() + 1e-12)


def _finish(amplitude: np.ndarray, phase: np.ndarray) -> np.ndarray:
    amplitude = np.clip(amplitude, 0.02, 1.0)
    return (amplitude * np.exp(1j * phase)).astype(np.complex64)


def make_family_object(family: str, params: dict, size: int, rng: np.random.Generator) -> np.ndarray:
    """``(size, size)`` complex64 object of ``family`` (see the module docstring); amplitude in (0, 1]."""
    if family == "islands":
        return make_object(size, params["feature_px"], rng, params["phase_scale_rad"])
    if family == "fine_texture":
        sigma = params["correlation_px"]
        amplitude = 1 - params["amplitude_contrast"] * 0.5 * (1 + np.tanh(_unit(scipy.ndimage.gaussian_filter(rng.standard_normal((size, size)), sigma))))
        phase = params["phase_scale_rad"] * 0.5 * (1 + np.tanh(_unit(scipy.ndimage.gaussian_filter(rng.standard_normal((size, size)), sigma))))
        return _finish(amplitude, phase)
    if family == "dead_leaves":
        return _dead_leaves(size, params, rng)
    if family == "lines_edges":
        return _lines_edges(size, params, rng)
    if family == "smooth_phase":
        sigma = params["correlation_px"]
        thickness = 0.5 * (1 + np.tanh(1.2 * _unit(scipy.ndimage.gaussian_filter(rng.standard_normal((size, size)), sigma))))
        other = 0.5 * (1 + np.tanh(_unit(scipy.ndimage.gaussian_filter(rng.standard_normal((size, size)), sigma))))
        amplitude = 1 - params["amplitude_contrast"] * (0.5 * thickness + 0.5 * other)
        return _finish(amplitude, params["phase_range_rad"] * thickness)
    if family == "particles":
        return _particles(size, params, rng)
    if family == "circuit":
        return _circuit(size, params, rng)
    if family == "grains":
        return _grains(size, params, rng)
    if family == "porous":
        return _porous(size, params, rng)
    if family == "photograph":
        amplitude = _photograph(params["amplitude_image"], size, params["crop_x"], params["crop_y"])
        phase = _photograph(params["phase_image"], size, 1 - params["crop_x"], 1 - params["crop_y"])
        return _finish(1 - params["amplitude_contrast"] * amplitude, params["phase_scale_rad"] * phase)
    raise ValueError(f"unknown object family {family!r}; choose from {OBJECT_FAMILIES}")


def _dead_leaves(size: int, p: dict, rng: np.random.Generator) -> np.ndarray:
    """Discs of power-law radii (density ``r**-3``) placed front to back until every pixel is covered."""
    rmin, rmax = p["min_radius"], max(p["max_radius"], p["min_radius"] * 1.5)
    amplitude = np.full((size, size), np.nan)
    phase = np.zeros((size, size))
    covered = np.zeros((size, size), dtype=bool)
    y, x = np.ogrid[:size, :size]
    batch = 256
    for _ in range(200):
        u = rng.uniform(size=batch)
        radii = 1 / np.sqrt(rmin**-2 - u * (rmin**-2 - rmax**-2))  # inverse CDF of r**-3 on [rmin, rmax]
        centres = rng.uniform(-rmax, size + rmax, size=(batch, 2))
        transmission = 1 - p["amplitude_contrast"] * rng.uniform(size=batch)
        shift = p["phase_max_rad"] * rng.uniform(size=batch)
        for r, (cy, cx), a, ph in zip(radii, centres, transmission, shift):
            y0, y1 = max(int(cy - r), 0), min(int(cy + r) + 2, size)
            x0, x1 = max(int(cx - r), 0), min(int(cx + r) + 2, size)
            if y0 >= y1 or x0 >= x1:
                continue
            inside = (y[y0:y1] - cy) ** 2 + (x[:, x0:x1] - cx) ** 2 <= r * r
            new = inside & ~covered[y0:y1, x0:x1]
            amplitude[y0:y1, x0:x1][new] = a
            phase[y0:y1, x0:x1][new] = ph
            covered[y0:y1, x0:x1] |= inside
        if covered.all():
            break
    amplitude[~covered] = 1.0
    amplitude = scipy.ndimage.gaussian_filter(amplitude, 0.5)
    phase = scipy.ndimage.gaussian_filter(phase, 0.5)
    return _finish(amplitude, phase)


def _lines_edges(size: int, p: dict, rng: np.random.Generator) -> np.ndarray:
    """Bars, convex polygons and Siemens-star segments, antialiased; overlapping shapes add thickness."""
    yy, xx = np.indices((size, size), dtype=np.float64)
    thickness_phase = np.zeros((size, size))
    thickness_absorption = np.zeros((size, size))
    n_shapes = max(3, int(round(p["shapes_per_area"] * (size / 64) ** 2)))
    for _ in range(n_shapes):
        cy, cx = rng.uniform(0, size, size=2)
        kind = rng.uniform()
        if kind < 0.15 * p["star_probability"]:
            radius = rng.uniform(size / 8, size / 2)
            spokes = int(rng.integers(8, 37))
            r = np.hypot(yy - cy, xx - cx)
            theta = np.arctan2(yy - cy, xx - cx) + rng.uniform(0, 2 * math.pi)
            edge_distance = r * np.arcsin(np.sin(spokes * theta)) / spokes
            shape = np.clip(0.5 + edge_distance, 0, 1) * np.clip(radius - r + 0.5, 0, 1)
        elif kind < 0.6:
            angle = rng.uniform(0, math.pi)
            u = (xx - cx) * math.cos(angle) + (yy - cy) * math.sin(angle)
            v = -(xx - cx) * math.sin(angle) + (yy - cy) * math.cos(angle)
            length, width = rng.uniform(size / 8, size), rng.uniform(1, p["max_width"])
            distance = np.maximum(np.abs(u) - length / 2, np.abs(v) - width / 2)
            shape = np.clip(0.5 - distance, 0, 1)
        else:
            vertices = int(rng.integers(3, 8))
            radius = rng.uniform(3, size / 4)
            angles = np.sort(rng.uniform(0, 2 * math.pi, size=vertices))
            distance = np.full((size, size), -np.inf)
            corners = np.column_stack([cx + radius * np.cos(angles), cy + radius * np.sin(angles)])
            for (x0, y0), (x1, y1) in zip(corners, np.roll(corners, -1, axis=0)):
                ex, ey = x1 - x0, y1 - y0
                norm = math.hypot(ex, ey) or 1.0
                distance = np.maximum(distance, ((xx - x0) * ey - (yy - y0) * ex) / norm)  # outward: vertices are counter-clockwise
            shape = np.clip(0.5 - distance, 0, 1)
        thickness_phase += rng.uniform(0.3, 1.0) * p["phase_per_shape_rad"] * shape
        thickness_absorption += rng.uniform(0.3, 1.0) * p["absorption_per_shape"] * shape
    return _finish(np.exp(-thickness_absorption), thickness_phase)


def _photograph(name: str, size: int, crop_x: float, crop_y: float) -> np.ndarray:
    """A ``size x size`` window (at fractions ``crop_x``, ``crop_y`` of the free range) of a scikit-image picture, in [0, 1].

    Pictures smaller than ``size`` are enlarged first (cubic spline). Evaluation only.
    """
    try:
        import skimage.data
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ValueError("the 'photograph' object family needs scikit-image (evaluation only); install it or leave the kind out") from error
    image = np.asarray(getattr(skimage.data, name)(), dtype=np.float64)
    if image.ndim == 3:
        image = image[..., :3] @ np.array([0.2125, 0.7154, 0.0721])
    scale = size / min(image.shape)
    if scale > 1:
        image = scipy.ndimage.zoom(image, scale * 1.001, order=3)
    y0 = int(round(crop_y * (image.shape[0] - size)))
    x0 = int(round(crop_x * (image.shape[1] - size)))
    window = image[y0:y0 + size, x0:x0 + size]
    low, high = window.min(), window.max()
    return (window - low) / (high - low) if high > low else np.zeros_like(window)


def _particles(size: int, p: dict, rng: np.random.Generator) -> np.ndarray:
    """Cell-like particles: elliptical domes with a denser nucleus, on an empty background with faint texture."""
    yy, xx = np.indices((size, size), dtype=np.float64)
    thickness = np.zeros((size, size))
    mean_area = math.pi * p["mean_radius"] ** 2
    count = max(1, int(round(p["fill_fraction"] * size * size / mean_area)))
    for _ in range(count):
        cy, cx = rng.uniform(0, size, size=2)
        a = p["mean_radius"] * rng.uniform(0.6, 1.4)
        b = a * rng.uniform(0.5, 1.0)
        angle = rng.uniform(0, math.pi)
        u = (xx - cx) * math.cos(angle) + (yy - cy) * math.sin(angle)
        v = -(xx - cx) * math.sin(angle) + (yy - cy) * math.cos(angle)
        rho2 = (u / a) ** 2 + (v / b) ** 2
        dome = np.sqrt(np.clip(1 - rho2, 0, None))
        nucleus_scale = rng.uniform(0.25, 0.45)
        nu = (u - rng.uniform(-0.3, 0.3) * a) / (a * nucleus_scale)
        nv = (v - rng.uniform(-0.3, 0.3) * b) / (b * nucleus_scale)
        nucleus = np.sqrt(np.clip(1 - nu**2 - nv**2, 0, None))
        thickness = np.maximum(thickness, dome + 0.6 * nucleus * (rho2 < 1))
    thickness = scipy.ndimage.gaussian_filter(thickness, 0.5)
    texture = 0.03 * _unit(scipy.ndimage.gaussian_filter(rng.standard_normal((size, size)), 1.0))
    phase = p["phase_rad"] * thickness / 1.6 + texture
    amplitude = np.exp(-p["absorption"] * thickness / 1.6)
    return _finish(amplitude, phase)


def _circuit(size: int, p: dict, rng: np.random.Generator) -> np.ndarray:
    """Layers of axis-aligned wires (runs between random points of a routing grid) and square pads; each layer adds its
    thickness where it lies, on a uniform substrate."""
    width = p["wire_width_px"]
    pitch = max(2 * width, 3.0)
    thickness_phase = np.zeros((size, size))
    thickness_absorption = np.zeros((size, size))
    n_wires = max(2, int(round(p["wires_per_area"] * (size / 64) ** 2)))
    half = max(int(round(width / 2)), 1)
    for _ in range(int(p["layers"])):
        layer = np.zeros((size, size))
        for _ in range(n_wires):
            y, x = (np.round(rng.uniform(0, size, size=2) / pitch) * pitch).astype(int)
            length = int(rng.uniform(size / 8, size / 2))
            if rng.uniform() < 0.5:
                layer[max(y - half, 0):y + half, max(x, 0):x + length] = 1
            else:
                layer[max(y, 0):y + length, max(x - half, 0):x + half] = 1
            if rng.uniform() < 0.3:  # a pad at the wire's start
                pad = int(rng.uniform(2 * width, 4 * width))
                layer[max(y - pad // 2, 0):y + pad // 2, max(x - pad // 2, 0):x + pad // 2] = 1
        layer = scipy.ndimage.gaussian_filter(layer, 0.5)
        thickness_phase += rng.uniform(0.5, 1.0) * p["phase_per_layer_rad"] * layer
        thickness_absorption += rng.uniform(0.5, 1.0) * p["absorption_per_layer"] * layer
    return _finish(np.exp(-thickness_absorption), thickness_phase)


def _grains(size: int, p: dict, rng: np.random.Generator) -> np.ndarray:
    """Voronoi cells of mean side ``grain_px``, each of one phase and amplitude; boundaries slightly smoothed."""
    n_cells = max(2, int(round((size / p["grain_px"]) ** 2)))
    centres = rng.uniform(0, size, size=(n_cells, 2))
    yy, xx = np.indices((size, size), dtype=np.float64)
    _, label = scipy.spatial.cKDTree(centres).query(np.column_stack([yy.ravel(), xx.ravel()]))
    label = label.reshape(size, size)
    phase = scipy.ndimage.gaussian_filter(p["phase_max_rad"] * rng.uniform(size=n_cells)[label], 0.7)
    amplitude = scipy.ndimage.gaussian_filter(1 - p["amplitude_contrast"] * rng.uniform(size=n_cells)[label], 0.7)
    return _finish(amplitude, phase)


def _porous(size: int, p: dict, rng: np.random.Generator) -> np.ndarray:
    """A solid (smooth noise above the ``void_fraction`` quantile) with empty voids; its thickness rises away from the voids."""
    field = scipy.ndimage.gaussian_filter(rng.standard_normal((size, size)), p["correlation_px"])
    solid = field > np.quantile(field, p["void_fraction"])
    depth = scipy.ndimage.distance_transform_edt(solid)
    thickness = np.tanh(depth / max(p["correlation_px"], 1.0))
    thickness = scipy.ndimage.gaussian_filter(thickness, 0.5)
    return _finish(np.exp(-p["absorption"] * thickness), p["phase_rad"] * thickness)


# ---------------------------------------------------------------- trajectories


def _draw_trajectory_params(trajectory: str, rng: np.random.Generator) -> Params:
    overlap = rng.uniform(*OVERLAP_RANGE)
    if trajectory == "raster":
        return _params(overlap=overlap, jitter_fraction=rng.uniform(0, 0.2), angle_rad=rng.uniform(0, math.pi / 2))
    if trajectory == "random":
        return _params(overlap=overlap, min_distance_fraction=rng.uniform(0.5, 0.7))
    if trajectory == "fermat":
        return _params(overlap=overlap, angle_rad=rng.uniform(0, 2 * math.pi))
    raise ValueError(f"unknown trajectory {trajectory!r}; choose from {TRAJECTORIES}")


def mean_nearest_neighbour_distance(positions: np.ndarray) -> float:
    """Mean over points of the distance to the nearest other point."""
    distances, _ = scipy.spatial.cKDTree(positions).query(positions, k=2)
    return float(np.mean(distances[:, 1]))


def make_trajectory(trajectory: str, params: dict, n_points: int, step: float, rng: np.random.Generator) -> np.ndarray:
    """``(n_points, 2)`` positions ``(x, y)`` in pixels, centred on the origin, mean nearest-neighbour distance ``step``."""
    if n_points < 2:
        raise ValueError(f"n_points must be at least 2, got {n_points}")
    if trajectory == "raster":
        columns = math.ceil(math.sqrt(n_points))
        row, column = np.divmod(np.arange(n_points), columns)
        points = np.column_stack([column, row]).astype(np.float64)
        points += rng.uniform(-params["jitter_fraction"], params["jitter_fraction"], size=points.shape)
        c, s = math.cos(params["angle_rad"]), math.sin(params["angle_rad"])
        points = points @ np.array([[c, s], [-s, c]])
    elif trajectory == "random":
        points = _min_distance_points(n_points, params["min_distance_fraction"], rng)
    elif trajectory == "fermat":
        k = np.arange(n_points) + 0.5
        theta = k * GOLDEN_ANGLE + params["angle_rad"]
        points = np.column_stack([np.sqrt(k) * np.cos(theta), np.sqrt(k) * np.sin(theta)])
    else:
        raise ValueError(f"unknown trajectory {trajectory!r}; choose from {TRAJECTORIES}")
    points *= step / mean_nearest_neighbour_distance(points)
    return points - (points.min(axis=0) + points.max(axis=0)) / 2


def _min_distance_points(n: int, min_distance: float, rng: np.random.Generator) -> np.ndarray:
    """Dart throwing in a square of ``1.2 n`` unit cells: uniform points no closer than ``min_distance``."""
    side = math.sqrt(1.2 * n)
    cell = min_distance / math.sqrt(2)
    cells = int(math.ceil(side / cell))
    grid = -np.ones((cells + 4, cells + 4), dtype=np.int64)
    accepted = np.empty((n, 2))
    count = 0
    for _ in range(1000):
        for candidate in rng.uniform(0, side, size=(4 * n, 2)):
            gx, gy = int(candidate[0] / cell) + 2, int(candidate[1] / cell) + 2
            near = grid[gx - 2:gx + 3, gy - 2:gy + 3]
            near = near[near >= 0]
            if near.size and np.min(np.sum((accepted[near] - candidate) ** 2, axis=1)) < min_distance**2:
                continue
            grid[gx, gy] = count
            accepted[count] = candidate
            count += 1
            if count == n:
                return accepted
    raise RuntimeError(f"could not place {n} points at minimum distance {min_distance}")  # pragma: no cover


# ---------------------------------------------------------------- recipes


def recipe(
    seed: int,
    *,
    probe_families: Sequence[str] = TRAIN_PROBES,
    object_families: Sequence[str] = TRAIN_OBJECTS,
    trajectories: Sequence[str] = TRAIN_TRAJECTORIES,
    n_points: int = 512,
    N: int = 64,
    dose_range: tuple[float, float] = DOSE_RANGE,
    object_size: int | None = None,
) -> ScanRecipe:
    """The scan drawn from ``seed``: a family of each kind (uniformly), its parameters, a log-uniform dose."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    for name, chosen in (("probe_families", probe_families), ("object_families", object_families), ("trajectories", trajectories)):
        if not chosen:
            raise ValueError(f"{name} must name at least one family")
    rng = _streams(int(seed))[0]
    probe = str(probe_families[int(rng.integers(len(probe_families)))])
    obj = str(object_families[int(rng.integers(len(object_families)))])
    trajectory = str(trajectories[int(rng.integers(len(trajectories)))])
    probe_params = _draw_probe_params(probe, N, rng)
    for _ in range(50):  # redraw the rare probe wider than MAX_PROBE_WIDTH * N (aliased, undersampled patterns)
        if probe.startswith(FILE_PROBE_PREFIX):
            break
        if probe_width(make_family_probe(probe, dict(probe_params), N, _streams(int(seed))[1])) <= MAX_PROBE_WIDTH * N:
            break
        probe_params = _draw_probe_params(probe, N, rng)
    return ScanRecipe(
        seed=int(seed),
        probe=probe,
        probe_params=probe_params,
        object=obj,
        object_params=_draw_object_params(obj, N, rng),
        trajectory=trajectory,
        trajectory_params=_draw_trajectory_params(trajectory, rng),
        dose=_log_uniform(rng, *dose_range),
        n_points=int(n_points),
        N=int(N),
        object_size=object_size,
    )


def _probe_and_offsets(recipe: ScanRecipe) -> tuple[np.ndarray, float, float, np.ndarray]:
    _, probe_rng, _, position_rng, _ = _streams(recipe.seed)
    probe = make_family_probe(recipe.probe, recipe.params("probe"), recipe.N, probe_rng)
    width = probe_width(probe)
    step = (1 - recipe.params("trajectory")["overlap"]) * width
    offsets = make_trajectory(recipe.trajectory, recipe.params("trajectory"), recipe.n_points, step, position_rng)
    return probe, width, step, offsets


def scan_offsets(recipe: ScanRecipe) -> np.ndarray:
    """The recipe's positions centred on the origin (pixels), without building its object."""
    return _probe_and_offsets(recipe)[3]


def realise(recipe: ScanRecipe) -> Realisation:
    """The recipe's probe, positions (inside the object) and object, from its seed's streams."""
    object_rng = _streams(recipe.seed)[2]
    N = recipe.N
    probe, width, step, offsets = _probe_and_offsets(recipe)
    size = recipe.object_size or required_size(offsets, N)
    positions = _place_in_object(offsets, size, N)
    obj = make_family_object(recipe.object, recipe.params("object"), size, object_rng)
    return Realisation(probe=probe, object=obj, xcoords=positions[:, 0].copy(), ycoords=positions[:, 1].copy(),
                       probe_width=width, step=step)


def required_size(offsets: np.ndarray, N: int) -> int:
    """Smallest square object holding every patch of positions ``offsets`` centred on the origin."""
    return math.ceil(float(np.max(np.ptp(offsets, axis=0)))) + N + 2


def simulate_recipe(recipe: ScanRecipe, *, include_Y: bool = False) -> dict[str, np.ndarray]:
    """The NPZ contract arrays of the recipe's scan (keys of :func:`ptycho.simulate.simulate_scan`)."""
    started = time.perf_counter()
    scan = realise(recipe)
    arrays = simulate_patterns(
        scan.object, scan.probe.astype(np.complex64), scan.xcoords, scan.ycoords,
        nphotons=recipe.dose, noise_rng=_streams(recipe.seed)[4], poisson_noise=recipe.poisson_noise, include_Y=include_Y,
    )
    logger.debug("recipe %d (%s, %s, %s): %.2f s", recipe.seed, recipe.probe, recipe.object, recipe.trajectory,
                 time.perf_counter() - started)
    return arrays


def training_seed(corpus_seed: int, index: int) -> int:
    """Seed of training scan ``index`` of the corpus drawn from ``corpus_seed``: always even."""
    if not 0 <= index < _MAX_SCANS:
        raise ValueError(f"a corpus holds at most {_MAX_SCANS} scans, asked for index {index}")
    return 2 * (corpus_seed * _MAX_SCANS * 16 + index)


def held_out_seed(corpus_seed: int, kind_index: int, index: int) -> int:
    """Seed of held-out scan ``index`` of kind ``kind_index``: always odd, so never a training seed."""
    if not 0 <= index < _MAX_SCANS or not 0 <= kind_index < 16:
        raise ValueError(f"at most {_MAX_SCANS} held-out scans per kind and 16 kinds")
    return 2 * (corpus_seed * _MAX_SCANS * 16 + kind_index * _MAX_SCANS + index) + 1


def training_recipes(
    n_scans: int,
    seed: int,
    *,
    probe_families: Sequence[str] = TRAIN_PROBES,
    object_families: Sequence[str] = TRAIN_OBJECTS,
    trajectories: Sequence[str] = TRAIN_TRAJECTORIES,
    n_points: int = 512,
    N: int = 64,
    object_size: int | None = None,
) -> list[ScanRecipe]:
    """``n_scans`` training recipes from the given families (default: the training split), seeded by ``seed``.

    Families are balanced: each probe family, object family and trajectory is used ``n_scans / count``
    times (rounded), in an order shuffled by ``seed``.
    """
    if isinstance(n_scans, bool) or not isinstance(n_scans, int) or not 1 <= n_scans <= _MAX_SCANS:
        raise ValueError(f"n_scans must be an integer from 1 to {_MAX_SCANS}, got {n_scans!r}")
    evaluation_only = sorted(set(object_families) & set(EVALUATION_OBJECT_FAMILIES))
    if evaluation_only:
        raise ValueError(f"object families {evaluation_only} come from images shipped with packages and are for evaluation "
                         "only (held-out kind 'photograph'); leave them out of the training corpus")
    plan = _balanced_plan(n_scans, (probe_families, object_families, trajectories), ("training", seed))
    return [
        recipe(training_seed(seed, i), probe_families=(probe,), object_families=(obj,),
               trajectories=(trajectory,), n_points=n_points, N=N, object_size=object_size)
        for i, (probe, obj, trajectory) in enumerate(plan)
    ]


def _balanced_plan(n: int, families: Sequence[Sequence[str]], key: tuple[str, int]) -> list[tuple[str, ...]]:
    """``n`` tuples, one family of each list per tuple, every family of a list used equally often (+-1)."""
    for chosen in families:
        if not chosen:
            raise ValueError("every family list must name at least one family")
    rng = np.random.default_rng([sum(map(ord, key[0])), int(key[1])])
    columns = []
    for chosen in families:
        column: list[str] = []
        while len(column) < n:
            column.extend(str(chosen[j]) for j in rng.permutation(len(chosen)))
        columns.append(column[:n])
    return list(zip(*columns))


def held_out_recipes(
    n_per_kind: int,
    seed: int,
    *,
    kinds: Iterable[str] = tuple(HELD_OUT_KINDS),
    n_points: int = 512,
    N: int = 64,
) -> dict[str, list[ScanRecipe]]:
    """``n_per_kind`` held-out recipes per kind of :data:`HELD_OUT_KINDS` (odd seeds: never a training seed)."""
    if isinstance(n_per_kind, bool) or not isinstance(n_per_kind, int) or not 1 <= n_per_kind <= _MAX_SCANS:
        raise ValueError(f"n_per_kind must be an integer from 1 to {_MAX_SCANS}, got {n_per_kind!r}")
    every = {**HELD_OUT_KINDS, **OPTIONAL_HELD_OUT_KINDS}
    names = list(every)
    recipes = {}
    for kind in kinds:
        if kind not in every:
            raise ValueError(f"unknown held-out kind {kind!r}; choose from {names}")
        plan = _balanced_plan(n_per_kind, every[kind], (f"held-out {kind}", seed))
        recipes[kind] = [
            recipe(held_out_seed(seed, names.index(kind), i), probe_families=(probe,), object_families=(obj,),
                   trajectories=(trajectory,), n_points=n_points, N=N)
            for i, (probe, obj, trajectory) in enumerate(plan)
        ]
    return recipes


def write_recipes(directory: str | os.PathLike[str], named: Sequence[tuple[str, ScanRecipe]], *, include_Y: bool = False) -> list[Path]:
    """Write ``directory/<name>.npz`` per recipe (atomically) and ``directory/recipes.json``; returns the NPZ paths.

    ``recipes.json`` maps each file name to its recipe and the realised probe width, step and object size.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths, records = [], {}
    for name, one in named:
        arrays = simulate_recipe(one, include_Y=include_Y)
        path = save_scan_npz(directory / f"{name}.npz", arrays)
        paths.append(path)
        realised = realise_summary(one, arrays)
        records[path.name] = dict(recipe=one.to_dict(), **realised)
    manifest = directory / "recipes.json"
    temporary = manifest.with_name(f".{manifest.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps(records, indent=1, sort_keys=True) + "\n")
    os.replace(temporary, manifest)
    return paths


def realise_summary(one: ScanRecipe, arrays: dict[str, np.ndarray]) -> dict:
    """Realised numbers of a simulated recipe: probe width, mean nearest-neighbour step, overlap, object size."""
    unit = arrays["probeGuess"]
    width = probe_width(unit)
    step = mean_nearest_neighbour_distance(np.column_stack([arrays["xcoords"], arrays["ycoords"]]))
    return dict(probe_width_px=width, step_px=step, overlap=1 - step / width, object_size=int(arrays["objectGuess"].shape[0]))


def read_recipes(directory: str | os.PathLike[str]) -> dict[str, ScanRecipe]:
    """File name to recipe, from ``directory/recipes.json``."""
    records = json.loads((Path(directory) / "recipes.json").read_text())
    return {name: ScanRecipe.from_dict(record["recipe"]) for name, record in records.items()}


def write_training_corpus(directory, n_scans: int, seed: int, **families) -> list[Path]:
    """``training_recipes(n_scans, seed, **families)`` written as ``train<index:03d>.npz`` and ``recipes.json``."""
    return write_recipes(directory, named_training_recipes(n_scans, seed, **families))


def write_held_out(directory, n_per_kind: int, seed: int, **options) -> list[Path]:
    """``held_out_recipes(n_per_kind, seed, **options)`` written as ``heldout-<kind>-<index:02d>.npz`` and ``recipes.json``."""
    return write_recipes(directory, named_held_out_recipes(n_per_kind, seed, **options))


def named_training_recipes(n_scans: int, seed: int, **families) -> list[tuple[str, ScanRecipe]]:
    """``[(train<index:03d>, recipe)]`` of :func:`training_recipes`: the files :func:`write_training_corpus` writes."""
    return [(f"train{i:03d}", r) for i, r in enumerate(training_recipes(n_scans, seed, **families))]


def named_held_out_recipes(n_per_kind: int, seed: int, **options) -> list[tuple[str, ScanRecipe]]:
    """``[(heldout-<kind>-<index:02d>, recipe)]`` of :func:`held_out_recipes`: the files :func:`write_held_out` writes."""
    recipes = held_out_recipes(n_per_kind, seed, **options)
    return [(f"heldout-{kind}-{i:02d}", r) for kind, group in recipes.items() for i, r in enumerate(group)]


# ---------------------------------------------------------------- command line


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ptycho.corpus", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train", help="write a training corpus (training families by default)")
    train.add_argument("--out", type=Path, required=True, help="directory for the NPZ scans and recipes.json")
    train.add_argument("--n-scans", type=int, default=32)
    train.add_argument("--seed", type=int, default=1)
    train.add_argument("--probes", nargs="+", default=list(TRAIN_PROBES),
                       help=f"probe families ({', '.join(PROBE_FAMILIES)}) or {FILE_PROBE_PREFIX}PATH.npy")
    train.add_argument("--objects", nargs="+", default=list(TRAIN_OBJECTS), choices=OBJECT_FAMILIES)
    train.add_argument("--trajectories", nargs="+", default=list(TRAIN_TRAJECTORIES), choices=TRAJECTORIES)
    held = commands.add_parser("heldout", help="write held-out scans, per kind, from families training never saw")
    held.add_argument("--out", type=Path, required=True)
    held.add_argument("--n-per-kind", type=int, default=2)
    held.add_argument("--seed", type=int, default=1000)
    held.add_argument("--kinds", nargs="+", default=list(HELD_OUT_KINDS), choices=[*HELD_OUT_KINDS, *OPTIONAL_HELD_OUT_KINDS],
                      help="default: every kind but the optional 'photograph' (scikit-image pictures, evaluation only)")
    for sub in (train, held):
        sub.add_argument("--n-points", type=int, default=512, help="scan points per scan")
        sub.add_argument("--N", type=int, default=64, help="pattern side in pixels")
        sub.add_argument("--overwrite", action="store_true", help="replace scans and recipes.json already in --out (refused without it)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    parser = _build_parser()
    args = parser.parse_args(argv)
    started = time.perf_counter()
    try:
        if args.command == "train":
            named = named_training_recipes(args.n_scans, args.seed, probe_families=tuple(args.probes), object_families=tuple(args.objects),
                                           trajectories=tuple(args.trajectories), n_points=args.n_points, N=args.N)
        else:
            named = named_held_out_recipes(args.n_per_kind, args.seed, kinds=tuple(args.kinds), n_points=args.n_points, N=args.N)
        if args.out.exists() and not args.out.is_dir():
            raise ValueError(f"--out {args.out} is a file; the corpus is written into a directory: choose another --out")
        existing, listed = existing_paths([*(args.out / f"{name}.npz" for name, _ in named), args.out / "recipes.json"])
        if existing and not args.overwrite:  # refused before anything is simulated: a measured scan, an earlier corpus
            one = len(existing) == 1
            raise ValueError(f"--out: {listed} {'exists' if one else 'exist'}; pass --overwrite to replace {'it' if one else 'them'}, "
                             "or choose another --out")
        paths = write_recipes(args.out, named)
    except (ValueError, OSError) as error:
        parser.error(str(error))
    logger.info("%s: %d scans and recipes.json in %.1f s", args.out, len(paths), time.perf_counter() - started)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
