"""The whole-object network: it ships with its record, corrects a refined object of a scan it never saw, is dropped where the
sweeps after it fit the data worse, rebuilds resumably, and the command refuses what it cannot do before any work."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from ptycho.corpus import HELD_OUT_OBJECT, TRAIN_PROBES, TRAIN_TRAJECTORIES, held_out_seed, recipe, simulate_recipe, training_recipes  # noqa: E402
from ptycho.quality import reconstruction_quality  # noqa: E402
from ptycho.simulate import save_scan_npz  # noqa: E402
from ptycho_torch.dset_loader_pt_mmap import PtychoDataset  # noqa: E402
from ptycho_torch.model import object_network  # noqa: E402
from ptycho_torch.model.object_network import correct_object, refine_with_object_network  # noqa: E402
from ptycho_torch.model.refine import flat_start, refine  # noqa: E402
from ptycho_torch.model.stitching import Canvas  # noqa: E402
from ptycho_torch.pretrained import MODELS_DIR, OBJECT_NETWORK, load_object_network, load_pretrained  # noqa: E402
from ptycho_torch.workflow import ReconstructionSettings, reconstruct_scan  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
NPZ = ROOT / "datasets" / "sim_small.npz"


def _dataset(path: Path, data_dir: Path):
    network = load_pretrained()
    n_points = len(np.load(path, allow_pickle=False)["xcoords"])
    return PtychoDataset(path, network.data_config, network.model_config, replace(network.training_config, n_groups=n_points),
                         data_dir=data_dir, progress=False)


def _after_sweeps(path: Path, data_dir: Path, sweeps: int):
    truth = np.load(path, allow_pickle=False)["objectGuess"]
    dataset = _dataset(path, data_dir)
    result = refine(flat_start(dataset, Canvas(truth.shape, (0, 0))), dataset, sweeps, progress=False)
    return dataset, result, truth


def _quality(result, truth):
    return reconstruction_quality(result.object, truth, result.coverage > 0.05 * result.coverage.max())


@pytest.fixture(scope="module")
def particles_scan(tmp_path_factory) -> Path:
    """A scan of the object family left out of training (particles), training probes and trajectories."""
    drawn = recipe(held_out_seed(7, 2, 0), probe_families=TRAIN_PROBES, object_families=(HELD_OUT_OBJECT,),
                   trajectories=TRAIN_TRAJECTORIES, n_points=160)
    path = tmp_path_factory.mktemp("particles") / "particles.npz"
    save_scan_npz(path, simulate_recipe(drawn))
    return path


@pytest.fixture
def one_scan_corpus(tmp_path) -> Path:
    """A training corpus of one small scan, for builds of a few steps."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    save_scan_npz(corpus / "train000.npz", simulate_recipe(training_recipes(1, 5, n_points=96)[0]))
    return corpus


def _interrupt_at_call(monkeypatch, module, name: str, n: int):
    """``module.name`` raising KeyboardInterrupt (as Ctrl-C would) at its ``n``-th call; returns the original."""
    original, calls = getattr(module, name), []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == n:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, interrupted)
    return original


def test_the_object_network_ships_with_its_training_record():
    weights = MODELS_DIR / OBJECT_NETWORK[0]
    assert weights.stat().st_size < 20e6
    record = json.loads(weights.with_suffix(".json").read_text())
    assert {"recipe", "command", "commit", "cpu_s", "sessions"} <= set(record) and record["cpu_s"] > 0
    network = load_object_network()
    assert not network.training and not network.unet.training


def test_the_object_network_corrects_the_refined_object_of_a_scan_it_never_saw(tmp_path):
    """The embedded scan (not in the training corpus) after 5 sweeps: the correction must raise phase r; bypassed, it cannot."""
    _, result, truth = _after_sweeps(NPZ, tmp_path, 5)
    corrected = correct_object(load_object_network(), result)
    before, after = _quality(result, truth), _quality(corrected, truth)
    assert after.phase_r > before.phase_r + 0.04, (before, after)  # 0.884 -> 0.968 measured (benchmarks/RESULTS.md)
    assert after.amplitude_r > before.amplitude_r - 0.01, (before, after)


def test_the_correction_is_kept_where_the_sweeps_after_it_fit_better(tmp_path):
    dataset, result, truth = _after_sweeps(NPZ, tmp_path, 5)
    gated, kept = refine_with_object_network(result, dataset, load_object_network(), 2, progress=False)
    plain = refine(result, dataset, 2, progress=False)
    assert kept
    assert _quality(gated, truth).phase_r > _quality(plain, truth).phase_r + 0.04


