"""Builders for the plugin tests and benchmark: Ptychodus settings, products and payloads made with Ptychodus's own code."""

from __future__ import annotations

import functools
import multiprocessing
import pickle
import queue as queue_module
from pathlib import Path

import numpy as np
from scipy.ndimage import map_coordinates

from ptychodus.api.geometry import PixelGeometry
from ptychodus.api.io import save_ptychopinn_training_data
from ptychodus.api.object import Object, ObjectCenter, compute_object_geometry
from ptychodus.api.probe import ProbeSequence
from ptychodus.api.probe_positions import ProbePosition, ProbePositionSequence
from ptychodus.api.product import Product, ProductMetadata
from ptychodus.api.reconstruct import ReconstructInput
from ptychodus.api.settings import SettingsRegistry

ROOT = Path(__file__).resolve().parents[2]
SIM_SMALL = ROOT / "datasets" / "sim_small.npz"
PIXEL_M = 10e-9
BAD_PIXELS = ((0, 0), (12, 50), (33, 30))


@functools.cache
def sim_small() -> dict[str, np.ndarray]:
    with np.load(SIM_SMALL, allow_pickle=False) as data:
        return {key: data[key] for key in data.files}


def plugin_settings(mode: str = "Unsupervised", **values):
    """Ptychodus's four PtychoPINN-Torch settings groups, with ``values`` set by parameter name, and a builder for them."""
    from ptychodus.model.ptychopinn_torch.settings import (
        PtychoPINNTorchDataSettings,
        PtychoPINNTorchInferenceSettings,
        PtychoPINNTorchModelSettings,
        PtychoPINNTorchTrainingSettings,
    )

    registry = SettingsRegistry()
    groups = (
        PtychoPINNTorchDataSettings(registry),
        PtychoPINNTorchModelSettings(registry),
        PtychoPINNTorchTrainingSettings(registry),
        PtychoPINNTorchInferenceSettings(registry),
    )
    for name, value in values.items():
        owners = [group for group in groups if hasattr(group, name)]
        if len(owners) != 1:
            raise KeyError(f"no single Ptychodus PtychoPINN-Torch setting named {name!r}")
        getattr(owners[0], name).set_value(value)
    return groups


def build_configs(mode: str = "Unsupervised", **values) -> tuple:
    """The five configs of Ptychodus's own ``_build_configs`` for these settings."""
    from ptychodus.model.ptychopinn_torch.reconstructor import _build_configs

    data, model, training, inference = plugin_settings(mode, **values)
    return _build_configs(mode, data, model, training, inference)


def reconstruct_input(n_points: int | None = None) -> ReconstructInput:
    """sim_small as a Ptychodus product: uint16 counts, bad pixels, two probe modes, positions in metres.

    The object has Ptychodus's default geometry for these positions (``compute_object_geometry``, as
    the GUI builds it) and holds the true object resampled onto that grid.
    """
    arrays = sim_small()
    index = np.arange(len(arrays["xcoords"])) if n_points is None else _central_points(arrays, n_points)
    return as_reconstruct_input(arrays, index)


