"""The shipped model: it loads without Lightning, beats its own physics input on a scan of families it never saw,
and a model name or pattern size it cannot serve is refused before any work."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from ptycho.corpus import HELD_OUT_OBJECT, HELD_OUT_PROBE, HELD_OUT_TRAJECTORY, held_out_seed, recipe, simulate_recipe  # noqa: E402
from ptycho.quality import reconstruction_quality  # noqa: E402
from ptycho.simulate import save_scan_npz  # noqa: E402
from ptycho_torch.dset_loader_pt_mmap import PtychoDataset  # noqa: E402
from ptycho_torch.model.stitching import Canvas, reconstruct  # noqa: E402
from ptycho_torch.pretrained import MODELS_DIR, SHIPPED, UnknownModelError, available_models, load_pretrained, training_record  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
NPZ = ROOT / "datasets" / "sim_small.npz"


@pytest.fixture(scope="module")
def left_out_scan(tmp_path_factory) -> Path:
    """A scan whose probe (KB mirrors), object (particles) and trajectory (Fermat spiral) the training corpus never had."""
    drawn = recipe(held_out_seed(7, 0, 0), probe_families=(HELD_OUT_PROBE,), object_families=(HELD_OUT_OBJECT,),
                   trajectories=(HELD_OUT_TRAJECTORY,), n_points=160)
    path = tmp_path_factory.mktemp("held_out") / "left_out.npz"
    save_scan_npz(path, simulate_recipe(drawn))
    return path


def test_the_shipped_model_is_in_the_package_with_its_training_record():
    assert available_models() == {"pretrained": 64}
    weights = MODELS_DIR / SHIPPED["pretrained"][0]
    assert weights.stat().st_size < 20e6
    record = training_record()
    assert {"recipe", "command", "commit", "train_cpu_s", "sessions"} <= set(record) and record["train_cpu_s"] > 0
    network = load_pretrained()
    assert type(network).__name__ == "PtychoPINN" and not network.training and network.N == 64


def test_the_shipped_model_beats_its_physics_input_on_a_scan_of_left_out_families(left_out_scan, tmp_path):
    """Bypassing the network (its physics input alone, stitched the same way) must score lower."""
    network = load_pretrained()
    network.precision = "fp32"
    truth = np.load(left_out_scan, allow_pickle=False)["objectGuess"]
    dataset = PtychoDataset(left_out_scan, network.data_config, network.model_config, replace(network.training_config, n_groups=160),
                            data_dir=tmp_path, progress=False)
    scores = {}
    for use_network in (True, False):
        result = reconstruct(network, dataset, canvas=Canvas(truth.shape, (0, 0)), progress=False, use_network=use_network)
        scores[use_network] = reconstruction_quality(result.object, truth, result.coverage > 0.05 * result.coverage.max())
    network_scores, input_scores = scores[True], scores[False]
    # a floor far below the benchmark (benchmarks/RESULTS.md): the network must add to the physics input
    assert network_scores.nrmse < input_scores.nrmse - 0.02, (network_scores, input_scores)
    assert network_scores.phase_r > input_scores.phase_r and network_scores.phase_contrast > input_scores.phase_contrast + 0.05, (
        network_scores, input_scores)


def _reconstruct(*args, cwd: Path) -> tuple[subprocess.CompletedProcess, float]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "ptycho_torch.cli_reconstruct", *map(str, args)], cwd=cwd, env=env,
                            capture_output=True, text=True, timeout=300)
    return result, time.perf_counter() - started


def test_an_unknown_model_name_is_refused_naming_the_shipped_ones(tmp_path):
    result, _ = _reconstruct("pretrainde", NPZ, "--output", tmp_path / "r.npz", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "'pretrainde' is neither a checkpoint file nor a shipped model" in result.stderr and "pretrained (64 x 64 patterns)" in result.stderr
    assert list(tmp_path.iterdir()) == []  # nothing written, no memory map
    with pytest.raises(UnknownModelError, match="no shipped model is called 'other'"):
        load_pretrained("other")


def test_a_scan_of_another_pattern_size_is_refused_before_any_work(tmp_path):
    with np.load(NPZ, allow_pickle=False) as scan:
        arrays = {name: scan[name] for name in scan.files}
    arrays["diffraction"] = np.ascontiguousarray(arrays["diffraction"][:, 16:48, 16:48])
    arrays["probeGuess"] = np.ascontiguousarray(arrays["probeGuess"][16:48, 16:48])
    arrays.pop("Y", None)
    small = tmp_path / "scan32.npz"
    np.savez(small, **arrays)
    result, _ = _reconstruct("pretrained", small, "--output", tmp_path / "out" / "r.npz", "--data-dir", tmp_path / "memmap", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert "reconstructs 64 x 64 patterns, not 32 x 32" in line and "pretrained (64 x 64 patterns)" in line, line
    assert line.endswith("--start flat --refine 20"), line  # the way that needs no model of that size
    assert not (tmp_path / "memmap").exists() and not (tmp_path / "out" / "r.npz").exists()


def test_a_flat_start_runs_no_network_so_it_reconstructs_a_scan_of_any_pattern_size(tmp_path):
    """``--start flat --refine N`` runs no per-group network: a 32 x 32 scan is refined, not refused for the model's size."""
    from ptycho.simulate import SimulationSettings, simulate_scan

    arrays = simulate_scan(SimulationSettings(N=32, n_points=200, object_size=112, step=4.0, probe_diameter=12.0, seed=3))
    scan = save_scan_npz(tmp_path / "scan32.npz", arrays)
    result, _ = _reconstruct("pretrained", scan, "--start", "flat", "--refine", 10, "--output", tmp_path / "r.npz", "--no-png",
                             "--canvas", "object", "--data-dir", tmp_path / "memmap", "--quiet", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    with np.load(tmp_path / "r.npz", allow_pickle=False) as out:
        scores = reconstruction_quality(out["object"], arrays["objectGuess"], out["coverage"] > 0.05 * out["coverage"].max())
    assert scores.amplitude_r > 0.8 and scores.phase_r > 0.8, scores  # 10 sweeps from a unit object (0.99 / 0.96 measured)
    from tests.standin_model import write_standin

    checkpoint = write_standin(tmp_path / "model64.ckpt")  # a user's checkpoint of another size: the same two ways
    refused, _ = _reconstruct(checkpoint, scan, "--output", tmp_path / "n.npz", "--data-dir", tmp_path / "other", cwd=tmp_path)
    line = refused.stderr.strip().splitlines()[-1]
    assert refused.returncode == 2 and "was trained on 64 x 64 patterns but scan" in line and line.endswith("--start flat --refine 20"), line
    flat, _ = _reconstruct(checkpoint, scan, "--start", "flat", "--refine", 2, "--output", tmp_path / "f.npz", "--no-png",
                           "--data-dir", tmp_path / "memmap", "--quiet", cwd=tmp_path)
    assert flat.returncode == 0 and (tmp_path / "f.npz").is_file(), flat.stderr[-3000:]
    refused, _ = _reconstruct("pretrained", scan, "--start", "flat", "--refine", 10, "--object-network", 5, "--output",
                              tmp_path / "o.npz", "--data-dir", tmp_path / "other", cwd=tmp_path)
    assert refused.returncode == 2 and "32 x 32" in refused.stderr.strip().splitlines()[-1], refused.stderr
    assert not (tmp_path / "other").exists() and not (tmp_path / "o.npz").exists()


@pytest.mark.parametrize("n_points", [1, 3])
def test_a_flat_start_refines_a_scan_of_fewer_points_than_a_group_holds(tmp_path, n_points):
    """A flat start forms no group, yet it was refused for 'only 3 scan points but gridsize 2 needs 4 per group; use a smaller
    gridsize', an option ptycho-reconstruct does not have."""
    from ptycho.simulate import SimulationSettings, simulate_scan

    scan = save_scan_npz(tmp_path / "few.npz", simulate_scan(SimulationSettings(n_points=n_points, seed=1)))
    result, _ = _reconstruct("pretrained", scan, "--start", "flat", "--refine", 3, "--output", tmp_path / "r.npz", "--no-png",
                             "--data-dir", tmp_path / "memmap", "--quiet", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    with np.load(tmp_path / "r.npz", allow_pickle=False) as out:
        assert np.isfinite(out["object"]).all() and (np.abs(out["object"]) > 0).any()
    refused, _ = _reconstruct("pretrained", scan, "--output", tmp_path / "n.npz", "--data-dir", tmp_path / "other", cwd=tmp_path)
    line = refused.stderr.strip().splitlines()[-1]
    assert refused.returncode == 2 and f"only {n_points} scan point(s)" in line and "groups of 4" in line, line
    assert line.endswith("--start flat --refine 20") and "gridsize" not in line, line
    assert not (tmp_path / "other").exists() and not (tmp_path / "n.npz").exists()


def test_ptycho_reconstruct_pretrained_writes_the_object_of_the_embedded_scan(tmp_path):
    result, _ = _reconstruct("pretrained", NPZ, "--output", tmp_path / "r.npz", "--data-dir", tmp_path / "memmap", "--quiet", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    with np.load(tmp_path / "r.npz", allow_pickle=False) as out:
        assert out["object"].dtype == np.complex64 and np.isfinite(out["object"]).all() and (np.abs(out["object"]) > 0).mean() > 0.5
    assert (tmp_path / "r.png").stat().st_size > 10_000
    refined, _ = _reconstruct("pretrained", NPZ, "--output", tmp_path / "refined.npz", "--data-dir", tmp_path / "memmap", "--refine", 5,
                              "--canvas", "object", "--no-png", "--quiet", cwd=tmp_path)
    plain, _ = _reconstruct("pretrained", NPZ, "--output", tmp_path / "plain.npz", "--data-dir", tmp_path / "memmap",
                            "--canvas", "object", "--no-png", "--quiet", cwd=tmp_path)
    assert refined.returncode == 0 and plain.returncode == 0, (refined.stderr[-2000:], plain.stderr[-2000:])
    truth = np.load(NPZ, allow_pickle=False)["objectGuess"]
    scores = {}
    for name in ("refined", "plain"):
        with np.load(tmp_path / f"{name}.npz", allow_pickle=False) as out:
            scores[name] = reconstruction_quality(out["object"], truth, out["coverage"] > 0.05 * out["coverage"].max())
    assert scores["refined"].phase_r > scores["plain"].phase_r + 0.02, scores


def test_start_physics_writes_the_physics_input_without_the_network(tmp_path):
    """`--start physics` stitches the network's physics input alone (no U-Net): what `reconstruct(use_network=False)` gives."""
    from ptycho_torch.dset_loader_pt_mmap import PtychoDataset
    from ptycho_torch.model.stitching import Canvas, reconstruct
    from ptycho_torch.pretrained import load_pretrained

    result, _ = _reconstruct("pretrained", NPZ, "--output", tmp_path / "p.npz", "--data-dir", tmp_path / "memmap", "--start", "physics",
                             "--canvas", "object", "--no-png", "--quiet", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    network = load_pretrained()
    training = replace(network.training_config, n_groups=512)
    dataset = PtychoDataset(NPZ, network.data_config, network.model_config, training, data_dir=tmp_path / "memmap", progress=False)
    truth_shape = np.load(NPZ, allow_pickle=False)["objectGuess"].shape
    with np.load(tmp_path / "p.npz", allow_pickle=False) as out:
        written = out["object"]
    physics = reconstruct(network, dataset, canvas=Canvas(truth_shape, (0, 0)), use_network=False, groups="cover", progress=False).object
    network_pass = reconstruct(network, dataset, canvas=Canvas(truth_shape, (0, 0)), groups="cover", progress=False).object
    np.testing.assert_allclose(written, physics, rtol=0, atol=1e-6 * np.abs(physics).max())
    assert not np.allclose(written, network_pass, rtol=0, atol=1e-3 * np.abs(physics).max())
