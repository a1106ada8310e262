"""ptycho-train and ptycho-reconstruct against careless and hostile input (issue 19): nothing overwritten, no silent
garbage, one-line errors with exit status 2 before the work, the right device."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("tensordict")
pytest.importorskip("lightning")
pytest.importorskip("matplotlib")

from ptycho.scan_file import scan_files  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
NPZ = ROOT / "datasets" / "sim_small.npz"
FAST = {
    "data": {"grid_size": [2, 2], "K": 7, "nphotons": 1e6, "subsample_seed": 42},
    "model": {"n_filters_scale": 1, "cbam_encoder": False, "use_shared_decoder": True, "object_estimate_steps": 2},
    "training": {"epochs": 1, "batch_size": 8, "device": "cpu", "num_workers": 0},
}


def run(module: str, *args, env: dict | None = None, timeout: float = 600, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    environment = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "2", **(env or {})}
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=cwd, env=environment, capture_output=True,
                          text=True, timeout=timeout)


def train(*args, **kwargs) -> subprocess.CompletedProcess:
    return run("ptycho_torch.cli_train", *args, **kwargs)


def reconstruct(*args, **kwargs) -> subprocess.CompletedProcess:
    return run("ptycho_torch.cli_reconstruct", *args, **kwargs)


def assert_one_line_error(result: subprocess.CompletedProcess, *phrases: str) -> str:
    """Exit status 2, no traceback, and the last stderr line naming every phrase."""
    assert result.returncode == 2, (result.returncode, result.stderr[-3000:])
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    line = result.stderr.strip().splitlines()[-1]
    for phrase in phrases:
        assert phrase in line, (phrase, line)
    return line


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def write_config(path: Path, document: dict) -> Path:
    path.write_text(json.dumps(document))
    return path


def scan_copy(path: Path, **changes) -> Path:
    """The embedded scan with some arrays replaced."""
    with np.load(NPZ, allow_pickle=False) as scan:
        arrays = {name: scan[name] for name in scan.files}
    arrays.update(changes)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)
    return path


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """One epoch on 16 groups of the embedded scan (a real ptycho-train checkpoint)."""
    directory = tmp_path_factory.mktemp("trained")
    result = train(NPZ, "--config", write_config(directory / "fast.json", FAST), "--output-dir", directory / "runs",
                   "--n-groups", 16, "--quiet")
    assert result.returncode == 0, result.stderr[-3000:]
    return Path(result.stdout.strip().splitlines()[-1])


# ---- item 1: never overwrite an input, never write through a link, print the path written ------------------------------

def test_reconstruct_refuses_to_overwrite_its_input_scan(checkpoint, tmp_path):
    scan = scan_copy(tmp_path / "scan.npz")
    before = sha256(scan)
    result = reconstruct(checkpoint, scan, "--output", scan, "--quiet")
    assert_one_line_error(result, str(scan), "never overwrites an input")
    assert sha256(scan) == before


def test_reconstruct_never_writes_through_a_symbolic_link(checkpoint, tmp_path):
    precious = tmp_path / "thesis.npz"
    precious.write_bytes(b"a user's own file")
    link = tmp_path / "recon.npz"
    link.symlink_to(precious)
    result = reconstruct(checkpoint, NPZ, "--output", link, "--quiet")
    assert_one_line_error(result, str(link), "symbolic link")
    assert precious.read_bytes() == b"a user's own file"


def test_reconstruct_replaces_only_its_own_earlier_outputs(checkpoint, tmp_path):
    other_scan = scan_copy(tmp_path / "other_scan.npz")
    notes = tmp_path / "notes.txt"
    notes.write_text("a user's notes")
    picture = tmp_path / "figure.png"
    from PIL import Image

    Image.new("L", (4, 4)).save(picture)
    kept = {path: sha256(path) for path in (other_scan, notes, picture)}
    assert_one_line_error(reconstruct(checkpoint, NPZ, "--output", other_scan, "--quiet"), str(other_scan), "not recognisably an output")
    assert_one_line_error(reconstruct(checkpoint, NPZ, "--output", notes, "--no-png", "--quiet"), str(notes), "not recognisably an output")
    assert_one_line_error(reconstruct(checkpoint, NPZ, "--output", tmp_path / "figure.npz", "--quiet"), str(picture),
                          "not recognisably an output")
    assert {path: sha256(path) for path in kept} == kept
    assert not (tmp_path / "other_scan.png").exists() and not (tmp_path / "figure.npz").exists()
    output = tmp_path / "recon.npz"
    for _ in range(2):  # the second run replaces the first one's NPZ and PNG
        result = reconstruct(checkpoint, NPZ, "--output", output, "--quiet")
        assert result.returncode == 0, result.stderr
    assert output.is_file() and output.with_suffix(".png").is_file()


def test_an_output_that_is_a_fifo_or_a_huge_picture_is_refused_without_reading_it(checkpoint, tmp_path):
    """The check of an existing output once opened a FIFO (and waited for a writer forever) and let Pillow's
    decompression-bomb error escape as an internal error."""
    fifo = tmp_path / "pipe.npz"
    os.mkfifo(fifo)
    started = time.monotonic()
    assert_one_line_error(reconstruct(checkpoint, NPZ, "--output", fifo, "--no-png", "--quiet", timeout=120), str(fifo), "not a regular file")
    os.mkfifo(tmp_path / "pipe2.png")
    assert_one_line_error(reconstruct(checkpoint, NPZ, "--output", tmp_path / "pipe2.npz", "--quiet", timeout=120), "pipe2.png",
                          "not a regular file")
    assert time.monotonic() - started < 100
    from PIL import Image

    import io
    import struct
    import zlib

    small = io.BytesIO()
    Image.new("L", (4, 4)).save(small, format="PNG")
    data = bytearray(small.getvalue())  # its IHDR made to claim 30000 x 30000 pixels (bytes 16-28, CRC 29-32)
    data[16:24] = struct.pack(">II", 30000, 30000)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(bytes(data))
    with pytest.raises(Image.DecompressionBombError):
        Image.open(bomb)
    assert_one_line_error(reconstruct(checkpoint, NPZ, "--output", tmp_path / "bomb.npz", "--quiet"), str(bomb), "not recognisably an output")


def test_a_file_put_at_the_output_while_the_command_computes_is_kept(checkpoint, tmp_path, monkeypatch):
    """The output is checked again just before it is written: the check before the work alone left minutes for another program."""
    from ptycho_torch import cli_reconstruct, workflow

    output = tmp_path / "recon.npz"
    real = workflow.reconstruct_scan

    def computing(*args, **kwargs):
        result = real(*args, **kwargs)
        output.write_text("written by another program meanwhile")
        return result

    monkeypatch.setattr(workflow, "reconstruct_scan", computing)
    status = cli_reconstruct.main([str(checkpoint), str(NPZ), "--output", str(output), "--n-groups", "16", "--no-png", "--quiet",
                                   "--data-dir", str(tmp_path / "memmap")])
    assert status == 2
    assert output.read_text() == "written by another program meanwhile"


def test_reconstruct_refuses_an_output_named_like_its_png(checkpoint, tmp_path):
    result = reconstruct(checkpoint, NPZ, "--output", tmp_path / "recon.png", "--quiet")
    assert_one_line_error(result, str(tmp_path / "recon.png"), "--no-png")
    assert list(tmp_path.iterdir()) == []


def test_refinement_options_without_refine_are_refused_before_any_work(checkpoint, tmp_path):
    result = reconstruct(checkpoint, NPZ, "--output", tmp_path / "r.npz", "--refine-points", 32, "--refine-momentum", 0.3, "--quiet")
    assert_one_line_error(result, "--refine-points and --refine-momentum", "--refine ITERATIONS")
    assert list(tmp_path.iterdir()) == []
    result = reconstruct(checkpoint, NPZ, "--output", tmp_path / "r.npz", "--start", "flat", "--quiet")
    assert_one_line_error(result, "--start flat", "--refine ITERATIONS")
    assert list(tmp_path.iterdir()) == []
    result = reconstruct(checkpoint, NPZ, "--output", tmp_path / "r.npz", "--refine", 2, "--refine-momentum", 1, "--quiet")
    assert result.returncode == 2 and "--refine-momentum" in result.stderr and "[0, 1)" in result.stderr, result.stderr[-2000:]
    result = reconstruct(checkpoint, NPZ, "--output", tmp_path / "r.npz", "--refine-plateau", 0.01, "--quiet")
    assert_one_line_error(result, "--refine-plateau sets", "--refine ITERATIONS")
    result = reconstruct(checkpoint, NPZ, "--output", tmp_path / "r.npz", "--refine", 2, "--refine-plateau", 1, "--quiet")
    assert result.returncode == 2 and "--refine-plateau" in result.stderr and "[0, 1)" in result.stderr, result.stderr[-2000:]
    result = reconstruct(checkpoint, NPZ, "--output", tmp_path / "r.npz", "--refine", 2, "--refine-plateau", 0.01, "--quiet")
    assert_one_line_error(result, "--refine-plateau", "--refine 3 or more (got 2)")
    result = reconstruct(checkpoint, NPZ, "--output", tmp_path / "r.npz", "--refine", 5, "--refine-points", "all", "--refine-momentum", 0,
                         "--refine-plateau", 0.01, "--quiet")
    assert_one_line_error(result, "--refine-plateau", "already are")
    result = reconstruct(checkpoint, NPZ, "--output", tmp_path / "r.npz", "--refine", 5, "--refine-points", 512, "--refine-momentum", 0,
                         "--refine-plateau", 0.01, "--quiet")  # the scan's 512 points: the same as all
    assert_one_line_error(result, "--refine-points 512 (at least its 512 scan points)", "already are parallel updates")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("start, options, named", [
    ("flat", ("--precision", "bf16"), "--precision does nothing with --start flat"),
    ("flat", ("--batch-size", 8, "--groups", "all"), "--batch-size and --groups do nothing with --start flat"),
    ("flat", ("--n-groups", 10), "--n-groups does nothing with --start flat"),
    ("physics", ("--precision", "fp32"), "--precision does nothing with --start physics"),
])
def test_network_options_a_start_does_not_run_are_refused_before_any_work(checkpoint, tmp_path, start, options, named):
    """A setting is honoured or refused: --start flat runs no network, --start physics no U-Net."""
    result = reconstruct(checkpoint, NPZ, "--output", tmp_path / "r.npz", "--start", start, "--refine", 2, *options,
                         "--data-dir", tmp_path / "memmap", "--quiet")
    assert_one_line_error(result, named, "leave it out")
    assert list(tmp_path.iterdir()) == []


def test_start_physics_with_a_network_without_physics_input_is_refused_before_the_memory_map(tmp_path):
    from ptycho_torch.config_params import DataConfig, ModelConfig, TrainingConfig
    from ptycho_torch.model.pinn import PtychoPINN

    network = PtychoPINN(ModelConfig(generator_input="diffraction", generator_output="object", n_filters_scale=1, cbam_encoder=False,
                                     use_shared_decoder=True), DataConfig(N=64, grid_size=(2, 2), K=7), TrainingConfig())
    checkpoint = tmp_path / "diffraction.ckpt"
    torch.save({"state_dict": network.state_dict(), "hyper_parameters": network.configs()}, checkpoint)
    result = reconstruct(checkpoint, NPZ, "--output", tmp_path / "out" / "r.npz", "--start", "physics", "--data-dir", tmp_path / "memmap",
                         "--quiet")
    assert_one_line_error(result, "--start physics", "generator_input='diffraction'", "--start network")
    assert not (tmp_path / "memmap").exists() and not (tmp_path / "out" / "r.npz").exists()


def test_the_command_line_refinement_options_reach_the_refinement():
    from ptycho_torch.cli_reconstruct import REFINE_MOMENTUM, REFINE_PLATEAU, REFINE_POINTS, parse_args, refine_update
    from ptycho_torch.model.refine import RefinementUpdate

    default = RefinementUpdate()
    assert (REFINE_POINTS, REFINE_MOMENTUM, REFINE_PLATEAU) == (default.patterns, default.momentum, default.plateau)
    given = ["ckpt", "scan.npz", "--refine", "5"]
    assert refine_update(parse_args(given)) == RefinementUpdate()
    assert refine_update(parse_args([*given, "--refine-points", "all", "--refine-momentum", "0"])) == RefinementUpdate(patterns=None, momentum=0.0)
    assert refine_update(parse_args([*given, "--refine-points", "16"])) == RefinementUpdate(patterns=16)
    assert refine_update(parse_args([*given, "--refine-plateau", "0"])) == RefinementUpdate(plateau=0.0)


def test_reconstruct_writes_exactly_the_path_it_prints_with_device_cpu(checkpoint, tmp_path):
    output = tmp_path / "object.ckpt"
    result = reconstruct(checkpoint, NPZ, "--output", output, "--n-groups", 16, "--no-png", "--device", "cpu", "--quiet")
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines() == [str(output)]
    with np.load(output, allow_pickle=False) as written:
        assert written["object"].dtype == np.complex64
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith("_memmap")) == ["object.ckpt"]


# ---- item 2: a default reconstruction never breaks a later use of the folder ---------------------------------------------

def test_default_reconstruction_beside_the_scan_does_not_break_building_or_training_the_folder(checkpoint, tmp_path):
    folder = tmp_path / "scans"
    scan = scan_copy(folder / "a.npz")
    result = reconstruct(checkpoint, scan, "--n-groups", 16, "--no-png", "--quiet")
    assert result.returncode == 0, result.stderr[-3000:]
    written = Path(result.stdout.strip().splitlines()[-1])
    assert written == folder / "a_reconstruction.npz" and written.is_file()
    assert scan_files(folder) == [scan]
    built = run("ptycho_torch.cli", "build", folder, "--n-groups", 16, "--seed", 1, "--data-dir", tmp_path / "data", "--quiet")
    assert built.returncode == 0, built.stderr[-3000:]
    assert written.is_file()


# ---- item 4: an all-zero probe is refused; a non-finite loss is an error naming the epoch -------------------------------

def test_train_refuses_an_all_zero_probe_and_leaves_no_run_directory(tmp_path):
    with np.load(NPZ, allow_pickle=False) as source:
        zero_probe = np.zeros_like(source["probeGuess"])
    scan = scan_copy(tmp_path / "dark.npz", probeGuess=zero_probe)
    result = train(scan, "--config", write_config(tmp_path / "fast.json", FAST), "--output-dir", tmp_path / "runs", "--n-groups", 16,
                   "--quiet")
    assert_one_line_error(result, str(scan), "'probeGuess'", "all zeros")
    assert not list((tmp_path / "runs").glob("run_*"))


def test_a_loss_that_becomes_non_finite_stops_training_with_an_error_naming_the_epoch(tmp_path):
    config = json.loads(json.dumps(FAST))
    config["training"]["learning_rate"] = 1e30  # the first step sends the weights to infinity
    result = train(NPZ, "--config", write_config(tmp_path / "wild.json", config), "--output-dir", tmp_path / "runs",
                   "--n-groups", 32, "--quiet")
    assert_one_line_error(result, "loss in epoch 0", "training.learning_rate")
    assert result.stdout.strip() == ""
    assert not list((tmp_path / "runs").glob("run_*"))  # no checkpoint was written: nothing is left to pick up


# ---- item 5 and 8: configs checked field by field, named as the user wrote them, before any work ------------------------

@pytest.mark.parametrize("section, values, phrase", [
    ("data", {"grid_size": 2}, "data.grid_size must be a list of 2"),
    ("data", {"K": 3}, "data.K=3 neighbours cannot fill groups"),
    ("training", {"learning_rate": "fast"}, "training.learning_rate must be a finite number"),
    ("training", {"epochs": 1e400}, "training.epochs must be an integer"),
    ("training", {"epochs": 0}, "training.epochs must be > 0"),
    ("data", {"N": 32}, "data.N=32 contradicts the 64 x 64 diffraction patterns"),
    ("training", {"output_dir": "myruns"}, "training.output_dir='myruns' is not where this run writes (--output-dir"),
    ("training", {"train_data_file": "other.npz"}, "training.train_data_file='other.npz' is not a scan this run trains on"),
    ("training", {"test_data_file": "test.npz"}, "training.test_data_file='test.npz' is not a scan this run trains on"),
    ("training", {"strategy": "bogus"}, "training.strategy='bogus' is not a Lightning strategy; use 'ddp'"),
])
def test_config_errors_name_the_field_as_written_before_any_work(tmp_path, section, values, phrase):
    document = json.loads(json.dumps(FAST))
    document[section].update(values)
    config = tmp_path / "train.json"
    config.write_text(json.dumps(document).replace('"epochs": Infinity', '"epochs": 1e400'))
    result = train(NPZ, "--config", config, "--output-dir", tmp_path / "runs", "--n-groups", 16, "--quiet")
    line = assert_one_line_error(result, str(config), phrase)
    assert "Config." not in line and "nepochs" not in line and "neighbor_count" not in line
    assert not (tmp_path / "runs").exists()


def test_config_paths_that_name_the_commands_own_are_accepted_and_recorded(tmp_path):
    from ptycho_torch.cli_train import build_configs, parse_args

    config = tmp_path / "train.json"
    config.write_text(json.dumps({"training": {"train_data_file": str(NPZ), "test_data_file": str(NPZ), "output_dir": str(tmp_path / "runs")}}))
    configs = build_configs(parse_args([str(NPZ), "--config", str(config), "--output-dir", str(tmp_path / "runs")]), NPZ)
    assert (configs.training.train_data_file, configs.training.output_dir) == (str(NPZ), str(tmp_path / "runs"))
    configs = build_configs(parse_args([str(NPZ), "--output-dir", str(tmp_path / "elsewhere")]), NPZ)  # no file: the command's paths recorded
    assert configs.training.output_dir == str(tmp_path / "elsewhere")


def test_config_paths_left_at_their_default_none_are_accepted(tmp_path):
    """PtychoPINN's config files spell the unset paths out (``train_data_file: null``): that names no other path."""
    from ptycho_torch.cli_train import build_configs, parse_args

    config = tmp_path / "train.json"
    config.write_text(json.dumps({"training_config": {"train_data_file": None, "test_data_file": None}}))
    configs = build_configs(parse_args([str(NPZ), "--config", str(config), "--output-dir", str(tmp_path / "runs")]), NPZ)
    assert configs.training.train_data_file == configs.training.test_data_file == str(NPZ)