def as_reconstruct_input(arrays: dict[str, np.ndarray], index: np.ndarray) -> ReconstructInput:
    """The scan points ``index`` of a scan's NPZ arrays (amplitude ``diffraction``) as a Ptychodus product, as :func:`reconstruct_input`."""
    truth = arrays["objectGuess"]
    middle = (truth.shape[0] - 1) / 2
    x_m = (arrays["xcoords"][index] - middle) * PIXEL_M
    y_m = (arrays["ycoords"][index] - middle) * PIXEL_M
    positions = ProbePositionSequence([ProbePosition(i, x, y) for i, (x, y) in enumerate(zip(x_m, y_m))])
    probe = arrays["probeGuess"]
    probes = ProbeSequence(np.stack([probe, 0.2 * probe]).astype(np.complex64), None, PixelGeometry(PIXEL_M, PIXEL_M))
    geometry = compute_object_geometry(positions, probes.get_geometry())
    rows = (np.arange(geometry.height_px) - (geometry.height_px - 1) / 2) * geometry.pixel_height_m + geometry.center_y_m
    cols = (np.arange(geometry.width_px) - (geometry.width_px - 1) / 2) * geometry.pixel_width_m + geometry.center_x_m
    grid = np.meshgrid(rows / PIXEL_M + middle, cols / PIXEL_M + middle, indexing="ij")
    resampled = map_coordinates(truth.real, grid, order=1) + 1j * map_coordinates(truth.imag, grid, order=1)
    product = Product(
        metadata=ProductMetadata(
            name="sim_small", comments="", detector_distance_m=2.0, photon_energy_eV=10_000.0,
            probe_photon_count=1e6, exposure_time_s=0.1, mass_attenuation_m2_per_kg=0.0, tomography_angle_deg=0.0,
        ),
        probe_positions=positions,
        probes=probes,
        object_=Object(resampled.astype(np.complex64), PixelGeometry(PIXEL_M, PIXEL_M), ObjectCenter(geometry.center_x_m, geometry.center_y_m)),
        losses=[],
    )
    counts = np.rint(arrays["diffraction"][index].astype(np.float64) ** 2).astype(np.uint16)
    mask = np.zeros(counts.shape[1:], dtype=bool)
    mask[tuple(np.array(BAD_PIXELS).T % counts.shape[-1])] = True
    return ReconstructInput(diffraction_patterns=counts, bad_pixels=mask, product=product)


def _central_points(arrays, n_points: int) -> np.ndarray:
    x, y = arrays["xcoords"], arrays["ycoords"]
    distance = np.hypot(x - np.median(x), y - np.median(y))
    return np.sort(np.argsort(distance, kind="stable")[:n_points])


def export_training_data(directory: Path, parameters: ReconstructInput, name: str = "train_data.npz") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    save_ptychopinn_training_data(path, parameters)
    return path


def train_payload(configs: tuple, input_path: Path, output_path: Path):
    """A TrainPayload as the GUI builds it, after a pickle round trip (as it crosses to the child)."""
    from ptychodus.model.ptychopinn_torch._payload import TrainPayload

    data, model, training, inference, datagen = configs
    payload = TrainPayload(
        data_config=data, model_config=model, training_config=training, inference_config=inference,
        datagen_config=datagen, input_path=input_path, output_path=output_path, visible_gpu_indices="",
    )
    return pickle.loads(pickle.dumps(payload))


def reconstruct_payload(mode: str, model_path: Path, parameters: ReconstructInput):
    from ptychodus.model.ptychopinn_torch._payload import ReconstructPayload

    return pickle.loads(pickle.dumps(ReconstructPayload(model_training_mode=mode, model_path=model_path, reconstruct_input=parameters)))


def run_in_process(entry, payload, timeout_s: float = 5.0) -> list[tuple]:
    """Call a Ptychodus child entry point here, with a spawn-context queue, and return every message it sent."""
    channel = multiprocessing.get_context("spawn").Queue()
    try:
        entry(payload, channel)
        messages = []
        while True:
            try:
                messages.append(channel.get(timeout=timeout_s))
            except queue_module.Empty:
                return messages
    finally:
        channel.close()
        channel.join_thread()


def complex_fit_quality(estimate: np.ndarray, truth: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
    """Amplitude and phase Pearson r inside ``mask`` after fitting one complex scalar ``estimate * c ~ truth``."""
    e, t = estimate[mask], truth[mask]
    c = np.vdot(e, t) / np.vdot(e, e)
    fitted = e * c
    amplitude = np.corrcoef(np.abs(fitted), np.abs(t))[0, 1]
    phase = np.corrcoef(np.angle(fitted), np.angle(t))[0, 1]
    return float(amplitude), float(phase)


def scanned_interior(shape: tuple[int, int], x_px: np.ndarray, y_px: np.ndarray, N: int, erode_px: int = 8) -> np.ndarray:
    """Pixels lying under the probe's central half for some scan point, shrunk by ``erode_px``: where the object is measured."""
    mask = np.zeros(shape, dtype=bool)
    half = N // 4
    for x, y in zip(np.rint(x_px).astype(int), np.rint(y_px).astype(int)):
        mask[max(0, y - half) : y + half, max(0, x - half) : x + half] = True
    if erode_px:
        from scipy.ndimage import binary_erosion

        mask = binary_erosion(mask, iterations=erode_px)
    return mask
