"""Tests of the generalisation corpus (ptycho.corpus) and its DatagenConfig translation (ptycho_torch.datagen)."""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.spatial

from ptycho import corpus
from ptycho.corpus import (
    HELD_OUT_KINDS,
    OBJECT_FAMILIES,
    PROBE_FAMILIES,
    TRAJECTORIES,
    ScanRecipe,
    held_out_recipes,
    make_family_object,
    make_family_probe,
    make_trajectory,
    mean_nearest_neighbour_distance,
    probe_width,
    read_recipes,
    realise,
    recipe,
    simulate_recipe,
    training_recipes,
    write_recipes,
)
from ptycho.scan_file import read_scan
from ptycho.simulate import make_probe

ROOT = Path(__file__).resolve().parents[1]
N = 64


def _probe(family: str, seed: int = 3, **overrides) -> np.ndarray:
    params = dict(recipe(seed, probe_families=(family,), N=N).probe_params)
    params.update(overrides)
    return make_family_probe(family, params, N, np.random.default_rng(seed))


def _pupil(probe: np.ndarray) -> np.ndarray:
    """The probe's far field in fft order: the pupil it was made from."""
    return np.fft.fft2(np.fft.ifftshift(probe))


# ---------------------------------------------------------------- probes


@pytest.mark.parametrize("family", PROBE_FAMILIES)
def test_every_probe_family_gives_a_unit_norm_probe_of_overlapping_width(family):
    for seed in range(12):
        probe = _probe(family, seed)
        assert probe.shape == (N, N) and probe.dtype == np.complex128
        assert np.isfinite(probe).all()
        assert np.sum(np.abs(probe) ** 2) == pytest.approx(1.0)
        assert 0.2 * N <= probe_width(probe) <= corpus.MAX_PROBE_WIDTH * N


def test_probe_width_of_a_default_pinhole_is_its_diameter():
    assert probe_width(make_probe(64, 24.0)) == pytest.approx(24.0, abs=0.5)


def test_zone_plate_pupil_has_a_central_stop():
    probe = _probe("zone_plate", pupil_noise_rad=0.0)
    far_field = np.abs(_pupil(probe)) ** 2
    assert far_field[0, 0] < 1e-3 * far_field.max()
    pinhole = np.abs(_pupil(_probe("pinhole", pupil_noise_rad=0.0))) ** 2
    assert pinhole[0, 0] > 0.5 * pinhole.max()


def test_pinhole_pupil_is_bounded_by_its_radius():
    probe = _probe("pinhole", pupil_noise_rad=0.0)
    radius = dict(recipe(3, probe_families=("pinhole",), N=N).probe_params)["pupil_radius"]
    k = np.fft.fftfreq(N) * N
    outside = np.hypot(k[:, None], k[None, :]) > radius + 4
    pupil = np.abs(_pupil(probe)) ** 2
    assert pupil[outside].sum() < 1e-4 * pupil.sum()


def _anisotropy(probe: np.ndarray) -> float:
    intensity = np.abs(probe) ** 2
    y, x = np.indices(intensity.shape)
    w = intensity / intensity.sum()
    cy, cx = (w * y).sum(), (w * x).sum()
    cov = np.array([[(w * (y - cy) ** 2).sum(), (w * (y - cy) * (x - cx)).sum()],
                    [(w * (y - cy) * (x - cx)).sum(), (w * (x - cx) ** 2).sum()]])
    low, high = np.linalg.eigvalsh(cov)
    return high / low


def test_astigmatism_elongates_the_aberrated_probe():
    plain = dict(astig_0=0.0, astig_45=0.0, coma_x=0.0, coma_y=0.0, spherical=0.0, trefoil_x=0.0, trefoil_y=0.0,
                 pupil_noise_rad=0.0, defocus_diameter=16.0)
    assert _anisotropy(_probe("aberrated", **plain)) < 1.05
    assert _anisotropy(_probe("aberrated", **dict(plain, astig_0=4.0))) > 1.3


def test_kb_mirror_probe_is_separable():
    singular = np.linalg.svd(_probe("kb_mirror"), compute_uv=False)
    assert singular[1] < 1e-6 * singular[0]
    assert np.linalg.svd(_probe("aberrated"), compute_uv=False)[1] > 1e-2 * singular[0]