def test_a_config_path_naming_the_commands_directory_of_scans_is_accepted(tmp_path):
    """ptycho-train DIR with training.train_data_file DIR names the data this run trains on: it was refused, with the advice
    to give that path as the argument, which it was."""
    import shutil

    from ptycho_torch.cli_train import build_configs, parse_args

    scans = tmp_path / "scans"
    scans.mkdir()
    shutil.copy(NPZ, scans / "a.npz")
    config = tmp_path / "train.json"
    config.write_text(json.dumps({"training": {"train_data_file": str(scans)}}))
    configs = build_configs(parse_args([str(scans), "--config", str(config), "--output-dir", str(tmp_path / "runs")]), scans / "a.npz",
                            [scans / "a.npz"])
    assert configs.training.train_data_file == str(scans / "a.npz")


def test_an_unknown_strategy_is_named_as_the_file_spells_its_section(tmp_path):
    from ptycho_torch.cli_train import build_configs, parse_args

    config = tmp_path / "train.json"
    config.write_text(json.dumps({"training_config": {"strategy": "bogus"}}))
    with pytest.raises(ValueError, match=r"train\.json: training_config\.strategy='bogus' is not a Lightning strategy"):
        build_configs(parse_args([str(NPZ), "--config", str(config), "--output-dir", str(tmp_path / "runs")]), NPZ)


