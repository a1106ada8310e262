"""The ``ptycho-memmap`` command line, driven as a subprocess on copies of the embedded dataset."""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from ptycho.config.config import ModelConfig, TrainingConfig
from ptycho.patches import extract_patches
from ptycho.raw_data import Grouping
from ptycho_torch.store.inventory import grouping_key_of
from ptycho_torch.store.fingerprint import SAMPLE_BYTES, Fingerprint, sample_offsets
from ptycho_torch.store.groups_cache import read_cache, read_metadata, write_cache
from ptycho_torch.memmap_bridge import MemmapDatasetBridge

ROOT = Path(__file__).resolve().parents[1]
EMBEDDED = ROOT / "datasets" / "sim_small.npz"
GROUPING = ("--seed", "42", "--n-groups", "200", "--K", "6")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
needs_matplotlib = pytest.mark.skipif(importlib.util.find_spec("matplotlib") is None, reason="matplotlib is not installed")


def run(*args, pythonpath=()):
    path = os.pathsep.join(filter(None, [*map(str, pythonpath), str(ROOT), os.environ.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-m", "ptycho_torch.cli", *map(str, args)],
        cwd=ROOT, env=dict(os.environ, PYTHONPATH=path), capture_output=True, text=True, timeout=120,
    )


def build(scan, data_dir, *extra):
    result = run("build", scan, *GROUPING, "--data-dir", data_dir, "--quiet", *extra)
    assert result.returncode == 0, result.stderr
    return result


def prebuild(scan, data_dir):
    """In-process equivalent of ``build scan *GROUPING`` (the build test shows both give the same cache)."""
    config = TrainingConfig(model=ModelConfig(N=64, gridsize=2), train_data_file=scan, n_groups=200, neighbor_count=6, subsample_seed=42)
    return MemmapDatasetBridge(Path(scan).resolve(), config, data_dir, progress=False)


def only_cache(data_dir) -> Path:
    (cache,) = Path(data_dir).glob("*/*.groups_cache.npz")
    return cache


def files_under(directory) -> set[Path]:
    return {p for p in Path(directory).rglob("*") if p.is_file()}


@pytest.fixture
def scan(tmp_path):
    path = tmp_path / "scans" / "scan.npz"
    path.parent.mkdir()
    shutil.copy(EMBEDDED, path)
    return path


@pytest.fixture
def data_dir(tmp_path):
    return tmp_path / "memmap"


@pytest.mark.parametrize("command", [[], ["build"], ["info"], ["verify"], ["plot"], ["clean"]])
def test_help_of_every_command_exits_0(command):
    result = run(*command, "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"usage: ptycho-memmap {' '.join(command)}".rstrip())
    assert "exit status" in result.stdout


def test_build_then_build_again_reuses_and_training_finds_the_cache(scan, data_dir):
    first = build(scan, data_dir)
    cache = only_cache(data_dir)
    assert first.stdout.startswith(f"built {scan}: 200 groups of 4, cache {cache}")
    written = cache.stat().st_mtime_ns
    second = build(scan, data_dir)
    assert second.stdout.startswith(f"reused {scan}: 200 groups of 4, cache {cache}")
    assert cache.stat().st_mtime_ns == written
    bridge = prebuild(scan, data_dir)
    assert not bridge.experiment.regrouped and bridge.cache_path == cache


def test_build_a_directory_builds_every_scan(scan, data_dir):
    shutil.copy(scan, scan.parent / "other.npz")
    result = build(scan.parent, data_dir)
    lines = result.stdout.splitlines()
    assert [line.split(":")[0] for line in lines] == [f"built {scan.parent / 'other.npz'}", f"built {scan}"]
    assert len(list(data_dir.glob("*/*.groups_cache.npz"))) == 2


def test_info_lists_caches_as_valid_then_stale_after_the_scan_changes(scan, data_dir):
    prebuild(scan, data_dir)
    table = run("info", data_dir)
    assert table.returncode == 0, table.stderr
    rows = [line.split() for line in table.stdout.splitlines() if "scan.npz" in line]
    assert len(rows) == 2 and all(row[0] == "valid" for row in rows)
    assert any("gridsize=2" in row and "K=6" in row and "n_groups=200" in row and "seed=42" in row for row in rows)

    with np.load(scan, allow_pickle=False) as data:
        arrays = {key: data[key] for key in data.files}
    arrays["diffraction"] = arrays["diffraction"] * np.float32(2)
    np.savez(scan, **arrays)
    listed = run("info", "--data-dir", data_dir, "--json")
    assert listed.returncode == 0, listed.stderr
    entries = json.loads(listed.stdout)
    assert {e["kind"] for e in entries} == {"memory map", "groups"}
    assert all(not e["valid"] and "changed" in e["problem"] and e["source"] == str(scan) for e in entries)
    groups = next(e for e in entries if e["kind"] == "groups")
    assert groups["parameters"]["seed"] == 42 and groups["parameters"]["groups"] == 200
    assert groups["size_bytes"] == only_cache(data_dir).stat().st_size


def test_verify_passes_then_fails_when_the_cache_is_edited(scan, data_dir):
    missing = run("verify", scan, *GROUPING, "--data-dir", data_dir)
    assert missing.returncode == 1 and "no groups cache" in missing.stdout
    build(scan, data_dir)
    ok = run("verify", scan, *GROUPING, "--data-dir", data_dir)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert ok.stdout.startswith(f"OK {scan}: 200 groups")

    cache = only_cache(data_dir)
    with np.load(cache, allow_pickle=False) as data:
        arrays = {key: data[key] for key in data.files}
    arrays["nn_indices"] = arrays["nn_indices"][::-1].copy()
    np.savez(cache, **arrays)  # same metadata, so the recorded checksum no longer matches
    edited = run("verify", scan, *GROUPING, "--data-dir", data_dir)
    assert edited.returncode == 1
    assert edited.stdout.startswith(f"MISMATCH {scan}") and "checksum" in edited.stdout


def test_verify_finds_a_well_formed_cache_with_other_groups(scan, data_dir):
    prebuild(scan, data_dir)
    cache = only_cache(data_dir)
    metadata = read_metadata(cache)
    key, fingerprint = grouping_key_of(metadata), Fingerprint.from_dict(metadata["fingerprint"])
    grouping = read_cache(cache, key, fingerprint, metadata["memory_map"])
    order = np.roll(np.arange(grouping.n_groups), 1)
    shifted = Grouping(**{name: array[order] for name, array in grouping.arrays().items()}, norm=grouping.norm)
    write_cache(cache, shifted, key, fingerprint, metadata["source"], metadata["memory_map"])  # a valid checksum: only regrouping can tell
    result = run("verify", scan, *GROUPING, "--data-dir", data_dir)
    assert result.returncode == 1
    assert "nn_indices differs in 200 group(s)" in result.stdout


def test_verify_compares_every_pattern_of_the_memory_map(scan, data_dir):
    prebuild(scan, data_dir)
    (diffraction_path,) = data_dir.glob("*/diffraction.npy")
    before = diffraction_path.stat()
    stack = np.load(diffraction_path, mmap_mode="r+", allow_pickle=False)
    header = diffraction_path.stat().st_size - stack.nbytes
    sampled = [(offset, offset + SAMPLE_BYTES) for offset in sample_offsets(diffraction_path.stat().st_size)]
    pattern_bytes = stack[0].nbytes
    unsampled = next(
        i for i in range(len(stack))
        if all(header + (i + 1) * pattern_bytes <= low or header + i * pattern_bytes >= high for low, high in sampled)
    )
    stack[unsampled, 10, 10] += 1
    stack.flush()
    del stack
    os.utime(diffraction_path, ns=(before.st_atime_ns, before.st_mtime_ns))  # hide the edit from the stat check
    result = run("verify", scan, *GROUPING, "--data-dir", data_dir)
    assert result.returncode == 1
    assert f"memory map pattern {unsampled} differs" in result.stdout


@needs_matplotlib
def test_plot_writes_a_png_of_the_groups_and_builds_the_cache(scan, data_dir, tmp_path):
    import matplotlib.image

    output = tmp_path / "groups.png"
    result = run("plot", scan, *GROUPING, "--data-dir", data_dir, "-o", output, "--max-groups", "50", "--quiet")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(output)
    assert output.read_bytes()[:8] == PNG_SIGNATURE
    pixels = matplotlib.image.imread(output)[..., :3]
    assert pixels.shape[0] > 400 and pixels.shape[1] > 400
    assert pixels.std() > 0.1
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 100
    assert only_cache(data_dir).exists()


@needs_matplotlib
@pytest.mark.parametrize("target", ["the scan", "a text file", "a directory"])
def test_plot_never_overwrites_its_scan_or_a_file_that_is_not_a_png(scan, data_dir, tmp_path, target):
    """`plot SCAN -o SCAN` replaced the scan itself by the PNG (and -o NOTES.txt any file): the input was lost."""
    notes = tmp_path / "notes.txt"
    notes.write_text("kept")
    (tmp_path / "pictures").mkdir()
    output = {"the scan": scan, "a text file": notes, "a directory": tmp_path / "pictures"}[target]
    before = scan.read_bytes()
    result = run("plot", scan, *GROUPING, "--data-dir", data_dir, "-o", output, "--quiet")
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(f"ptycho-memmap plot: error: -o {output} ")
    assert scan.read_bytes() == before and notes.read_text() == "kept" and not any((tmp_path / "pictures").iterdir())
    assert not data_dir.exists()  # refused before the build


@needs_matplotlib
def test_plot_replaces_an_empty_file_such_as_mktemp_makes(scan, data_dir, tmp_path):
    """The check that keeps other files refused an empty one too, which `mktemp --suffix .png` scripts hand to -o."""
    output = tmp_path / "tmp.X1b2.png"
    output.touch()
    result = run("plot", scan, *GROUPING, "--data-dir", data_dir, "-o", output, "--quiet")
    assert result.returncode == 0, result.stderr
    assert output.read_bytes().startswith(PNG_SIGNATURE)


def test_plot_without_matplotlib_names_the_plot_extra(scan, data_dir, tmp_path):
    blocker = tmp_path / "no_matplotlib" / "matplotlib"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('matplotlib is blocked for this test')\n")
    result = run("plot", scan, *GROUPING, "--data-dir", data_dir, "-o", tmp_path / "g.png", pythonpath=[blocker.parent])
    assert result.returncode == 2
    assert "pip install -e '.[plot]'" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not data_dir.exists()


@needs_matplotlib
def test_plot_puts_each_position_on_its_object_pixel_and_the_patch_on_its_footprint():
    from ptycho_torch.plot import groups_figure

    N, height, width = 8, 40, 50
    amplitude = 1.0 + np.arange(height * width, dtype=np.float64).reshape(height, width)
    x = np.array([10.0, 17.7, 30.2, 41.6])
    y = np.array([12.0, 20.6, 25.4, 30.8])
    figure = groups_figure(x, y, np.array([[0, 1, 2, 3]]), amplitude.astype(np.complex64), N=N)
    ax = figure.axes[0]
    (image,) = ax.images

    def object_value_at(px, py):
        display = ax.transData.transform((px, py))
        return image.get_cursor_data(SimpleNamespace(x=display[0], y=display[1]))

    for px, py in zip(x, y):
        assert object_value_at(px, py) == amplitude[int(round(py)), int(round(px))]
    (square,) = [p for p in ax.patches if p.get_label() == f"one {N}x{N} patch"]
    patch = np.abs(extract_patches(amplitude.astype(np.complex64), x[:1], y[:1], N)[0])
    left, top = square.get_x(), square.get_y()
    assert square.get_width() == square.get_height() == N
    assert object_value_at(left + 0.6, top + 0.6) == pytest.approx(patch[0, 0])
    assert object_value_at(left + N - 0.6, top + N - 0.6) == pytest.approx(patch[N - 1, N - 1])


@needs_matplotlib
def test_write_groups_plot_takes_a_bridge(scan, data_dir, tmp_path):
    from ptycho_torch.plot import write_groups_plot

    config = TrainingConfig(model=ModelConfig(N=64, gridsize=2), train_data_file=scan, n_groups=20, neighbor_count=6, subsample_seed=1)
    bridge = MemmapDatasetBridge(scan, config, data_dir, progress=False)
    written = write_groups_plot(bridge, tmp_path / "bridge.png", max_groups=10)
    assert written == tmp_path / "bridge.png" and written.read_bytes()[:8] == PNG_SIGNATURE
    with pytest.raises(TypeError, match="MemmapDatasetBridge"):
        write_groups_plot(object(), tmp_path / "other.png")


def test_clean_lists_first_and_removes_only_what_it_wrote(scan, data_dir):
    shutil.copy(scan, scan.parent / "other.npz")
    prebuild(scan, data_dir)
    prebuild(scan.parent / "other.npz", data_dir)
    user_files = [data_dir / "notes.txt", data_dir / "my_results" / "diffraction.npy"]
    user_files[1].parent.mkdir()
    for path in user_files:
        path.write_text("user data")
    scan_dir = next(p.parent for p in data_dir.glob("scan-*/manifest.json"))
    kept_inside = scan_dir / "mine.txt"
    kept_inside.write_text("user data")
    before = files_under(data_dir)

    listed = run("clean", data_dir)
    assert listed.returncode == 0, listed.stderr
    assert files_under(data_dir) == before
    assert "would remove" in listed.stdout and "--yes" in listed.stdout

    removed = run("clean", data_dir, "--yes")
    assert removed.returncode == 0, removed.stderr
    assert files_under(data_dir) == {*user_files, kept_inside}
    assert [p.name for p in data_dir.iterdir() if p.name.startswith("other-")] == []
    assert all(path.read_text() == "user data" for path in [*user_files, kept_inside])


def test_library_errors_exit_2_with_their_message_and_a_traceback_only_with_debug(tmp_path, data_dir):
    broken = tmp_path / "broken.npz"
    with np.load(EMBEDDED, allow_pickle=False) as data:
        np.savez(broken, **{key: data[key] for key in data.files if key != "xcoords"})
    result = run("build", broken, "--data-dir", data_dir)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert "xcoords" in result.stderr and "Traceback" not in result.stderr
    debug = run("build", broken, "--data-dir", data_dir, "--debug")
    assert debug.returncode == 2 and "Traceback" in debug.stderr and "xcoords" in debug.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize(
    "args, expected",
    [
        (["build", "missing.npz"], "scan file missing.npz does not exist"),
        (["build", EMBEDDED, "--gridsize", "0"], "argument --gridsize: must be a positive integer"),
        (["build", EMBEDDED, "--n-groups", "600", "--quiet"], "--n-groups 600 asks for more groups than its 512 scan points; give "
                                                             "--n-groups 512 or fewer, or pass --oversampling"),
        (["verify", EMBEDDED, "--seed", "1", "--n-groups", "600"], f"{EMBEDDED}: --n-groups 600 asks for more groups"),
        (["build", EMBEDDED, "--oversampling", "--pool-size", "3", "--n-groups", "600"], "give --pool-size of at least 4"),
        (["build", EMBEDDED, "--oversampling", "--K", "3", "--n-groups", "600"], "give --K (or --pool-size) of at least 4"),
        (["build", EMBEDDED, "--K", "3", "--quiet"], f"{EMBEDDED}: --K 3 neighbours cannot fill groups of 4 (--gridsize 2); give --K 4"),
        (["verify", EMBEDDED], "build and verify with the same --seed"),
        (["info", "no/such/dir"], "data directory no/such/dir does not exist"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
        ([], "choose a command"),
    ],
)
def test_usage_errors_exit_2_with_one_line_naming_the_problem(args, expected, data_dir):
    if args and args[0] in ("build", "verify"):
        args = [*args, "--data-dir", data_dir]
    result = run(*args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ptycho-memmap") and expected in lines[0], result.stderr


# --- defaults and --config: the cache a training run reuses -----------------------------------------

def torch_dataset(scan, data_dir, data, model, training):
    pytest.importorskip("torch")
    pytest.importorskip("tensordict")
    from ptycho_torch.dset_loader_pt_mmap import PtychoDataset

    return PtychoDataset(scan, data, model, training, data_dir=data_dir, progress=False)


def test_build_defaults_are_the_dataconfig_defaults(scan, tmp_path):
    from ptycho_torch.config_params import DataConfig, ModelConfig, TrainingConfig

    data_dir = tmp_path / "data"
    result = run("build", scan, "--data-dir", data_dir, "--quiet")
    assert result.returncode == 0, result.stderr
    dataset = torch_dataset(scan, data_dir, DataConfig(), ModelConfig(), TrainingConfig())
    assert not dataset.regrouped and dataset.cache_paths == [only_cache(data_dir)]
    assert grouping_key_of(read_metadata(only_cache(data_dir))).settings.K == DataConfig().K == 6


CONFIG = {
    "data_config": {"N": 64, "C": 4, "grid_size": [2, 2], "K": 7, "subsample_seed": 3, "normalize": "Group"},
    "model_config": {"mode": "Unsupervised", "n_filters_scale": 1},
    "training_config": {"n_groups": 150, "batch_size": 8},
    "inference_config": {"batch_size": 100},
}


def _write_config(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_build_with_a_config_file_makes_the_cache_that_training_reuses(scan, tmp_path, suffix):
    from ptycho_torch.config_file import load_torch_configs

    if suffix == ".yaml":
        yaml = pytest.importorskip("yaml")
        config_file = _write_config(tmp_path / "run.yaml", yaml.safe_dump(CONFIG))
    else:
        config_file = _write_config(tmp_path / "run.json", json.dumps(CONFIG))
    data_dir = tmp_path / "data"
    result = run("build", scan, "--config", config_file, "--data-dir", data_dir, "--quiet")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"built {scan}: 150 groups of 4")
    configs = load_torch_configs(config_file)
    assert configs.data.grid_size == (2, 2) and configs.training.n_groups == 150
    dataset = torch_dataset(scan, data_dir, configs.data, configs.model, configs.training)
    assert dataset.regrouped is False and len(dataset) == 150
    settings = grouping_key_of(read_metadata(only_cache(data_dir))).settings
    assert (settings.K, settings.seed, settings.nsamples, settings.gridsize) == (7, 3, 150, 2)


def test_yaml_config_without_pyyaml_is_a_clear_error(scan, tmp_path):
    fake = tmp_path / "no_yaml"
    fake.mkdir()
    (fake / "yaml.py").write_text("raise ImportError('No module named yaml')\n")
    config_file = _write_config(tmp_path / "run.yaml", "data_config:\n  K: 7\n")
    result = run("build", scan, "--config", config_file, "--data-dir", tmp_path / "data", pythonpath=[fake])
    assert result.returncode == 2
    assert "run.yaml is YAML, which needs PyYAML (pip install pyyaml)" in result.stderr and "as JSON" in result.stderr
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize(
    ("extra", "content", "message"),
    [
        (("--K", "7"), CONFIG, "--K cannot be combined with --config"),
        ((), {"data_config": {"K": 7, "neighbours": 3}}, "data_config has no field(s) ['neighbours']"),
        ((), {"data_config": {"C": 9}}, "DataConfig.C=9 does not match grid_size=(2, 2)"),
        ((), {"trainer": {}}, "unknown section(s) ['trainer']"),
    ],
)
def test_bad_config_file_use_is_a_usage_error_naming_the_problem(scan, tmp_path, extra, content, message):
    config_file = _write_config(tmp_path / "run.json", json.dumps(content))
    result = run("build", scan, "--config", config_file, *extra, "--data-dir", tmp_path / "data")
    assert result.returncode == 2 and message in result.stderr, result.stderr


def test_non_finite_diffraction_names_how_many_patterns_and_which_and_how_to_drop_them(scan, data_dir):
    with np.load(scan, allow_pickle=False) as data:
        arrays = {key: data[key] for key in data.files}
    arrays["diffraction"][[5, 17, 400], 3, 4] = [np.nan, np.inf, -1.0]
    np.savez(scan, **arrays)
    result = run("build", scan, *GROUPING, "--data-dir", data_dir, "--quiet")
    assert result.returncode == 2, result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert "'diffraction'[5] has a not finite value nan at pixel (3, 4)" in line
    assert "3 pattern(s) hold such values: [5, 17, 400]" in line and "drop those patterns" in line and "xcoords[keep]" in line


@pytest.mark.parametrize("spelling", ["", "_config"])
def test_one_config_file_format_reads_either_section_spelling(tmp_path, spelling):
    from ptycho_torch.config_file import load_torch_configs

    content = {f"data{spelling}": {"K": 7, "grid_size": [2, 2]}, f"training{spelling}": {"n_groups": 150, "epochs": 3}}
    configs = load_torch_configs(_write_config(tmp_path / "run.json", json.dumps(content)))
    assert (configs.data.K, configs.data.grid_size, configs.training.n_groups, configs.training.epochs) == (7, (2, 2), 150, 3)


def test_ptycho_train_sections_build_the_memmap_cache_too(scan, tmp_path):
    config_file = _write_config(tmp_path / "train.json", json.dumps({"data": {"K": 7, "subsample_seed": 3}, "training": {"n_groups": 150}}))
    result = run("build", scan, "--config", config_file, "--data-dir", tmp_path / "data", "--quiet")
    assert result.returncode == 0 and result.stdout.startswith(f"built {scan}: 150 groups of 4"), result.stderr


def test_the_diffraction_units_of_a_ptycho_train_config_file_build_the_memory_map_in_those_units(scan, tmp_path):
    # ptycho-train's data section may say the units (data.diffraction_units): the same file builds the map training reuses
    from ptycho_torch.store.memmap import DIFFRACTION

    with np.load(scan, allow_pickle=False) as data:
        arrays = {key: data[key] for key in data.files}
    counts = np.round(arrays["diffraction"] ** 2).astype(np.int32)
    np.savez(scan, **{**arrays, "diffraction": counts})
    content = {"data": {"K": 7, "subsample_seed": 3, "diffraction_units": "amplitude"}, "training": {"n_groups": 150}}
    config_file = _write_config(tmp_path / "train.json", json.dumps(content))
    data_dir = tmp_path / "data"
    result = run("build", scan, "--config", config_file, "--data-dir", data_dir, "--quiet")
    assert result.returncode == 0, result.stderr
    assert "taken as photon counts" not in result.stderr
    (stored,) = data_dir.glob(f"*/{DIFFRACTION}")
    assert np.array_equal(np.load(stored, mmap_mode="r")[0], counts[0])  # the integers taken as amplitudes
    result = run("verify", scan, "--config", config_file, "--data-dir", data_dir, "--quiet")
    assert result.returncode == 0 and result.stdout.startswith("OK"), result.stdout + result.stderr
    result = run("build", scan, "--config", config_file, "--units", "counts", "--data-dir", data_dir, "--quiet")  # the option wins
    assert result.returncode == 0, result.stderr
    assert np.allclose(np.load(stored, mmap_mode="r")[0], np.sqrt(counts[0]))
    config_file.write_text(json.dumps({"data": {"diffraction_units": "photons"}}))
    result = run("build", scan, "--config", config_file, "--data-dir", data_dir, "--quiet")
    assert result.returncode == 2 and "data.diffraction_units must be one of" in result.stderr, result.stderr


def test_a_config_file_without_data_n_builds_the_cache_of_a_scan_of_another_pattern_size(tmp_path):
    # ptycho-train takes data.N from the patterns when the file leaves it out; the same file builds that scan's cache here
    from ptycho.simulate import SimulationSettings, write_scan_npz

    scan = write_scan_npz(tmp_path / "small.npz", SimulationSettings(n_points=64, N=32, seed=1))
    config_file = _write_config(tmp_path / "train.json", json.dumps({"data": {"K": 7, "subsample_seed": 3}, "training": {"n_groups": 60}}))
    data_dir = tmp_path / "data"
    result = run("build", scan, "--config", config_file, "--data-dir", data_dir, "--quiet")
    assert result.returncode == 0 and result.stdout.startswith(f"built {scan}: 60 groups of 4"), result.stderr
    assert grouping_key_of(read_metadata(only_cache(data_dir))).N == 32
    config_file.write_text(json.dumps({"data": {"N": 64, "K": 7}, "training": {"n_groups": 60}}))  # given: still checked
    result = run("build", scan, "--config", config_file, "--data-dir", tmp_path / "other", "--quiet")
    assert result.returncode == 2 and "N=64 does not match the 32 x 32 diffraction patterns" in result.stderr, result.stderr
    config_file.write_text(json.dumps({"data": {"K": 7, "subsample_seed": 3}}))  # no n_groups: ptycho-train's one group per point
    result = run("build", scan, "--config", config_file, "--data-dir", tmp_path / "third", "--quiet")
    assert result.returncode == 0 and result.stdout.startswith(f"built {scan}: 64 groups of 4"), result.stdout + result.stderr


def test_a_config_file_with_grid_size_and_no_c_builds_the_groups_ptycho_train_trains_on(scan, tmp_path):
    # ptycho-train's C follows data.grid_size when the file leaves C out; here it was the default 4, refused against grid_size 1 x 1
    config_file = _write_config(tmp_path / "train.json", json.dumps({"data": {"grid_size": [1, 1], "K": 7}, "training": {"n_groups": 150}}))
    result = run("build", scan, "--config", config_file, "--data-dir", tmp_path / "data", "--quiet")
    assert result.returncode == 0 and result.stdout.startswith(f"built {scan}: 150 groups of 1"), result.stdout + result.stderr


def test_a_section_written_both_ways_is_refused_naming_both(tmp_path):
    from ptycho_torch.config_file import ConfigFileError, load_torch_configs

    path = _write_config(tmp_path / "run.json", json.dumps({"data": {"K": 7}, "data_config": {"K": 8}}))
    with pytest.raises(ConfigFileError, match=r"sections 'data' and 'data_config' are the same config; merge them into one"):
        load_torch_configs(path)


def test_errors_name_the_field_as_the_file_spells_its_section(tmp_path):
    from ptycho_torch.config_file import ConfigFileError, load_torch_configs

    with pytest.raises(ConfigFileError, match=r"training_config\.epochs must be > 0"):
        load_torch_configs(_write_config(tmp_path / "run.json", json.dumps({"training_config": {"epochs": 0}})))


def test_a_config_asking_too_many_groups_names_its_field_not_one_it_refuses(tmp_path, data_dir):
    config = tmp_path / "many.json"
    config.write_text(json.dumps({"training": {"n_groups": 600}}))
    result = run("build", EMBEDDED, "--config", config, "--data-dir", data_dir, "--quiet")
    assert result.returncode == 2
    line = result.stderr.strip().splitlines()[-1]
    assert f"{config} asks for 600 groups (training.n_groups), more than its 512 scan points; set n_groups to 512" in line, line
    assert "enable_oversampling" not in line
