"""ptycho-train and ptycho-reconstruct as users run them (python -m), on the embedded dataset."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("tensordict")
pytest.importorskip("lightning")
pytest.importorskip("matplotlib")

ROOT = Path(__file__).resolve().parents[2]
NPZ = ROOT / "datasets" / "sim_small.npz"
CONFIG = {
    "data": {"grid_size": [2, 2], "K": 7, "nphotons": 1e6, "subsample_seed": 42},
    "model": {"n_filters_scale": 1, "object_big": True, "cbam_encoder": False, "use_shared_decoder": True},
    "training": {"epochs": 1, "batch_size": 8, "device": "cuda", "num_workers": 0, "strategy": "ddp_spawn"},
}


def run(module: str, *args) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "2"}
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def test_train_then_reconstruct_writes_checkpoint_object_and_png(tmp_path):
    config = tmp_path / "train.json"
    config.write_text(json.dumps(CONFIG))
    trained = run("ptycho_torch.cli_train", NPZ, "--config", config, "--output-dir", tmp_path / "runs", "--n-groups", 16, "--quiet")
    assert trained.returncode == 0, trained.stderr[-3000:]
    checkpoint = Path(trained.stdout.strip().splitlines()[-1])
    assert checkpoint.name == "best-checkpoint.ckpt" and checkpoint.is_file()
    run_dir = checkpoint.parents[1]
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert json.loads((run_dir / "configs" / "data_config.json").read_text())["N"] == 64

    out = tmp_path / "recon.npz"
    recon = run("ptycho_torch.cli_reconstruct", checkpoint, NPZ, "--output", out, "--n-groups", 32, "--quiet")
    assert recon.returncode == 0, recon.stderr[-3000:]
    with np.load(out, allow_pickle=False) as result:
        obj, origin = result["object"], result["origin_px"]
    x = np.load(NPZ)["xcoords"]
    y = np.load(NPZ)["ycoords"]
    assert obj.dtype == np.complex64 and obj.shape == (math.ceil(np.ptp(y) + 64), math.ceil(np.ptp(x) + 64))
    assert np.isfinite(obj).all() and np.abs(obj).max() > 0
    assert origin[1] == pytest.approx((obj.shape[1] - 1) / 2 - (x.min() + x.max()) / 2)
    assert out.with_suffix(".png").stat().st_size > 10_000


def test_train_refuses_a_config_with_unknown_sections_naming_the_file(tmp_path):
    config = tmp_path / "bad.json"
    config.write_text(json.dumps({"data": {"N": 64}, "optimiser": {"lr": 1}}))
    result = run("ptycho_torch.cli_train", NPZ, "--config", config, "--output-dir", tmp_path / "runs")
    assert result.returncode != 0
    assert str(config) in result.stderr and "optimiser" in result.stderr
    assert not (tmp_path / "runs").exists()


def test_quiet_training_prints_the_checkpoint_and_nothing_else_nor_anything_twice(tmp_path):
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps({"model": CONFIG["model"], "training": {"batch_size": 8, "num_workers": 0}}))  # device: the default 'auto'
    trained = run("ptycho_torch.cli_train", NPZ, "--config", config, "--epochs", 1, "--n-groups", 16, "--output-dir", tmp_path / "runs", "--quiet")
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert trained.stdout.strip().endswith("best-checkpoint.ckpt") and len(trained.stdout.strip().splitlines()) == 1
    lines = [line for line in trained.stderr.splitlines() if line.strip()]
    assert not [line for line in lines if line.startswith("INFO") or "Tip:" in line], trained.stderr
    assert len(lines) == len(set(lines)), trained.stderr
    assert "no CUDA device" not in trained.stderr  # the default device is 'auto'


def test_training_prints_lightning_info_once_and_no_tips(tmp_path):
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps({"model": CONFIG["model"], "training": {"batch_size": 8, "num_workers": 0}}))
    trained = run("ptycho_torch.cli_train", NPZ, "--config", config, "--epochs", 1, "--n-groups", 16, "--output-dir", tmp_path / "runs")
    assert trained.returncode == 0, trained.stderr[-3000:]
    available = [line for line in trained.stderr.splitlines() if "GPU available" in line]
    assert len(available) == 1 and "Tip:" not in trained.stderr, trained.stderr