def test_the_gate_does_not_lose_phase_on_the_left_out_object_family(particles_scan, tmp_path):
    """On particles the network's correction is not to be trusted (benchmarks/RESULTS.md): gated, the result must be
    about as good as the same sweeps without the network, whichever branch is kept."""
    dataset, result, truth = _after_sweeps(particles_scan, tmp_path, 5)
    gated, _ = refine_with_object_network(result, dataset, load_object_network(), 2, progress=False)
    plain = refine(result, dataset, 2, progress=False)
    assert _quality(gated, truth).phase_r > _quality(plain, truth).phase_r - 0.01


def test_a_correction_the_data_do_not_support_is_dropped(tmp_path, caplog):
    """An untrained network with random heads scrambles the object: after 2 sweeps it must still fit worse, and the sweeps'
    own object is returned bit for bit (with the gate removed, the scrambled branch would be returned). Its heads are drawn
    at random because a fresh network's are zero, an exact identity whose tie with the sweeps rounding alone would decide."""
    from ptycho_torch.model.object_network import ObjectNetwork

    dataset, result, _ = _after_sweeps(NPZ, tmp_path, 5)
    with torch.random.fork_rng():
        torch.manual_seed(3)
        untrained = ObjectNetwork().eval()
        for head in (untrained.unet.amp_head, untrained.unet.phase_head):
            torch.nn.init.normal_(head.weight, std=2.0)
    with caplog.at_level("INFO", logger="ptycho_torch.model.object_network"):
        gated, kept = refine_with_object_network(result, dataset, untrained, 2, progress=False)
    assert not kept and "its correction dropped" in caplog.text
    np.testing.assert_array_equal(gated.object, refine(result, dataset, 2, progress=False).object)


def test_tiles_give_the_whole_object_pass_inside_each_tile(tmp_path, monkeypatch):
    _, result, _ = _after_sweeps(NPZ, tmp_path, 5)
    network = load_object_network()
    whole = correct_object(network, result).object
    monkeypatch.setattr(object_network, "TILE_PX", 48)
    tiled = correct_object(network, result).object
    assert result.object.shape[0] > 2 * 48  # several tiles
    scale = np.abs(whole).max()
    assert np.abs(tiled - whole).max() < 2e-3 * scale


def test_settings_refuse_an_object_network_that_could_not_run_as_trained(tmp_path):
    dataset = _dataset(NPZ, tmp_path)
    network = load_pretrained()
    for settings, words in ((ReconstructionSettings(refine_iterations=10, object_network_after=5), "needs start='flat'"),
                            (ReconstructionSettings(start="flat", refine_iterations=5, object_network_after=5), "refine_iterations above it"),
                            (ReconstructionSettings(start="flat", refine_iterations=5, object_network_after=True), "an integer >= 0"),
                            (ReconstructionSettings(start="flat", refine_iterations=5, object_network_after=-1), "an integer >= 0")):
        with pytest.raises(ValueError, match=words):
            reconstruct_scan(network, dataset, settings)


