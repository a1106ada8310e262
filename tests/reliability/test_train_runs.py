"""Training run directories (issue 19): one exclusive directory per run, shared by every DDP rank, never a failed run's
checkpoints taken for a finished one; the Ptychodus API checks its inputs the same way."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

from ptycho_torch.lightning_utils import find_best_checkpoint
from ptycho_torch.run_dirs import INCOMPLETE, discard_failed_run, mark_finished, mark_incomplete, new_run_dir
from tests.reliability.support import python_env
from tests.reliability.test_concurrency import free_port
from tests.torch.test_data_pipeline import EMBEDDED, ROOT

FAST = {
    "data": {"grid_size": [2, 2], "K": 7, "nphotons": 1e6, "subsample_seed": 42},
    "model": {"n_filters_scale": 1, "cbam_encoder": False, "use_shared_decoder": True, "object_estimate_steps": 2},
    "training": {"epochs": 1, "batch_size": 4, "device": "cpu", "num_workers": 0},
}


def test_runs_starting_in_the_same_second_get_their_own_directories(tmp_path):
    now = time.time()
    first, second = new_run_dir(tmp_path, now), new_run_dir(tmp_path, now)
    assert first != second and first.parent == second.parent == tmp_path
    assert second.name == first.name + "_1"


def test_train_never_writes_into_the_directory_of_a_run_started_in_the_same_second(tmp_path, monkeypatch):
    """Another run created run_<stamp> this very second; this run must not mix its files into it."""
    pytest.importorskip("lightning")
    from ptycho_torch import cli_train

    frozen = time.gmtime()
    monkeypatch.setattr(time, "gmtime", lambda *args: frozen)
    other = tmp_path / "runs" / time.strftime("run_%Y%m%d_%H%M%S", frozen)
    other.mkdir(parents=True)
    (other / "theirs.txt").write_text("the other run")
    config = tmp_path / "fast.json"
    config.write_text(json.dumps(FAST))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        status = cli_train.main([str(EMBEDDED), "--config", str(config), "--output-dir", str(tmp_path / "runs"),
                                 "--data-dir", str(tmp_path / "memmap"), "--n-groups", "16", "--quiet"])
    assert status == 0
    assert not [w for w in caught if "exists and is not empty" in str(w.message)]  # a fresh directory, as Lightning sees it
    assert sorted(p.name for p in other.iterdir()) == ["theirs.txt"]
    ours = tmp_path / "runs" / (other.name + "_1")
    assert (ours / "checkpoints" / "best-checkpoint.ckpt").is_file() and not (ours / INCOMPLETE).exists()
    assert find_best_checkpoint(ours) == ours / "checkpoints" / "best-checkpoint.ckpt"


def test_an_unfinished_run_directory_is_never_picked(tmp_path):
    """A run killed after its first checkpoint keeps its files but find_best_checkpoint does not take them."""
    run_dir = new_run_dir(tmp_path)
    mark_incomplete(run_dir)  # what build_trainer's RunInProgressMark does when fitting starts
    (run_dir / "checkpoints").mkdir()
    (run_dir / "checkpoints" / "last.ckpt").write_bytes(b"half")
    assert find_best_checkpoint(run_dir) is None
    discard_failed_run(run_dir)  # checkpoints are kept for inspection, still marked
    assert (run_dir / "checkpoints" / "last.ckpt").is_file() and find_best_checkpoint(run_dir) is None
    mark_finished(run_dir)
    assert find_best_checkpoint(run_dir) == run_dir / "checkpoints" / "last.ckpt"


def test_a_failed_run_without_checkpoint_leaves_no_directory(tmp_path):
    run_dir = new_run_dir(tmp_path)
    (run_dir / "metrics.csv").write_text("epoch\n")
    discard_failed_run(run_dir)
    assert list(tmp_path.iterdir()) == []


def test_two_ddp_ranks_share_one_run_directory(tmp_path):
    """Two gloo ranks on the CPU under torchrun: one run directory, both ranks succeed (was: rank 1 found no checkpoint)."""
    pytest.importorskip("lightning")
    config = tmp_path / "fast.json"
    config.write_text(json.dumps(FAST))
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
         "--master_port", str(free_port()), "-m", "ptycho_torch.cli_train", str(EMBEDDED), "--config", str(config),
         "--output-dir", str(tmp_path / "runs"), "--n-groups", "16"],  # not --quiet: Lightning's INFO line shows the two ranks
        cwd=ROOT, env=python_env(), capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    runs = sorted((tmp_path / "runs").glob("run_*"))
    assert len(runs) == 1, runs
    (run_dir,) = runs
    printed = [Path(line) for line in result.stdout.split() if line.endswith(".ckpt")]
    assert printed == [run_dir / "checkpoints" / "best-checkpoint.ckpt"]  # rank 0 prints it, once
    assert printed[0].is_file() and (run_dir / "metrics.csv").is_file() and (run_dir / "configs" / "data_config.json").is_file()
    assert not (run_dir / INCOMPLETE).exists() and "exists and is not empty" not in result.stderr
    assert "world_size=2" in result.stderr or "distributed_backend=gloo" in result.stderr, result.stderr[-3000:]


# ---- the Ptychodus API: an all-zero probe, and a model of another size -------------------------------------------------

@pytest.fixture
def inference_inputs():
    pytest.importorskip("lightning")
    with np.load(EMBEDDED, allow_pickle=False) as scan:
        patterns = (scan["diffraction"][:64].astype(np.float64) ** 2).round().astype(np.int32)  # counts, as Ptychodus passes
        positions = np.column_stack([scan["ycoords"][:64], scan["xcoords"][:64]])
        probe = scan["probeGuess"]
    return patterns, probe, positions


def test_from_np_refuses_an_all_zero_probe(inference_inputs):
    from ptycho_torch.api.base_api import ConfigManager, PtychoDataLoader

    patterns, probe, positions = inference_inputs
    manager = ConfigManager(data_config={"N": 64, "grid_size": (1, 1), "C": 1})
    with pytest.raises(ValueError, match=r"probe: the probe is all zeros, so it illuminates nothing"):
        PtychoDataLoader.from_np(diff_patterns=patterns, probe=np.zeros_like(probe), positions=positions, config_manager=manager,
                                 progress=False)


def test_inference_with_a_model_of_another_gridsize_names_what_differs(inference_inputs):
    from ptycho_torch.api.base_api import ConfigManager, InferenceEngine, PtychoDataLoader, PtychoModel
    from ptycho_torch.model import PtychoPINN_Lightning

    patterns, probe, positions = inference_inputs
    small = {"n_filters_scale": 1, "object_estimate_steps": 1}
    data = {"N": 64, "grid_size": (1, 1), "C": 1, "K": 4}
    loader = PtychoDataLoader.from_np(diff_patterns=patterns, probe=probe, positions=positions,
                                      config_manager=ConfigManager(data_config=data, model_config=small), progress=False)
    model = PtychoModel(model_config=small, data_config={"N": 64, "grid_size": (2, 2), "C": 4})
    model.model = PtychoPINN_Lightning(small, {"N": 64, "grid_size": (2, 2), "C": 4})
    engine = InferenceEngine(ConfigManager(data_config=data, model_config=small), model)
    with pytest.raises(ValueError, match=r"data_config\.grid_size: configs \(1, 1\) vs model \(2, 2\)"):
        engine.predict_and_stitch(loader, progress=False)
    matching = InferenceEngine(ConfigManager.from_loaded_model(model), model)
    with pytest.raises(ValueError, match=r"trained on groups of 4 patterns of 64 x 64 .* data holds groups of 1"):
        matching.predict_and_stitch(loader, progress=False)
    loader.close()