def test_yaml_alias_bomb_is_refused_quickly(tmp_path):
    pytest.importorskip("yaml")
    lines = ["model:", "  probe_mask_tensor:", "    - &a0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"    - &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 10)]
    config = tmp_path / "bomb.yaml"
    config.write_text("\n".join(lines) + "\n")
    started = time.monotonic()
    result = train(NPZ, "--config", config, "--output-dir", tmp_path / "runs", "--quiet", timeout=60)
    assert_one_line_error(result, str(config), "expands to more than")
    assert time.monotonic() - started < 30
    assert not (tmp_path / "runs").exists()


def test_oversized_config_file_is_refused(tmp_path):
    config = tmp_path / "huge.json"
    config.write_text(json.dumps({"training": {"notes": "x" * (2 << 20)}}))
    result = train(NPZ, "--config", config, "--output-dir", tmp_path / "runs", "--quiet")
    assert_one_line_error(result, str(config), "a config file may hold at most")


# ---- item 6: positions spanning far more than the patterns: refused with the size, before any work ----------------------

def test_positions_in_the_wrong_units_are_refused_before_the_memory_map(tmp_path, checkpoint):
    with np.load(NPZ, allow_pickle=False) as source:
        x, y = source["xcoords"] * 1e4, source["ycoords"] * 1e4
    scan = scan_copy(tmp_path / "microns.npz", xcoords=x, ycoords=y, xcoords_start=x, ycoords_start=y)
    result = train(scan, "--config", write_config(tmp_path / "fast.json", FAST), "--output-dir", tmp_path / "runs",
                   "--data-dir", tmp_path / "data", "--n-groups", 16, "--quiet", timeout=120)
    assert_one_line_error(result, str(scan), "group regions of", "TB", "object pixels")
    assert not (tmp_path / "data").exists()
    result = reconstruct(checkpoint, scan, "--output", tmp_path / "out.npz", "--quiet", timeout=120)
    assert_one_line_error(result, str(scan), "object canvas would be", "object pixels")
    assert not (tmp_path / "out_memmap").exists()