def _reconstruct(*args, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "ptycho_torch.cli_reconstruct", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_ptycho_reconstruct_runs_the_object_network_and_says_what_it_kept(tmp_path):
    result = _reconstruct("pretrained", NPZ, "--output", tmp_path / "r.npz", "--data-dir", tmp_path / "memmap", "--start", "flat",
                          "--refine", 7, "--object-network", 5, "--canvas", "object", "--no-png", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "object network: its correction kept" in result.stderr
    truth = np.load(NPZ, allow_pickle=False)["objectGuess"]
    with np.load(tmp_path / "r.npz", allow_pickle=False) as out:
        scores = reconstruction_quality(out["object"], truth, out["coverage"] > 0.05 * out["coverage"].max())
    assert scores.phase_r > 0.95, scores  # 7 sweeps alone: 0.90 (benchmarks/RESULTS.md)


@pytest.mark.parametrize("options, words", [
    (("--refine", 10, "--object-network", 5), "give --start flat"),
    (("--start", "flat", "--refine", 5, "--object-network", 5), "give --refine above 5"),
    (("--start", "flat", "--refine", 5, "--object-network", 0), "--object-network"),
])
def test_ptycho_reconstruct_refuses_the_object_network_before_any_work(tmp_path, options, words):
    result = _reconstruct("pretrained", NPZ, "--output", tmp_path / "r.npz", "--data-dir", tmp_path / "memmap", *options, cwd=tmp_path)
    assert result.returncode == 2 and words in result.stderr, result.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_scan_of_another_pattern_size_is_refused_for_the_object_network(tmp_path):
    from ptycho_torch.pretrained import UnknownModelError, object_network_for_pattern_size

    with pytest.raises(UnknownModelError, match="trained on scans of 64 x 64 patterns, not 32 x 32"):
        object_network_for_pattern_size(32)


def test_the_build_resumes_to_the_weights_of_an_uninterrupted_one(tmp_path, one_scan_corpus, monkeypatch):
    from ptycho_torch.model import physics
    from ptycho_torch.pretrained import build_object_network as build

    corpus = one_scan_corpus
    recipe_ = {**build.RECIPE, "steps": 6, "batch": 2, "checkpoint_every": 2, "more_objects": {"n_scans": 0, "seed": 2}}
    whole = build.build(recipe_, tmp_path / "whole", tmp_path / "whole.pt", corpus=corpus)

    original = _interrupt_at_call(monkeypatch, physics, "phase_invariant_error", 4)
    with pytest.raises(KeyboardInterrupt):
        build.build(recipe_, tmp_path / "cut", tmp_path / "cut.pt", corpus=corpus)
    assert not (tmp_path / "cut.pt").exists()
    monkeypatch.setattr(physics, "phase_invariant_error", original)
    resumed = build.build(recipe_, tmp_path / "cut", tmp_path / "cut.pt", corpus=corpus)
    a, b = torch.load(whole, weights_only=True), torch.load(resumed, weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    record = json.loads((tmp_path / "cut.json").read_text())
    assert [s["from_step"] for s in record["sessions"]] == [0, 2]


def test_missing_object_network_weights_are_refused_before_any_work(tmp_path, monkeypatch, capsys):
    """A removed weights file is named, with its rebuild command, before the memory map is written."""
    import ptycho_torch.pretrained as pretrained
    from ptycho_torch import cli_reconstruct

    monkeypatch.setattr(pretrained, "MODELS_DIR", tmp_path / "no-models")
    monkeypatch.setattr(pretrained, "resolve_checkpoint", lambda argument: MODELS_DIR / "pinn64.ckpt")
    status = cli_reconstruct.main(["pretrained", str(NPZ), "--output", str(tmp_path / "r.npz"), "--data-dir", str(tmp_path / "memmap"),
                                   "--start", "flat", "--refine", "7", "--object-network", "5", "--no-png", "--quiet"])
    assert status == 2
    assert "the shipped object network is missing" in capsys.readouterr().err
    assert not (tmp_path / "memmap").exists() and not (tmp_path / "r.npz").exists()


def _counting_object_network_reads(monkeypatch) -> list:
    """``load_object_network``, which reads the weights file, wrapped to record each call."""
    import ptycho_torch.pretrained as pretrained

    calls, original = [], pretrained.load_object_network

    def counted(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(pretrained, "load_object_network", counted)
    return calls


def test_ptycho_reconstruct_reads_the_object_network_once(tmp_path, monkeypatch):
    from ptycho_torch import cli_reconstruct

    reads = _counting_object_network_reads(monkeypatch)
    status = cli_reconstruct.main(["pretrained", str(NPZ), "--output", str(tmp_path / "r.npz"), "--data-dir", str(tmp_path / "memmap"),
                                   "--start", "flat", "--refine", "2", "--object-network", "1", "--no-png", "--quiet"])
    assert status == 0 and (tmp_path / "r.npz").is_file()
    assert len(reads) == 1


def test_the_ptychodus_api_reads_the_object_network_once(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from ptycho_torch.api.base_api import RECONSTRUCT_ENV, InferenceEngine, load_model

    reads = _counting_object_network_reads(monkeypatch)
    monkeypatch.setenv(RECONSTRUCT_ENV, "--start flat --refine 2 --object-network 1")
    model, manager = load_model(MODELS_DIR / "pinn64.ckpt")
    engine = InferenceEngine(config_manager=manager, ptycho_model=model)
    obj = engine.predict_and_stitch(SimpleNamespace(dataset=_dataset(NPZ, tmp_path)), progress=False)
    assert np.isfinite(obj).all()
    assert len(reads) == 1


def test_an_object_network_given_without_its_sweep_is_refused(tmp_path):
    with pytest.raises(ValueError, match="object_network_after is 0, so it would not run"):
        reconstruct_scan(load_pretrained(), _dataset(NPZ, tmp_path), ReconstructionSettings(start="flat", refine_iterations=2),
                         object_network=load_object_network())


class _Executed:
    def __reduce__(self):
        return (print, ("unpickled and run",))


@pytest.mark.parametrize("content, words", [
    ("random", "is not a readable torch weights file"),
    ("empty", "is not a readable torch weights file"),
    ("pickle", "holds Python objects a weights-only load refuses"),
    ("other", "holds weights of another network"),
])
def test_unusable_object_network_weights_are_refused_before_any_work(tmp_path, monkeypatch, capsys, content, words):
    """A corrupt, emptied, pickled or other network's weights file is named with its fix, before the memory map is written."""
    import ptycho_torch.pretrained as pretrained
    from ptycho_torch import cli_reconstruct

    models = tmp_path / "models"
    models.mkdir()
    weights = models / OBJECT_NETWORK[0]
    if content == "random":
        weights.write_bytes(np.random.default_rng(0).bytes(1000))
    elif content == "empty":
        weights.write_bytes(b"")
    elif content == "pickle":
        torch.save({"x": _Executed()}, weights)
    else:
        torch.save({"conv.weight": torch.zeros(1, 1)}, weights)
    monkeypatch.setattr(pretrained, "MODELS_DIR", models)
    monkeypatch.setattr(pretrained, "resolve_checkpoint", lambda argument: MODELS_DIR / "pinn64.ckpt")
    status = cli_reconstruct.main(["pretrained", str(NPZ), "--output", str(tmp_path / "r.npz"), "--data-dir", str(tmp_path / "memmap"),
                                   "--start", "flat", "--refine", "7", "--object-network", "5", "--no-png", "--quiet"])
    captured = capsys.readouterr()
    assert status == 2, captured.err
    assert words in captured.err and str(weights) in captured.err and "make object-network" in captured.err
    assert "unpickled and run" not in captured.out
    assert not (tmp_path / "memmap").exists() and not (tmp_path / "r.npz").exists()


def test_a_plateau_switch_before_the_network_holds_in_the_sweeps_after_it(tmp_path, monkeypatch, caplog):
    """--refine-plateau: once the sweeps turned into parallel updates, the remaining sweeps stay so, network or not
    (they used to restart as momentum sweeps after the network)."""
    import ptycho_torch.model.refine as refine_module
    from ptycho_torch.model.refine import RefinementUpdate

    dataset = _dataset(NPZ, tmp_path)
    start = flat_start(dataset)
    update = RefinementUpdate(plateau=0.5)  # reached within the first 5 sweeps of the embedded scan
    after_five = refine(start, dataset, 5, update=update, progress=False)
    misfits = iter([float("inf"), 0.0])  # the network's branch first: dropped, so the branch without it is returned
    monkeypatch.setattr(refine_module, "data_misfit", lambda result, dataset: next(misfits))
    settings = ReconstructionSettings(start="flat", refine_iterations=7, object_network_after=5, refine_update=update, progress=False)
    with caplog.at_level("INFO", logger="ptycho_torch.model.refine"):
        gated = reconstruct_scan(load_pretrained(), dataset, settings)
    assert caplog.text.count("lowered the data misfit") == 1 and "since iteration" in caplog.text
    settled = RefinementUpdate(patterns=None, momentum=0.0, plateau=0.0, regularisation=update.regularisation)
    np.testing.assert_array_equal(gated.object, refine(after_five, dataset, 2, update=settled, progress=False).object)


def test_a_refinement_in_parts_is_refine_in_one(tmp_path):
    from ptycho_torch.model.refine import Refinement, RefinementUpdate

    dataset = _dataset(NPZ, tmp_path)
    start, update = flat_start(dataset), RefinementUpdate(plateau=0.5)
    parts = Refinement(start, dataset, 7, update=update)
    parts.run(3, progress=False)
    parts.run(4, progress=False)
    np.testing.assert_array_equal(parts.result().object, refine(start, dataset, 7, update=update, progress=False).object)


def test_numpy_integer_settings_run_the_object_network(tmp_path):
    """numpy integers pass the settings' checks, so they must not fail after the first sweeps (they did, in the gate)."""
    dataset = _dataset(NPZ, tmp_path)
    network = load_pretrained()
    plain = reconstruct_scan(network, dataset, ReconstructionSettings(start="flat", refine_iterations=7, object_network_after=5,
                                                                      progress=False))
    numpy = reconstruct_scan(network, dataset, ReconstructionSettings(start="flat", refine_iterations=np.int64(7),
                                                                      object_network_after=np.int32(5), progress=False))
    np.testing.assert_array_equal(plain.object, numpy.object)


@pytest.mark.parametrize("state, n_scans, words", [
    (b"junk\n", None, "is not a readable training state"),
    ("another recipe", None, "was written by another recipe"),
    ("all scans", 1, "was written with --n-scans None, not 1"),
])
def test_the_build_refuses_a_state_it_cannot_resume_before_any_work(tmp_path, one_scan_corpus, state, n_scans, words):
    """A damaged state, or one of another recipe or another --n-scans, is named with its fix before the corpus is refined."""
    from ptycho_torch.pretrained import build_object_network as build

    work, corpus = tmp_path / "work", one_scan_corpus
    work.mkdir()
    recipe_ = {**build.RECIPE, "steps": 6}
    if isinstance(state, bytes):
        (work / "training-state.pt").write_bytes(state)
    else:
        written = {**build.RECIPE, "steps": 7} if state == "another recipe" else recipe_
        torch.save({"network": {}, "optimizer": {}, "schedule": {}, "crops": torch.zeros(1), "step": 2,
                    "recipe": json.dumps(written, sort_keys=True), "n_scans": None}, work / "training-state.pt")
    with pytest.raises(ValueError, match=words) as refused:
        build.build(recipe_, work, tmp_path / "out.pt", corpus=corpus, n_scans=n_scans)
    assert "training-state.pt" in str(refused.value) and "--work" in str(refused.value)
    assert sorted(p.name for p in work.iterdir()) == ["training-state.pt"] and not (tmp_path / "out.pt").exists()


@pytest.mark.parametrize("option", [("--steps", "0"), ("--steps", "-5"), ("--n-scans", "0"), ("--threads", "0")])
def test_the_build_refuses_counts_it_would_ignore_or_choke_on(tmp_path, option, capsys):
    """--steps 0 used to run the recipe's 3000 steps; --n-scans 0 an empty corpus."""
    from ptycho_torch.pretrained import build_object_network as build

    with pytest.raises(SystemExit) as exited:
        build.main(["--work", str(tmp_path / "work"), "--output", str(tmp_path / "out.pt"), *option])
    assert exited.value.code == 2 and option[0] in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_weights_of_a_network_that_reads_the_coverage_load_as_one_and_are_given_it(tmp_path, monkeypatch):
    """The build's ``--illumination`` ablation: its weights (3 input channels) load as a network that reads the scan's
    coverage, and its correction changes with that coverage; the shipped (2-channel) weights load without it."""
    import ptycho_torch.pretrained as pretrained
    from ptycho_torch.model.object_network import ObjectNetwork

    assert not load_object_network().illumination
    _, result, _ = _after_sweeps(NPZ, tmp_path, 1)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        reading = ObjectNetwork(illumination=True)
    for p in reading.unet.parameters():  # heads start at zero (identity): give them weights so the input matters
        torch.nn.init.normal_(p, std=0.1) if p.ndim > 1 else None
    models = tmp_path / "models"
    models.mkdir()
    torch.save(reading.unet.state_dict(), models / OBJECT_NETWORK[0])
    monkeypatch.setattr(pretrained, "MODELS_DIR", models)
    loaded = load_object_network()
    assert loaded.illumination
    corrected = correct_object(loaded, result).object
    dimmer = correct_object(loaded, replace(result, coverage=result.coverage ** 2)).object
    assert np.abs(corrected - dimmer).max() > 1e-3 * np.abs(corrected).max()
    with pytest.raises(ValueError, match="pass illumination"):
        loaded(torch.ones(1, 8, 8, dtype=torch.complex64))
    with pytest.raises(ValueError, match="without the coverage input"):
        ObjectNetwork()(torch.ones(1, 8, 8, dtype=torch.complex64), torch.ones(1, 8, 8))


def test_ctrl_c_during_the_build_exits_130_with_a_message_and_counts_the_session(tmp_path, one_scan_corpus, monkeypatch, capsys):
    from ptycho_torch.model import physics
    from ptycho_torch.pretrained import build_object_network as build

    corpus = one_scan_corpus
    _interrupt_at_call(monkeypatch, physics, "phase_invariant_error", 2)
    work = tmp_path / "work"
    status = build.main(["--corpus", str(corpus), "--work", str(work), "--output", str(tmp_path / "o.pt"), "--steps", "6",
                         "--more-objects", "0"])
    assert status == 130
    assert capsys.readouterr().err.strip() == (f"python -m ptycho_torch.pretrained.build_object_network: the build in {work} was "
                                               "interrupted; run the same command again to resume from its last saved step (every 250)")
    (session,) = json.loads((work / "sessions.json").read_text())
    assert session["cpu_s"] > 0 and not (tmp_path / "o.pt").exists()


def test_weights_written_elsewhere_by_the_build_load_from_their_path(tmp_path):
    from ptycho_torch.pretrained import UnknownModelError

    torch.save(load_object_network().unet.state_dict(), tmp_path / "mine.pt")
    mine = load_object_network(path=tmp_path / "mine.pt")
    shipped = load_object_network()
    assert all(torch.equal(a, b) for a, b in zip(mine.state_dict().values(), shipped.state_dict().values()))
    with pytest.raises(UnknownModelError, match=f"no object network weights at {tmp_path / 'none.pt'}; rebuild it with"):
        load_object_network(path=tmp_path / "none.pt")
    with pytest.raises(UnknownModelError, match=f"{tmp_path} is a directory: give the weights file the build wrote"):
        load_object_network(path=tmp_path)
    (tmp_path / "bad.pt").write_bytes(b"not torch")
    with pytest.raises(UnknownModelError, match=f"the object network {tmp_path / 'bad.pt'} is not a readable torch weights file"):
        load_object_network(path=tmp_path / "bad.pt")


def test_the_build_records_the_commit_it_started_from(tmp_path, one_scan_corpus, monkeypatch):
    """A training runs for minutes to hours; the tree may be committed to meanwhile: the record names the code it ran."""
    from ptycho_torch.pretrained import build as shipped_build
    from ptycho_torch.pretrained import build_object_network as build

    corpus = one_scan_corpus
    commits = iter(["started-here", "committed-later"])
    monkeypatch.setattr(shipped_build, "_commit", lambda: next(commits))
    recipe_ = {**build.RECIPE, "steps": 2, "batch": 2, "more_objects": {"n_scans": 0, "seed": 2}}
    build.build(recipe_, tmp_path / "work", tmp_path / "o.pt", corpus=corpus)
    record = json.loads((tmp_path / "o.json").read_text())
    assert record["commit"] == "started-here" and [s["commit"] for s in record["sessions"]] == ["started-here"]


def test_ctrl_c_while_the_corpus_is_refined_counts_the_session_too(tmp_path, one_scan_corpus, monkeypatch, capsys):
    """Refining the corpus (every scan, every sweep count) is CPU time the build spends before its first step and keeps on disk
    for the next session: stopped there, the session is recorded as one stopped during the training is."""
    from ptycho_torch.model import refine as refine_module
    from ptycho_torch.pretrained import build_object_network as build

    corpus = one_scan_corpus
    original = refine_module.refine

    def interrupted(*args, **kwargs):
        original(*args, **kwargs)  # the sweeps are computed, then Ctrl-C
        raise KeyboardInterrupt

    monkeypatch.setattr(refine_module, "refine", interrupted)
    work = tmp_path / "work"
    status = build.main(["--corpus", str(corpus), "--work", str(work), "--output", str(tmp_path / "o.pt"), "--steps", "6",
                         "--more-objects", "0"])
    assert status == 130 and "was interrupted" in capsys.readouterr().err
    (session,) = json.loads((work / "sessions.json").read_text())
    assert session["cpu_s"] > 0 and session["from_step"] == 0 and not (tmp_path / "o.pt").exists()


@pytest.mark.parametrize("options", [["--illumination"], ["--steps", "100"], ["--more-objects", "0"], ["--n-scans", "2"], ["--seed", "1"]])
def test_a_build_of_another_network_does_not_replace_the_shipped_weights_unless_given_output(tmp_path, options, capsys):
    """An ablation (or a short test build) written over object64.pt would silently become what --object-network runs."""
    from ptycho_torch.pretrained import build_object_network as build

    shipped = (MODELS_DIR / OBJECT_NETWORK[0]).read_bytes()
    with pytest.raises(SystemExit) as exited:
        build.main(["--work", str(tmp_path / "work"), *options])
    err = capsys.readouterr().err
    assert exited.value.code == 2 and options[0] in err and "give --output FILE" in err
    assert (MODELS_DIR / OBJECT_NETWORK[0]).read_bytes() == shipped and not (tmp_path / "work").exists()
