"""``python -m ptycho_torch.pretrained.build`` stopped by Ctrl-C (or a job's time limit) exits 130 with a message, counts the
stopped session's CPU time, and the same command resumes it to a finished model and record."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("lightning.pytorch")

from tests.interrupt import interrupt_once  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def test_ctrl_c_exits_130_with_a_message_and_the_same_command_resumes(tmp_path):
    work, output = tmp_path / "work", tmp_path / "model.ckpt"
    command = [sys.executable, "-m", "ptycho_torch.pretrained.build", "--work", str(work), "--output", str(output), "--n-scans", "1",
               "--epochs", "3", "--threads", "1"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    returncode, stdout, stderr = interrupt_once(command, work, "run-00/checkpoints/last.ckpt", cwd=tmp_path, env=env)
    assert returncode == 130, stderr[-3000:]
    assert stderr.strip().splitlines()[-1] == (f"python -m ptycho_torch.pretrained.build: the build in {work} was interrupted; run the "
                                               "same command again to resume from its last checkpoint"), stderr[-3000:]
    assert "Traceback" not in stderr and not output.exists()
    (stopped,) = json.loads((work / "sessions.json").read_text())
    assert stopped["cpu_s"] > 0 and stopped["resumed_from_epoch"] is None

    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    record = json.loads(output.with_suffix(".json").read_text())
    assert [s["resumed_from_epoch"] for s in record["sessions"]][0] is None and len(record["sessions"]) == 2
    assert record["sessions"][1]["resumed_from_epoch"] >= 0
    assert record["train_cpu_s"] == pytest.approx(sum(s["cpu_s"] for s in record["sessions"]))
    assert set(torch.load(output, weights_only=True)) == {"state_dict", "hyper_parameters"}


def test_ctrl_c_before_the_training_exits_130_with_a_message_too(tmp_path, monkeypatch, capsys):
    """Writing the corpus (48 scans: minutes) is the first thing the build does; Ctrl-C there says what happened, not nothing."""
    import ptycho.corpus
    from ptycho_torch.pretrained import build

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(ptycho.corpus, "write_training_corpus", interrupted)
    work = tmp_path / "work"
    assert build.main(["--work", str(work), "--output", str(tmp_path / "model.ckpt"), "--n-scans", "1", "--epochs", "1"]) == 130
    assert capsys.readouterr().err.strip() == (f"python -m ptycho_torch.pretrained.build: the build in {work} was interrupted; "
                                               "run the same command again to resume")


def test_the_commit_is_marked_changed_by_package_code_not_by_rebuilt_weights(tmp_path):
    """``make object-network`` rewrites object64.pt and its record in the package: the next build's code is still the commit's.
    A new module not yet added to git is a change of the code."""
    from ptycho_torch.pretrained.build import _commit

    def git(*args):
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path, check=True, capture_output=True)

    (tmp_path / "ptycho_torch" / "pretrained").mkdir(parents=True)
    (tmp_path / "ptycho").mkdir()
    (tmp_path / "ptycho_torch" / "model.py").write_text("x = 1\n")
    (tmp_path / "ptycho_torch" / "pretrained" / "object64.pt").write_bytes(b"weights")
    (tmp_path / "ptycho_torch" / "pretrained" / "object64.json").write_text("{}")
    git("init", "-q")
    git("add", ".")
    git("commit", "-qm", "start")
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tmp_path, capture_output=True, text=True, check=True).stdout.strip()
    assert _commit(tmp_path) == head
    (tmp_path / "ptycho_torch" / "pretrained" / "object64.pt").write_bytes(b"rebuilt weights")
    (tmp_path / "ptycho_torch" / "pretrained" / "object64.json").write_text('{"cpu_s": 1}')
    assert _commit(tmp_path) == head
    (tmp_path / "ptycho" / "new_module.py").write_text("y = 2\n")
    assert _commit(tmp_path) == head + "+changes"
    (tmp_path / "ptycho" / "new_module.py").unlink()
    (tmp_path / "ptycho_torch" / "model.py").write_text("x = 2\n")
    assert _commit(tmp_path) == head + "+changes"


@pytest.mark.parametrize("options, words", [(["--epochs", "3"], "--epochs builds another model than the shipped one: give --output FILE"),
                                            (["--probes", "pinhole"], "--probes builds another model"),
                                            (["--output", "X", "--probes", "nonsense", "pinhole"], "--probes nonsense: unknown probe family")])
def test_the_build_refuses_before_any_work_what_would_replace_the_shipped_model_or_fail_later(tmp_path, options, words, capsys):
    from ptycho_torch.pretrained import MODELS_DIR, SHIPPED
    from ptycho_torch.pretrained import build

    shipped = MODELS_DIR / SHIPPED["pretrained"][0]
    before = shipped.stat().st_mtime_ns if shipped.exists() else None
    options = [str(tmp_path / "x.ckpt") if option == "X" else option for option in options]
    with pytest.raises(SystemExit) as exited:
        build.main(["--work", str(tmp_path / "work"), *options])
    assert exited.value.code == 2 and words in capsys.readouterr().err
    assert not (tmp_path / "work").exists() and (shipped.stat().st_mtime_ns if shipped.exists() else None) == before


@pytest.mark.parametrize("module", ["build", "build_object_network"])
@pytest.mark.parametrize("kind", ["directory", "scan", "under a file"])
def test_an_output_the_build_could_not_write_or_would_replace_wrongly_is_refused_before_any_work(tmp_path, monkeypatch, capsys, module, kind):
    """--output was first used after the training (hours): a directory failed there, a scan named as --output was replaced by
    the weights and its .json neighbour by the record."""
    import importlib

    builder = importlib.import_module(f"ptycho_torch.pretrained.{module}")
    monkeypatch.setattr(builder, "build", lambda *args, **kwargs: pytest.fail("the build started"))
    if kind == "directory":
        output, words = tmp_path / "models", ["is a directory", "give the weights file"]
        output.mkdir()
    elif kind == "scan":
        output, words = tmp_path / "scan.npz", ["a weights file ends in .ckpt, .pt, .pth", "scan.json"]
        output.write_bytes(b"a measured scan")
    else:
        (tmp_path / "file").write_text("x")
        output, words = tmp_path / "file" / "model.pt", ["is a file", "choose another --output"]
    with pytest.raises(SystemExit) as exited:
        builder.main(["--work", str(tmp_path / "work"), "--output", str(output)])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert all(word in err for word in words), err
    assert not (tmp_path / "work").exists()
    if kind == "scan":
        assert output.read_bytes() == b"a measured scan"