def test_a_scan_refused_while_its_memory_map_is_built_leaves_no_directory(tmp_path):
    """Its bad pattern is found while the memory map is copied: the directories made for it go, lock included."""
    with np.load(NPZ, allow_pickle=False) as source:
        diffraction = source["diffraction"].copy()
    diffraction[100, 3, 3] = np.nan
    scan = scan_copy(tmp_path / "scans" / "nan.npz", diffraction=diffraction)
    work = tmp_path / "work"
    work.mkdir()
    result = reconstruct("pretrained", scan, "--output", work / "out" / "deeper" / "r.npz", "--quiet", cwd=work,
                         timeout=120)  # default data/memmap; the output's directories are made by its checks
    assert_one_line_error(result, str(scan), "key 'diffraction'[100]", "not finite value nan")
    assert list(work.iterdir()) == []
    result = train(scan, "--config", write_config(tmp_path / "fast.json", FAST), "--output-dir", work / "runs", "--n-groups", 16,
                   "--quiet", timeout=120)
    assert_one_line_error(result, str(scan), "key 'diffraction'[100]", "not finite value nan")
    assert list(work.iterdir()) == []


# ---- item 9 and 10: checkpoints read safely, clear errors naming the file -----------------------------------------------

def test_empty_or_foreign_checkpoints_are_one_line_errors_naming_the_file(tmp_path):
    empty = tmp_path / "empty.ckpt"
    empty.write_bytes(b"")
    assert_one_line_error(reconstruct(empty, NPZ, "--quiet"), str(empty), "is empty")
    bare = tmp_path / "bare.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, bare)
    assert_one_line_error(reconstruct(bare, NPZ, "--quiet"), str(bare), "model_config")


def test_a_crafted_checkpoint_never_runs_its_payload_even_when_torch_is_told_to_unpickle(tmp_path):
    marker = tmp_path / "payload-ran"
    crafted = tmp_path / "crafted.ckpt"
    maker = ("import os, sys, torch\n"
             "class Payload:\n"
             "    def __reduce__(self):\n"
             "        return (os.system, ('touch ' + sys.argv[2],))\n"
             "torch.save({'state_dict': {}, 'hyper_parameters': {'model_config': {}, 'data_config': {}}, 'x': Payload()}, sys.argv[1])\n")
    subprocess.run([sys.executable, "-c", maker, str(crafted), str(marker)], check=True, timeout=120)
    result = reconstruct(crafted, NPZ, "--quiet", env={"TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"})
    assert not marker.exists(), "the checkpoint's payload ran"
    assert_one_line_error(result, str(crafted), "weights-only load refuses")


@pytest.mark.parametrize("content", [b"hello world", b"h", b"garbage\n", b'{"data": {"N": 64}}'], ids=["text", "one-byte", "line", "json"])
def test_a_checkpoint_of_arbitrary_bytes_is_a_clear_error_not_an_internal_one(tmp_path, content):
    """torch's weights-only unpickler raises KeyError or IndexError for some bytes (a text file starting with 'h'), and an
    UnpicklingError without a refused object for others: each is 'not a readable torch checkpoint', not exit 3 and not
    'holds Python objects'."""
    from ptycho_torch.model.checkpoints import CheckpointError, read_checkpoint

    path = tmp_path / "notes.ckpt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="is not a readable torch checkpoint") as caught:
        read_checkpoint(path)
    assert "()" not in str(caught.value) and "(;" not in str(caught.value)


def test_a_checkpoint_of_another_pattern_size_names_both_sizes_not_a_config_field(checkpoint, tmp_path):
    with np.load(NPZ, allow_pickle=False) as source:
        cropped = {"diffraction": source["diffraction"][:, 16:48, 16:48], "probeGuess": source["probeGuess"][16:48, 16:48]}
    scan = scan_copy(tmp_path / "small.npz", **cropped)
    line = assert_one_line_error(reconstruct(checkpoint, scan, "--quiet"), str(checkpoint), "64 x 64", "32 x 32")
    assert "model.N" not in line


def edited_shipped_checkpoint(path: Path, **model_settings) -> Path:
    """The shipped model's checkpoint with ``model_settings`` written over its stored model_config."""
    from ptycho_torch.pretrained import resolve_checkpoint

    checkpoint = torch.load(resolve_checkpoint("pretrained"), map_location="cpu", weights_only=True)
    checkpoint["hyper_parameters"]["model_config"].update(model_settings)
    torch.save(checkpoint, path)
    return path