def test_probe_offset_moves_the_probe():
    probe = _probe("pinhole", pupil_noise_rad=0.0, offset_x=3.0, offset_y=-2.0)
    intensity = np.abs(probe) ** 2
    y, x = np.indices(intensity.shape)
    centroid = np.array([(intensity * x).sum(), (intensity * y).sum()]) / intensity.sum()
    np.testing.assert_allclose(centroid, [N // 2 + 3.0, N // 2 - 2.0], atol=0.5)


def test_probe_files_load_without_pickle(tmp_path):
    probe = _probe("pinhole") * 7
    np.save(tmp_path / "probe.npy", probe)
    np.savez(tmp_path / "probe.npz", probeGuess=probe[None])
    for name in ("probe.npy", "probe.npz"):
        loaded = make_family_probe(f"file:{tmp_path / name}", {}, N, np.random.default_rng(0))
        np.testing.assert_allclose(loaded, probe / 7)
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError):
        make_family_probe(f"file:{tmp_path / 'objects.npy'}", {}, N, np.random.default_rng(0))
    with pytest.raises(ValueError, match="complex"):
        np.save(tmp_path / "real.npy", np.ones((N, N)))
        make_family_probe(f"file:{tmp_path / 'real.npy'}", {}, N, np.random.default_rng(0))


# ---------------------------------------------------------------- objects


def _object(family: str, size: int = 128, seed: int = 3, **overrides) -> np.ndarray:
    params = dict(recipe(seed, object_families=(family,), N=N).object_params)
    params.update(overrides)
    return make_family_object(family, params, size, np.random.default_rng(seed))


@pytest.mark.parametrize("family", OBJECT_FAMILIES)
def test_every_object_family_gives_a_transmission(family):
    for seed in range(3):
        obj = _object(family, size=96, seed=seed)
        assert obj.shape == (96, 96) and obj.dtype == np.complex64
        assert np.isfinite(obj).all()
        amplitude = np.abs(obj)
        assert amplitude.min() > 0 and amplitude.max() <= 1 + 1e-6
        assert np.ptp(np.angle(obj)) > 0.05 or np.ptp(amplitude) > 0.05


def test_smooth_phase_reaches_phase_wraps_with_weak_amplitude():
    obj = _object("smooth_phase", phase_range_rad=2 * math.pi, amplitude_contrast=0.1)
    assert np.ptp(np.angle(obj)) > 0.9 * 2 * math.pi
    assert np.abs(obj).min() >= 0.9 - 1e-6
    weak = _object("smooth_phase", phase_range_rad=0.2, amplitude_contrast=0.0)
    assert np.ptp(np.angle(weak)) <= 0.2 + 1e-6


def test_dead_leaves_are_flat_patches_with_edges():
    obj = _object("dead_leaves", min_radius=3.0, max_radius=20.0, amplitude_contrast=0.5, phase_max_rad=1.0)
    gradient = np.hypot(*np.gradient(np.abs(obj).astype(np.float64)))
    assert np.mean(gradient < 1e-3) > 0.2  # inside leaves
    assert np.max(gradient) > 0.05  # leaf edges


def test_lines_and_edges_have_sharp_edges_on_an_empty_background():
    obj = _object("lines_edges", shapes_per_area=3.0)
    empty = np.abs(np.angle(obj)) < 1e-6
    assert 0.05 < empty.mean() < 0.95
    assert np.max(np.abs(np.diff(np.angle(obj), axis=1))) > 0.1


def test_particles_lie_on_an_empty_background():
    obj = _object("particles", fill_fraction=0.3, absorption=0.3)
    assert np.mean(np.abs(obj) > 0.999) > 0.3
    assert np.abs(obj).min() < 0.9


def test_fine_texture_is_fine():
    phase = np.angle(_object("fine_texture", correlation_px=1.0, phase_scale_rad=1.0)).astype(np.float64)
    phase -= phase.mean()
    lag4 = np.mean(phase[:, 4:] * phase[:, :-4]) / np.mean(phase**2)
    assert lag4 < 0.2


# ---------------------------------------------------------------- trajectories and overlap


@pytest.mark.parametrize("trajectory", TRAJECTORIES)
def test_trajectories_have_the_count_step_and_centre_asked_for(trajectory):
    params = dict(recipe(5, trajectories=(trajectory,), N=N).trajectory_params)
    points = make_trajectory(trajectory, params, 300, 6.0, np.random.default_rng(0))
    assert points.shape == (300, 2)
    assert mean_nearest_neighbour_distance(points) == pytest.approx(6.0)
    np.testing.assert_allclose(points.min(axis=0), -points.max(axis=0))


def test_fermat_spiral_steps_by_the_golden_angle():
    points = make_trajectory("fermat", {"overlap": 0.7, "angle_rad": 0.0}, 200, 5.0, np.random.default_rng(0))
    k = np.arange(200) + 0.5
    # The spiral's origin o and scale c make |p - o|**2 = c**2 k: linear in (o, |o|**2, c**2).
    design = np.column_stack([2 * points, -np.ones(200), k])
    solution, *_ = np.linalg.lstsq(design, np.sum(points**2, axis=1), rcond=None)
    relative = points - solution[:2]
    angles = np.unwrap(np.arctan2(relative[:, 1], relative[:, 0]))
    np.testing.assert_allclose(np.diff(angles) % (2 * math.pi), corpus.GOLDEN_ANGLE, atol=1e-6)
    radius2 = np.sum(relative**2, axis=1)
    np.testing.assert_allclose(radius2 / k, (radius2 / k)[0], rtol=1e-6)


def test_random_positions_keep_a_minimum_distance():
    points = make_trajectory("random", {"overlap": 0.7, "min_distance_fraction": 0.6}, 400, 5.0, np.random.default_rng(1))
    distances, _ = scipy.spatial.cKDTree(points).query(points, k=2)
    assert distances[:, 1].min() > 0.4 * 5.0


def test_raster_without_jitter_or_rotation_is_a_grid():
    points = make_trajectory("raster", {"overlap": 0.7, "jitter_fraction": 0.0, "angle_rad": 0.0}, 25, 4.0, np.random.default_rng(0))
    np.testing.assert_allclose(np.unique(np.round(points[:, 0], 9)), np.arange(5) * 4.0 - 8.0)


def test_overlap_is_in_range_and_realised():
    for seed in range(20):
        one = recipe(seed, trajectories=TRAJECTORIES, n_points=64, N=32)
        overlap = one.params("trajectory")["overlap"]
        assert corpus.OVERLAP_RANGE[0] <= overlap <= corpus.OVERLAP_RANGE[1]
        scan = realise(one)
        points = np.column_stack([scan.xcoords, scan.ycoords])
        assert 1 - mean_nearest_neighbour_distance(points) / probe_width(scan.probe) == pytest.approx(overlap)


# ---------------------------------------------------------------- recipes and simulation


def test_doses_are_log_uniform_in_range_and_met():
    doses = np.array([recipe(seed).dose for seed in range(200)])
    assert doses.min() >= 1e4 and doses.max() <= 1e8
    assert 3.3 < np.median(np.log10(doses)) < 6.7  # spread over the decades, not bunched at one end
    one = dataclasses.replace(recipe(7, n_points=64, N=32), dose=2e4)
    arrays = simulate_recipe(one)
    assert np.mean(np.sum(arrays["diffraction"].astype(np.float64) ** 2, axis=(1, 2))) == pytest.approx(2e4, rel=0.02)
    noise_free = simulate_recipe(dataclasses.replace(one, poisson_noise=False))
    assert np.mean(np.sum(noise_free["diffraction"].astype(np.float64) ** 2, axis=(1, 2))) == pytest.approx(2e4, rel=1e-4)


def test_recipes_are_reproducible_from_the_seed():
    assert recipe(11) == recipe(11)
    assert recipe(11) != recipe(12)
    one = recipe(11, n_points=32, N=32)
    first, again = simulate_recipe(one), simulate_recipe(one)
    assert first.keys() == again.keys()
    for key in first:
        assert first[key].tobytes() == again[key].tobytes()
    other = simulate_recipe(recipe(12, n_points=32, N=32))
    assert first["diffraction"].tobytes() != other["diffraction"].tobytes()


def test_recipes_round_trip_through_json():
    for one in training_recipes(6, 3, n_points=32, N=32):
        assert ScanRecipe.from_dict(json.loads(json.dumps(one.to_dict()))) == one


def test_held_out_families_never_appear_in_training_recipes():
    held_out = {corpus.HELD_OUT_PROBE, corpus.HELD_OUT_OBJECT, corpus.HELD_OUT_TRAJECTORY}
    for seed in (0, 1, 2):
        for one in training_recipes(40, seed, n_points=16, N=32):
            assert not held_out & {one.probe, one.object, one.trajectory}
    recipes = held_out_recipes(3, 1000, n_points=16, N=32)
    assert all(one.probe == corpus.HELD_OUT_PROBE for one in recipes["probe"] + recipes["all"])
    assert all(one.object == corpus.HELD_OUT_OBJECT for one in recipes["object"] + recipes["all"])
    assert all(one.trajectory == corpus.HELD_OUT_TRAJECTORY for one in recipes["trajectory"] + recipes["all"])


def test_held_out_scans_never_share_seeds_with_training_scans():
    training = {one.seed for seed in range(3) for one in training_recipes(50, seed, n_points=16, N=32)}
    held = {one.seed for seed in range(3) for group in held_out_recipes(10, seed, n_points=16, N=32).values() for one in group}
    assert not training & held
    assert len(training) == 150 and len(held) == 3 * 10 * len(HELD_OUT_KINDS)


def test_training_families_are_balanced():
    recipes = training_recipes(30, 1, n_points=16, N=32)
    for part, families in (("probe", corpus.TRAIN_PROBES), ("object", corpus.TRAIN_OBJECTS), ("trajectory", corpus.TRAIN_TRAJECTORIES)):
        counts = [sum(getattr(one, part) == family for one in recipes) for family in families]
        assert max(counts) - min(counts) <= 1


def test_written_scans_read_back_and_list_their_recipes(tmp_path):
    recipes = training_recipes(2, 5, n_points=32, N=32) + held_out_recipes(1, 5, kinds=("all",), n_points=32, N=32)["all"]
    named = [(f"scan{i}", one) for i, one in enumerate(recipes)]
    paths = write_recipes(tmp_path, named)
    assert [p.name for p in paths] == ["scan0.npz", "scan1.npz", "scan2.npz"]
    for path, one in zip(paths, recipes):
        scan = read_scan(path)
        assert scan.diffraction.shape == (32, 32, 32)
        np.testing.assert_array_equal(scan.diffraction, simulate_recipe(one)["diffraction"])
    assert read_recipes(tmp_path) == {f"scan{i}.npz": one for i, one in enumerate(recipes)}
    record = json.loads((tmp_path / "recipes.json").read_text())["scan2.npz"]
    assert record["overlap"] == pytest.approx(one.params("trajectory")["overlap"])


def test_command_line_writes_training_and_held_out_scans(tmp_path):
    for arguments in (["train", "--out", str(tmp_path / "train"), "--n-scans", "2", "--seed", "1"],
                      ["heldout", "--out", str(tmp_path / "heldout"), "--n-per-kind", "1", "--seed", "1000", "--kinds", "probe", "all"]):
        completed = subprocess.run([sys.executable, "-m", "ptycho.corpus", *arguments, "--n-points", "16", "--N", "32"],
                                   cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert completed.returncode == 0, completed.stderr
    assert sorted(p.name for p in (tmp_path / "train").iterdir()) == ["recipes.json", "train000.npz", "train001.npz"]
    assert sorted(read_recipes(tmp_path / "heldout")) == ["heldout-all-00.npz", "heldout-probe-00.npz"]
    bad = subprocess.run([sys.executable, "-m", "ptycho.corpus", "train", "--out", str(tmp_path / "x"), "--probes", "laser"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "laser" in bad.stderr


def test_command_line_refuses_to_replace_files_in_out_without_overwrite(tmp_path):
    """It replaced train000.npz and recipes.json in --out without a word (python -m ptycho.simulate refuses without --overwrite)."""
    out = tmp_path / "scans"
    out.mkdir()
    (out / "recipes.json").write_text("mine\n")
    (out / "train001.npz").write_bytes(b"a measured scan")
    arguments = [sys.executable, "-m", "ptycho.corpus", "train", "--out", str(out), "--n-scans", "2", "--n-points", "16", "--N", "32"]
    refused = subprocess.run(arguments, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and "train001.npz" in refused.stderr and "recipes.json" in refused.stderr, refused.stderr
    assert "pass --overwrite" in refused.stderr
    assert sorted(p.name for p in out.iterdir()) == ["recipes.json", "train001.npz"]  # nothing simulated, nothing replaced
    assert (out / "recipes.json").read_text() == "mine\n" and (out / "train001.npz").read_bytes() == b"a measured scan"
    replaced = subprocess.run([*arguments, "--overwrite"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert replaced.returncode == 0, replaced.stderr
    assert sorted(read_recipes(out)) == ["train000.npz", "train001.npz"]


def test_corpus_and_datagen_modules_do_not_import_torch():
    code = "import sys, ptycho.corpus, ptycho_torch.datagen; assert 'torch' not in sys.modules, 'torch imported'"
    completed = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr


# ---------------------------------------------------------------- DatagenConfig


def _datagen():
    from ptycho_torch.config_params import DatagenConfig
    from ptycho_torch.datagen import datagen_recipes
    return DatagenConfig, datagen_recipes


def test_datagen_config_drives_the_corpus():
    DatagenConfig, datagen_recipes = _datagen()
    config = DatagenConfig(objects_per_probe=2, diff_per_object=64, object_class="dead_leaves,lines_edges",
                           image_size=(400, 400), beamstop_diameter=6)
    recipes = datagen_recipes(config, 1)
    assert len(recipes) == 2 * len(corpus.TRAIN_PROBES)
    assert {one.probe for one in recipes} == set(corpus.TRAIN_PROBES)
    assert {one.object for one in recipes} <= {"dead_leaves", "lines_edges"}
    assert all(one.n_points == 64 and one.object_size == 400 for one in recipes)
    for one in recipes:
        if one.probe == "zone_plate":
            params = one.params("probe")
            assert params["stop_fraction"] * 2 * params["pupil_radius"] == pytest.approx(6)
    assert simulate_recipe(recipes[0])["objectGuess"].shape == (400, 400)


def test_datagen_probe_paths_become_probe_families(tmp_path):
    DatagenConfig, datagen_recipes = _datagen()
    np.save(tmp_path / "probe.npy", _probe("pinhole"))
    config = DatagenConfig(objects_per_probe=1, diff_per_object=16, image_size=(300, 300),
                           probe_paths=[str(tmp_path / "probe.npy")], beamstop_diameter=0)
    (one,) = datagen_recipes(config, 1)
    assert one.probe == f"file:{(tmp_path / 'probe.npy').resolve()}"
    np.testing.assert_allclose(realise(one).probe, _probe("pinhole"))


@pytest.mark.parametrize("field, value, words", [
    ("object_class", "clouds", "object_class"),
    ("object_class", "islands,photograph", "object_class.*evaluation only"),
    ("image_size", (250, 300), "image_size"),
    ("image_size", (100, 100), "image_size"),  # too small for the scan
    ("diff_per_object", 2, "diff_per_object"),
    ("objects_per_probe", 0, "objects_per_probe"),
    ("beamstop_diameter", -1, "beamstop_diameter"),
    ("probe_paths", ["missing.npy"], "probe_paths"),
    ("probe_paths", ["probe.txt"], "probe_paths"),
])
def test_datagen_refusals_name_the_field(field, value, words):
    DatagenConfig, datagen_recipes = _datagen()
    base = dict(objects_per_probe=1, diff_per_object=64, image_size=(400, 400), beamstop_diameter=0)
    config = DatagenConfig(**dict(base, **{field: value}))
    with pytest.raises(ValueError, match=words):
        datagen_recipes(config, 1)


def test_datagen_refuses_a_beamstop_with_probe_files(tmp_path):
    DatagenConfig, datagen_recipes = _datagen()
    np.save(tmp_path / "probe.npy", _probe("pinhole"))
    config = DatagenConfig(objects_per_probe=1, diff_per_object=16, image_size=(300, 300), probe_paths=[str(tmp_path / "probe.npy")])
    with pytest.raises(ValueError, match="beamstop_diameter"):
        datagen_recipes(config, 1)


def test_default_datagen_config_is_refused_with_the_image_size_it_needs():
    DatagenConfig, datagen_recipes = _datagen()
    with pytest.raises(ValueError, match=r"image_size=\(250, 250\) is too small.*diff_per_object"):
        datagen_recipes(DatagenConfig(), 1)


def test_photographs_are_held_out_only():
    pytest.importorskip("skimage")
    (one,) = held_out_recipes(1, 1000, kinds=("photograph",), n_points=16, N=32)["photograph"]
    assert one.object == "photograph" and one.seed % 2 == 1
    obj = simulate_recipe(one)["objectGuess"]
    assert obj.dtype == np.complex64 and 0 < np.abs(obj).min() and np.abs(obj).max() <= 1 + 1e-6
    assert "photograph" not in held_out_recipes(1, 1000, n_points=16, N=32)  # optional kind: only when asked for
    with pytest.raises(ValueError, match="evaluation only"):
        training_recipes(2, 1, object_families=("islands", "photograph"))
