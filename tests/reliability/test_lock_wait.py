"""Waiting for the build lock: a hung holder is named in a WARNING, lock_timeout ends the wait, clean cannot pull the directory from under a waiter."""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from ptycho_torch.store import inventory, locks
from ptycho_torch.cli import main as cli
from ptycho_torch.store.locks import LockTimeoutError, directory_lock
from ptycho_torch.memmap_bridge import MemmapDatasetBridge
from tests.reliability.support import copy_embedded, python_env, scan_directory
from tests.torch.test_data_pipeline import ROOT, assert_same_grouped_data, baseline_grouped, memmap_config

HOLD_AND_STOP = r"""
import os, signal, sys
from pathlib import Path
from ptycho_torch.store.locks import directory_lock
directory, holding = sys.argv[1:3]
Path(directory).mkdir(parents=True, exist_ok=True)
with directory_lock(Path(directory)):
    Path(holding).touch()
    os.kill(os.getpid(), signal.SIGSTOP)  # a stopped (or hung) builder: it keeps the lock
"""


@pytest.fixture
def stopped_holder(tmp_path):
    """A process that holds the lock of the scan's dataset directory and is stopped; killed at teardown."""
    npz = copy_embedded(tmp_path / "scan.npz")
    data_dir, holding = tmp_path / "data", tmp_path / "holding"
    directory = scan_directory(data_dir, npz)
    holder = subprocess.Popen([sys.executable, "-c", HOLD_AND_STOP, str(directory), str(holding)], cwd=ROOT, env=python_env(),
                              stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not holding.exists():
        assert holder.poll() is None and time.monotonic() < deadline, holder.stderr.read() if holder.poll() is not None else "timeout"
        time.sleep(0.01)
    yield npz, data_dir, directory, holder.pid
    holder.kill()
    holder.wait(timeout=30)


def test_stopped_lock_holder_is_named_in_a_warning_and_lock_timeout_ends_the_wait(stopped_holder):
    npz, data_dir, directory, pid = stopped_holder
    lock = str(directory / ".lock")
    started = time.time()
    with pytest.raises(LockTimeoutError) as error, pytest.warns(locks.LockWaitWarning) as warned:
        MemmapDatasetBridge(npz, memmap_config(npz), data_dir, progress=False, lock_timeout=7)
    waited = time.time() - started
    messages = [str(w.message) for w in warned if lock in str(w.message) and f"process {pid}" in str(w.message)]
    assert len(messages) == 1, [str(w.message) for w in warned]  # once per wait (timing: test_lock_wait_is_visible_...)
    assert 7 <= waited < 30
    assert lock in str(error.value) and f"process {pid}" in str(error.value) and "lock_timeout" in str(error.value)
    assert not any(directory.glob("*.groups_cache.npz"))


def test_cli_lock_timeout_exits_2_naming_the_lock_and_its_holder(stopped_holder, capsys):
    npz, data_dir, directory, pid = stopped_holder
    started = time.monotonic()
    status = cli(["build", str(npz), "--data-dir", str(data_dir), "--quiet", "--lock-timeout", "1.5"])
    assert status == 2 and 1.5 <= time.monotonic() - started < 20
    err = capsys.readouterr().err
    assert str(directory / ".lock") in err and f"process {pid}" in err and "--lock-timeout" in err


def test_warning_repeats_while_waiting(stopped_holder, caplog, monkeypatch):
    npz, data_dir, directory, pid = stopped_holder
    monkeypatch.setattr(locks, "WARN_AFTER_SECONDS", 0.2)
    monkeypatch.setattr(locks, "WARN_EVERY_SECONDS", 0.5)
    caplog.set_level(logging.WARNING, logger=locks.__name__)
    with pytest.raises(LockTimeoutError), pytest.warns(locks.LockWaitWarning) as first:
        with directory_lock(directory, timeout_seconds=1.9):
            pass
    notices = [str(w.message) for w in first] + [r.getMessage() for r in caplog.records]
    assert len([text for text in notices if f"process {pid}" in text]) >= 3, notices  # the first warned, the others logged


def test_clean_while_a_builder_waits_for_the_lock_does_not_break_the_builder(tmp_path, monkeypatch):
    """clean holds the lock and removes the directory; the builder that waited builds it again (was: FileNotFoundError)."""
    npz = copy_embedded(tmp_path / "scan.npz")
    data_dir = tmp_path / "data"
    directory = MemmapDatasetBridge(npz, memmap_config(npz), data_dir, progress=False).cache_path.parent
    waiting = threading.Event()
    outcome = {}

    class WaitSignal(logging.Handler):
        def emit(self, record):
            if "waiting for another process" in record.getMessage():
                waiting.set()

    def builder():
        try:
            outcome["data"] = MemmapDatasetBridge(npz, memmap_config(npz), data_dir, progress=False, remake_map=True).grouped_data()
        except BaseException as exc:  # reported by the assertions below
            outcome["error"] = exc

    real_remove = inventory.remove_owned
    thread = threading.Thread(target=builder)

    def remove_once_the_builder_waits(*args, **kwargs):  # clean holds the lock here
        thread.start()
        assert waiting.wait(timeout=60), "the builder never waited for the lock"
        return real_remove(*args, **kwargs)

    handler, lock_logger = WaitSignal(level=logging.INFO), logging.getLogger(locks.__name__)
    previous_level = lock_logger.level
    lock_logger.addHandler(handler)
    lock_logger.setLevel(logging.INFO)
    monkeypatch.setattr(inventory, "remove_owned", remove_once_the_builder_waits)
    try:
        assert cli(["clean", "--yes", str(data_dir), "--quiet"]) == 0
        thread.join(timeout=120)
    finally:
        lock_logger.removeHandler(handler)
        lock_logger.setLevel(previous_level)
    assert not thread.is_alive()
    assert "error" not in outcome, repr(outcome.get("error"))
    assert_same_grouped_data(outcome["data"], baseline_grouped())
    again = MemmapDatasetBridge(npz, memmap_config(npz), data_dir, progress=False)
    assert not again.experiment.regrouped  # what the builder wrote after clean is complete and valid
    np.testing.assert_array_equal(again.grouped_data()["nn_indices"], baseline_grouped()["nn_indices"])


@pytest.mark.parametrize("timeout", [-1, float("nan"), float("inf")])
def test_impossible_lock_timeout_is_refused_before_locking(tmp_path, timeout):
    with pytest.raises(ValueError, match="lock_timeout must be a number of seconds >= 0 or None"):
        with directory_lock(tmp_path / "dataset", timeout_seconds=timeout):
            pass
    assert not (tmp_path / "dataset").exists()


WAIT_IN_A_PLAIN_SCRIPT = r"""
import sys, time
from pathlib import Path
from ptycho_torch.memmap_bridge import MemmapDatasetBridge
from tests.torch.test_data_pipeline import memmap_config
npz, data_dir = Path(sys.argv[1]), Path(sys.argv[2])
config = memmap_config(npz)
print("waiting now", file=sys.stderr, flush=True)
try:
    MemmapDatasetBridge(npz, config, data_dir, progress=False, lock_timeout=float(sys.argv[3]))
except TimeoutError:
    pass
"""


def test_lock_wait_is_visible_on_stderr_of_a_plain_script_within_seconds(stopped_holder):
    """No logging configured (the package's NullHandler only): the wait must still show on stderr (was: silent)."""
    npz, data_dir, directory, pid = stopped_holder
    script = subprocess.Popen([sys.executable, "-c", WAIT_IN_A_PLAIN_SCRIPT, str(npz), str(data_dir), "12"], cwd=ROOT,
                              env=python_env(), stderr=subprocess.PIPE, text=True)
    try:
        lines, started = [], None
        for line in script.stderr:
            lines.append(line)
            if line.startswith("waiting now"):
                started = time.monotonic()
            elif started is not None and "still waiting" in line:
                seen_after = time.monotonic() - started
                break
        else:
            pytest.fail("no wait warning on stderr: " + "".join(lines))
    finally:
        script.kill()
        script.wait(timeout=30)
    assert str(directory / ".lock") in line and f"process {pid}" in line and "--lock-timeout" in line
    assert seen_after < locks.WARN_AFTER_SECONDS + 3


def test_train_lock_timeout_exits_2_naming_the_lock_and_leaves_no_run_directory(stopped_holder, tmp_path):
    pytest.importorskip("lightning")
    npz, data_dir, directory, pid = stopped_holder
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "ptycho_torch.cli_train", str(npz), "--data-dir", str(data_dir), "--output-dir", str(tmp_path / "runs"),
         "--n-groups", "200", "--nphotons", "1e6", "--lock-timeout", "1.5", "--quiet"],
        cwd=ROOT, env=python_env(), capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 2, result.stderr[-3000:]
    line = result.stderr.strip().splitlines()[-1]
    assert str(directory / ".lock") in line and f"process {pid}" in line and "--lock-timeout" in line, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert time.monotonic() - started < 120
    assert not list((tmp_path / "runs").glob("run_*"))