@pytest.mark.parametrize("setting, value, phrases", [
    ("n_filters_scale", 4096, ("'generator.encoder.0.0.weight' is (16, 8, 3, 3) in the checkpoint but (65536, 8, 3, 3)", "n_filters_scale=4096")),
    ("object_estimate_steps", 10**9, ("object_estimate_steps=1000000000 must be an integer from 1 to 100",)),
])
def test_a_checkpoint_with_an_edited_setting_is_refused_before_its_network_is_built(tmp_path, setting, value, phrases):
    """n_filters_scale=4096 tried to allocate 154 GB (exit 3); object_estimate_steps=1e9 made the reconstruction hang."""
    from ptycho_torch.model.checkpoints import CheckpointError, load_network
    from ptycho_torch.model.lightning_module import PtychoPINN_Lightning

    edited = edited_shipped_checkpoint(tmp_path / "edited.ckpt", **{setting: value})
    for load in (load_network, lambda path: PtychoPINN_Lightning.load_from_checkpoint(path, map_location="cpu")):
        with pytest.raises(CheckpointError) as refused:
            load(edited)
        assert str(edited) in str(refused.value) and "restore the settings it was trained with" in str(refused.value)
        assert all(phrase in str(refused.value) for phrase in phrases), str(refused.value)
    result = reconstruct(edited, NPZ, "--quiet", "--output", tmp_path / "out.npz", timeout=120)
    assert_one_line_error(result, str(edited), *phrases)
    assert not (tmp_path / "out.npz").exists()


def test_a_checkpoint_of_another_version_with_unknown_keys_loads_with_a_warning_naming_the_file_and_keys(tmp_path, caplog):
    """docs/troubleshooting.md: unknown keys a checkpoint stores are ignored with a warning; a config file's are refused."""
    import logging

    from ptycho_torch.model.checkpoints import load_network
    from ptycho_torch.model.lightning_module import PtychoPINN_Lightning

    newer = edited_shipped_checkpoint(tmp_path / "newer.ckpt", foo=1)
    expected = "ignoring unknown key(s) model_config.foo in its hyper_parameters"
    for load in (load_network, lambda path: PtychoPINN_Lightning.load_from_checkpoint(path, map_location="cpu").network):
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            network = load(newer)
        assert network.model_config.n_filters_scale == 1 and not hasattr(network.model_config, "foo")
        warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
        assert len([message for message in warnings if expected in message and str(newer) in message]) == 1, warnings
    result = reconstruct(newer, NPZ, "--quiet", "--n-groups", 16, "--output", tmp_path / "out.npz", "--no-png", timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert expected in result.stderr and str(newer) in result.stderr
    typo = write_config(tmp_path / "typo.json", {**FAST, "model": {**FAST["model"], "foo": 1}})
    assert_one_line_error(train(NPZ, "--config", typo, "--output-dir", tmp_path / "runs"), str(typo), "foo")


def test_torch_floor_loads_weights_only_by_default():
    tomllib = pytest.importorskip("tomllib")

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for extra in ("torch", "train"):
        (spec,) = [item for item in extras[extra] if item.startswith("torch")]
        floor = tuple(int(part) for part in spec.split(">=")[1].split(".")[:2])
        assert floor >= (2, 6), (extra, spec)  # torch.load's default became weights_only=True in 2.6


# ---- item 11: user errors are one line and exit 2, checked before the work ---------------------------------------------

def test_train_on_a_damaged_npz_is_one_line(tmp_path):
    broken = tmp_path / "broken.npz"
    broken.write_bytes(b"not a zip archive")
    assert_one_line_error(train(broken, "--output-dir", tmp_path / "runs"), str(broken))


def test_train_with_an_output_dir_under_a_file_is_one_line(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = train(NPZ, "--config", write_config(tmp_path / "fast.json", FAST), "--output-dir", blocker / "runs", "--n-groups", 16)
    line = assert_one_line_error(result, str(blocker), "is a file", "choose another --output-dir")
    assert "data_dir=" not in line  # the option the user gave, not one they did not (the maps go under --output-dir by default)


def test_reconstruct_with_an_unwritable_output_fails_before_inference(checkpoint, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    started = time.monotonic()
    result = reconstruct(checkpoint, NPZ, "--output", blocker / "recon.npz", "--quiet")
    assert_one_line_error(result, str(blocker), "is a file")
    assert time.monotonic() - started < 60
    assert not list(tmp_path.glob("*_memmap"))


def test_an_unwritable_output_directory_names_the_output_option_not_data_dir(tmp_path, monkeypatch):
    """As root the permission bits do not stop a write, so the refusal is simulated at the write test itself."""
    import errno as errno_module

    from ptycho_torch import cli_reconstruct
    from ptycho_torch.store import atomic

    def refuse(self, *args, **kwargs):
        raise PermissionError(errno_module.EACCES, "Permission denied", str(self))

    monkeypatch.setattr(Path, "touch", refuse)
    with pytest.raises(OSError) as caught:
        cli_reconstruct.check_output_path(tmp_path / "recon.npz", "--output", inputs=())
    assert "choose another --output" in str(caught.value) and "data_dir" not in str(caught.value)
    with pytest.raises(OSError, match="pass data_dir="):  # the data directory's own message is unchanged
        atomic.require_writable_directory(tmp_path / "memmap")


def test_reconstruct_a_dangling_link_is_one_line(checkpoint, tmp_path):
    link = tmp_path / "scan.npz"
    link.symlink_to(tmp_path / "gone.npz")
    assert_one_line_error(reconstruct(checkpoint, link, "--quiet"), str(link), "does not exist")


# ---- item 13: reconstruct on the GPU when torch sees one, with --device --------------------------------------------------

def test_device_choice_follows_what_torch_sees():
    from ptycho_torch.cli import UsageError
    from ptycho_torch.cli_reconstruct import choose_device

    assert choose_device("auto", cuda_available=False).type == "cpu"
    assert choose_device("auto", cuda_available=True).type == "cuda"
    assert choose_device("cpu", cuda_available=True).type == "cpu"
    with pytest.raises(UsageError, match="torch sees no CUDA device"):
        choose_device("cuda", cuda_available=False)


def test_device_cpu_with_an_index_is_the_cpu_or_a_usage_error_never_blamed_on_the_checkpoint(tmp_path):
    """'cpu:0' is a torch device, but torch.load cannot map a checkpoint to it: the command said the shipped model was
    'not a readable torch checkpoint (truncated or another format ...)'."""
    from ptycho_torch.cli import UsageError
    from ptycho_torch.cli_reconstruct import choose_device
    from ptycho_torch.model.checkpoints import load_network
    from ptycho_torch.pretrained import resolve_checkpoint

    device = choose_device("cpu:0", cuda_available=False)
    assert str(device) == "cpu"
    load_network(resolve_checkpoint("pretrained"), map_location=device)  # loads
    with pytest.raises(UsageError, match="--device cpu:1: there is one CPU device; use --device cpu"):
        choose_device("cpu:1", cuda_available=False)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_reconstruct_device_cuda_without_cuda_is_one_line(checkpoint, tmp_path):
    result = reconstruct(checkpoint, NPZ, "--output", tmp_path / "r.npz", "--device", "cuda", "--quiet")
    assert_one_line_error(result, "--device cuda", "torch sees no CUDA device")


def test_reconstruct_imports_no_lightning(checkpoint, tmp_path):
    """Inference needs no training machinery: the command loads the checkpoint into the plain network, and
    nothing it imports pulls in Lightning or torch's compiler stack (tensordict would: seconds of start-up)."""
    script = ("import sys; from ptycho_torch.cli_reconstruct import main; "
              f"status = main([{str(checkpoint)!r}, {str(NPZ)!r}, '--output', {str(tmp_path / 'r.npz')!r}, '--no-png', '--quiet', "
              f"'--data-dir', {str(tmp_path / 'memmap')!r}]); "
              "print(status, sorted(name for name in sys.modules if name.split('.')[0] in ('lightning', 'pytorch_lightning', 'tensordict') "
              "or name.startswith(('torch._dynamo', 'torch._inductor'))))")
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"},
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "0 []", result.stdout
    assert (tmp_path / "r.npz").is_file()
# ---- issue 29 item 1: positions in metres refused, non-overlapping neighbours warned, with the numbers ------------------

def scaled_scan(path: Path, factor: float) -> Path:
    with np.load(NPZ, allow_pickle=False) as source:
        x, y = source["xcoords"] * factor, source["ycoords"] * factor
    return scan_copy(path, xcoords=x, ycoords=y, xcoords_start=x, ycoords_start=y)


def test_positions_in_metres_are_refused_by_both_commands_before_any_work(tmp_path, checkpoint):
    scan = scaled_scan(tmp_path / "metres.npz", 1e-8)
    result = train(scan, "--config", write_config(tmp_path / "fast.json", FAST), "--output-dir", tmp_path / "runs",
                   "--n-groups", 16, "--quiet", timeout=120)
    assert_one_line_error(result, str(scan), "span only", "metres")
    assert not (tmp_path / "runs").exists()
    result = reconstruct(checkpoint, scan, "--output", tmp_path / "out.npz", "--data-dir", tmp_path / "data", "--quiet", timeout=120)
    assert_one_line_error(result, str(scan), "span only", "metres")
    assert not (tmp_path / "data").exists()


def test_a_scan_whose_neighbours_do_not_overlap_is_warned_about_with_the_numbers(tmp_path, checkpoint):
    scan = scaled_scan(tmp_path / "far.npz", 10)
    result = reconstruct(checkpoint, scan, "--output", tmp_path / "out.npz", "--data-dir", tmp_path / "data",
                         "--n-groups", 8, "--no-png", "--quiet", timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    warnings = [line for line in result.stderr.splitlines() if "do not overlap" in line]
    assert len(warnings) == 1, result.stderr[-3000:]
    assert str(scan) in warnings[0] and "pixels apart (median)" in warnings[0] and "probe's width 24.2 pixels" in warnings[0]


# ---- issue 29 item 3: the number of torch threads is chosen, honoured and logged once (not under --quiet) -----------------

def thread_lines(result: subprocess.CompletedProcess) -> list[str]:
    assert result.returncode == 0, result.stderr[-3000:]
    return [line for line in result.stderr.splitlines() if "torch computes with" in line]


def test_reconstruct_logs_and_honours_the_thread_choice(checkpoint, tmp_path):
    common = ("--n-groups", 8, "--no-png", "--data-dir", tmp_path / "data")
    chosen = reconstruct(checkpoint, NPZ, "--output", tmp_path / "a.npz", "--threads", 1, *common)
    assert thread_lines(chosen) == ["INFO ptycho_torch.reconstruct: torch computes with 1 thread(s) (--threads); --threads N to change"]
    from_env = reconstruct(checkpoint, NPZ, "--output", tmp_path / "b.npz", *common, env={"OMP_NUM_THREADS": "2"})
    assert [line.split(": ", 1)[1] for line in thread_lines(from_env)] == [
        "torch computes with 2 thread(s) (OMP_NUM_THREADS=2); --threads N to change"]
    assert thread_lines(reconstruct(checkpoint, NPZ, "--output", tmp_path / "c.npz", "--threads", 1, "--quiet", *common)) == []


def test_train_logs_and_honours_the_thread_choice(tmp_path):
    env = {key: value for key, value in os.environ.items() if key != "OMP_NUM_THREADS"}
    result = subprocess.run([sys.executable, "-m", "ptycho_torch.cli_train", str(NPZ), "--config", str(write_config(tmp_path / "fast.json", FAST)),
                             "--output-dir", str(tmp_path / "runs"), "--n-groups", "16", "--threads", "1"],
                            cwd=ROOT, env={**env, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=600)
    (line,) = thread_lines(result)
    assert line.endswith("torch computes with 1 thread(s) (--threads); --threads N to change")


def test_train_threads_start_no_loader_worker_beyond_them_and_say_so_once(tmp_path):
    """--threads N is what a training process computes with: no loader worker on top of it, and one line saying so."""
    env = {key: value for key, value in os.environ.items() if key != "OMP_NUM_THREADS"}
    config = write_config(tmp_path / "fast.json", {**FAST, "training": {**FAST["training"], "num_workers": 4}})
    result = subprocess.run([sys.executable, "-m", "ptycho_torch.cli_train", str(NPZ), "--config", str(config),
                             "--output-dir", str(tmp_path / "runs"), "--n-groups", "16", "--threads", "1"],
                            cwd=ROOT, env={**env, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [line.split(": ", 1)[1] for line in result.stderr.splitlines() if "loader worker" in line]
    assert lines == ["TrainingConfig.num_workers=4: using 0 loader worker(s), as --threads 1 is all this process computes with"], lines


@pytest.mark.parametrize("omp, cores, workers, why", [
    ("2", 2, 0, "the cores OMP_NUM_THREADS=2 leaves free"),
    ("1", 4, 3, "the cores OMP_NUM_THREADS=1 leaves free"),
    ("3", 8, 4, None),
    (None, 2, 1, "the cores this machine has to spare"),
])
def test_train_loader_workers_fit_beside_the_threads_omp_num_threads_sets(monkeypatch, caplog, omp, cores, workers, why):
    """OMP_NUM_THREADS=2 on 2 cores once still started a loader worker beside the 2 compute threads."""
    import logging

    from ptycho_torch import cli_train, threads
    from ptycho_torch.config_params import TrainingConfig

    monkeypatch.setattr(threads, "available_cores", lambda: cores)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    if omp is None:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    else:
        monkeypatch.setenv("OMP_NUM_THREADS", omp)
    before = torch.get_num_threads()
    try:
        with caplog.at_level(logging.INFO, logger="ptycho_torch.train"):
            assert cli_train.set_torch_threads(None, TrainingConfig(num_workers=4)) == workers
    finally:
        torch.set_num_threads(before)
    lines = [r.getMessage() for r in caplog.records if "TrainingConfig.num_workers" in r.getMessage()]
    assert lines == ([] if why is None else [f"TrainingConfig.num_workers=4: using {workers} loader worker(s), {why}"]), lines


# ---- issue 29 item 7: a directory is not a scan; the memory map goes to the cache directory, not beside the output ------

def test_reconstruct_a_directory_says_it_takes_one_scan_file(checkpoint, tmp_path):
    folder = scan_copy(tmp_path / "scans" / "a.npz").parent
    assert_one_line_error(reconstruct(checkpoint, folder, "--quiet"), str(folder), "is a directory", "takes one scan file", ".npz")
    assert_one_line_error(reconstruct(checkpoint.parent, NPZ, "--quiet"), "is a directory", "best-checkpoint.ckpt")


def test_reconstruct_keeps_its_memory_map_in_data_memmap_of_the_working_directory(checkpoint, tmp_path):
    scan = scan_copy(tmp_path / "scans" / "a.npz")
    work = tmp_path / "work"
    work.mkdir()
    result = run("ptycho_torch.cli_reconstruct", checkpoint, scan, "--n-groups", 8, "--no-png", "--quiet", cwd=work)
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(p.name for p in scan.parent.iterdir()) == ["a.npz", "a_reconstruction.npz"]
    assert list((work / "data" / "memmap").glob("a-*/diffraction.npy"))


def test_build_trainer_refuses_a_run_directory_holding_a_previous_run_and_keeps_its_metrics(tmp_path):
    from ptycho_torch.config_params import TrainingConfig
    from ptycho_torch.model.training import build_trainer

    run_dir = tmp_path / "runs" / "python"
    run_dir.mkdir(parents=True)
    (run_dir / "metrics.csv").write_text("epoch,train_loss\n0,1.5\n")
    with pytest.raises(FileExistsError, match="already holds a previous run .metrics.csv.*new_run_dir"):
        build_trainer(TrainingConfig(device="cpu"), run_dir, progress=False)
    assert (run_dir / "metrics.csv").read_text() == "epoch,train_loss\n0,1.5\n"
    (run_dir / "metrics.csv").unlink()
    (run_dir / "checkpoints").mkdir()
    (run_dir / "checkpoints" / "last.ckpt").write_bytes(b"x")
    with pytest.raises(FileExistsError, match="checkpoints/last.ckpt"):
        build_trainer(TrainingConfig(device="cpu"), run_dir, progress=False)


def test_build_trainer_refuses_an_unknown_strategy_and_says_when_n_devices_is_not_used(tmp_path, caplog):
    from ptycho_torch.config_params import TrainingConfig
    from ptycho_torch.model.training import build_trainer

    with pytest.raises(ValueError, match="TrainingConfig.strategy='bogus' is not a Lightning strategy"):
        build_trainer(TrainingConfig(device="cpu", strategy="bogus"), tmp_path / "a", progress=False)
    with caplog.at_level("WARNING", logger="ptycho_torch.model.training"):
        trainer = build_trainer(TrainingConfig(device="cpu", n_devices=3), tmp_path / "b", progress=False)
    assert trainer.num_devices == 1
    assert "TrainingConfig.n_devices=3: training runs in one process on the CPU: start it under torchrun" in caplog.text
    caplog.clear()
    with pytest.MonkeyPatch.context() as patch, caplog.at_level("WARNING", logger="ptycho_torch.model.training"):
        patch.setenv("LOCAL_WORLD_SIZE", "1")  # already under torchrun, one process per node: nothing to advise
        patch.setenv("WORLD_SIZE", "1")
        build_trainer(TrainingConfig(device="cpu", n_devices=3), tmp_path / "c", progress=False)
    assert "n_devices" not in caplog.text


def test_build_trainer_accepts_the_strategies_lightning_accepts(tmp_path):
    """Lightning lower-cases a strategy name and takes a Strategy object: neither is an unknown strategy."""
    from lightning.pytorch.strategies import DDPStrategy

    from ptycho_torch.config_params import TrainingConfig
    from ptycho_torch.model.training import build_trainer, check_strategy

    for strategy in ("DDP", "DDP_Spawn", DDPStrategy()):
        check_strategy(strategy)
    trainer = build_trainer(TrainingConfig(device="cpu", strategy="DDP"), tmp_path / "a", progress=False)
    assert trainer.num_devices == 1


# ---- issue 29 item 2: float photon counts are flagged and the units can be set from both commands ------------------------

def test_float_counts_are_flagged_and_the_units_settable_from_both_commands(checkpoint, tmp_path):
    with np.load(NPZ, allow_pickle=False) as source:
        counts = np.rint(source["diffraction"].astype(np.float64) ** 2).astype(np.float32)
    scan = scan_copy(tmp_path / "counts.npz", diffraction=counts)
    common = ("--n-groups", 8, "--no-png", "--quiet")
    flagged = reconstruct(checkpoint, scan, "--output", tmp_path / "a.npz", "--data-dir", tmp_path / "auto", *common)
    assert flagged.returncode == 0, flagged.stderr[-3000:]
    (warning,) = [line for line in flagged.stderr.splitlines() if "look like photon counts" in line]
    assert str(scan) in warning and "float32" in warning and "--diffraction-units counts" in warning
    assert "data.diffraction_units" in warning
    as_counts = reconstruct(checkpoint, scan, "--output", tmp_path / "b.npz", "--data-dir", tmp_path / "counts",
                            "--diffraction-units", "counts", *common)
    assert as_counts.returncode == 0 and "photon counts" not in as_counts.stderr, as_counts.stderr[-3000:]
    (manifest,) = (tmp_path / "counts").glob("*/manifest.json")
    assert json.loads(manifest.read_text())["counts_to_amplitude"] is True
    config = write_config(tmp_path / "counts.json", {**FAST, "data": {**FAST["data"], "diffraction_units": "counts"}})
    trained = train(scan, "--config", config, "--output-dir", tmp_path / "runs", "--data-dir", tmp_path / "train", "--n-groups", 16,
                    "--quiet")
    assert trained.returncode == 0 and "photon counts" not in trained.stderr, trained.stderr[-3000:]
    (manifest,) = (tmp_path / "train").glob("*/manifest.json")
    assert json.loads(manifest.read_text())["counts_to_amplitude"] is True


def test_reconstruct_refuses_more_groups_than_scan_points_before_the_memory_map(tmp_path):
    """Refused after the whole scan was memory-mapped, with PtychoPINN's fix 'set enable_oversampling=True', which
    ptycho-reconstruct has no option for."""
    result = reconstruct("pretrained", NPZ, "--n-groups", 600, "--output", tmp_path / "r.npz", "--data-dir", tmp_path / "memmap", "--quiet")
    line = assert_one_line_error(result, str(NPZ), "--n-groups 600 asks for more groups than its 512 scan points", "at most 512")
    assert "enable_oversampling" not in line
    assert not (tmp_path / "memmap").exists() and not (tmp_path / "r.npz").exists()


def test_canvas_object_says_when_scan_positions_lie_off_the_object_grid(caplog):
    """A 40 x 40 objectGuess under a scan spanning 150 pixels was stitched onto it without a word about the cut-off points."""
    import argparse
    import logging

    from ptycho.scan_file import read_scan
    from ptycho_torch.cli_reconstruct import _canvas

    scan = read_scan(NPZ, load_diffraction=False)
    args = argparse.Namespace(canvas="object", scan=NPZ)
    with caplog.at_level(logging.WARNING, logger="ptycho_torch.reconstruct"):
        assert _canvas(args, scan).shape_px == scan.objectGuess.shape
    assert not caplog.records  # the embedded scan lies on its object
    from dataclasses import replace

    scan = replace(scan, objectGuess=scan.objectGuess[:40, :40])
    with caplog.at_level(logging.WARNING, logger="ptycho_torch.reconstruct"):
        assert _canvas(args, scan).shape_px == (40, 40)
    (record,) = caplog.records
    off = int(np.count_nonzero((scan.xcoords > 39) | (scan.ycoords > 39) | (scan.xcoords < 0) | (scan.ycoords < 0)))
    assert f"{off} of {len(scan.xcoords)} scan positions lie off the 40 x 40 objectGuess grid" in record.getMessage()
    assert "--canvas scan" in record.getMessage() and off > 0


@pytest.mark.parametrize("side", [0, 1, 10])
@pytest.mark.parametrize("start", [["--start", "network"], ["--start", "flat", "--refine", "2"]])
def test_canvas_object_on_an_objectguess_holding_no_scan_position_is_refused_before_any_work(tmp_path, side, start):
    """A 0 x 0 objectGuess crashed --start flat (exit 3, a traceback), a 1 x 1 one wrote an all-zero NPZ and then failed on its
    PNG ('max() arg is an empty sequence'), a 10 x 10 one wrote an object of nothing but cut-off patch edges."""
    with np.load(NPZ, allow_pickle=False) as data:
        guess = data["objectGuess"][:side, :side]
    scan = scan_copy(tmp_path / "scan.npz", objectGuess=guess)
    output = tmp_path / "out" / "r.npz"
    result = reconstruct("pretrained", scan, "--canvas", "object", *start, "--output", output, "--data-dir", tmp_path / "memmap",
                         "--threads", 1, "--quiet")
    assert_one_line_error(result, str(scan), f"all 512 scan positions lie off the {side} x {side} objectGuess grid", "--canvas scan")
    assert not (tmp_path / "memmap").exists() and not (tmp_path / "out").exists()


def test_groups_of_one_pattern_are_not_refused_for_asking_more_groups_than_points(tmp_path):
    """ptycho-train's check before the memory maps refused gridsize 1 with n_groups above the points, which PtychoPINN caps."""
    from ptycho_torch.cli import UsageError
    from ptycho_torch.cli_train import check_scans
    from ptycho_torch.config_params import DataConfig, TrainingConfig

    check_scans([NPZ], DataConfig(N=64, grid_size=(1, 1), C=1), TrainingConfig(n_groups=600))
    with pytest.raises(UsageError, match="holds 512 scan points, fewer than the 600 groups"):
        check_scans([NPZ], DataConfig(N=64, grid_size=(2, 2)), TrainingConfig(n_groups=600))


def test_a_malformed_later_scan_is_refused_naming_its_key_before_any_memory_map(tmp_path):
    """A scalar xcoords in the second scan was 'len() of unsized object', no file named; a short one was called a scan
    with fewer points."""
    scans = tmp_path / "scans"
    scans.mkdir()
    scan_copy(scans / "a.npz")
    with np.load(NPZ, allow_pickle=False) as source:
        short = source["xcoords"][:50]
    for name, xcoords in (("b.npz", np.float64(3.0)), ("c.npz", short)):
        (scans / "b.npz").unlink(missing_ok=True)
        (scans / "c.npz").unlink(missing_ok=True)
        scan_copy(scans / name, xcoords=xcoords)
        result = train(scans, "--config", write_config(tmp_path / "fast.json", FAST), "--output-dir", tmp_path / "runs",
                       "--quiet", timeout=120)
        assert_one_line_error(result, name, "'xcoords'")
        assert not (tmp_path / "runs").exists()


def test_a_refused_run_beside_this_one_cannot_take_its_output_directory(tmp_path, monkeypatch):
    """Two reconstructions into one new directory: the other's refusal removed it (empty) while this one computed, and this
    one failed to write after its work."""
    from ptycho_torch import cli_reconstruct, workflow

    output = tmp_path / "out" / "r.npz"
    original = workflow.reconstruct_scan

    def meanwhile_removed(*args, **kwargs):
        result = original(*args, **kwargs)
        output.parent.rmdir()  # what the refused run beside it does to the empty directory it also "made"
        return result

    monkeypatch.setattr(workflow, "reconstruct_scan", meanwhile_removed)
    status = cli_reconstruct.main(["pretrained", str(NPZ), "--output", str(output), "--data-dir", str(tmp_path / "memmap"),
                                   "--start", "flat", "--refine", "1", "--no-png", "--quiet"])
    assert status == 0 and output.is_file()


def test_running_out_of_memory_while_reading_a_checkpoint_is_not_called_a_damaged_file(tmp_path, monkeypatch):
    import torch

    from ptycho_torch.model.checkpoints import read_checkpoint

    def out_of_memory(*args, **kwargs):
        raise MemoryError

    monkeypatch.setattr(torch, "load", out_of_memory)
    path = tmp_path / "model.ckpt"
    path.write_bytes(b"PK")
    with pytest.raises(MemoryError):
        read_checkpoint(path)
