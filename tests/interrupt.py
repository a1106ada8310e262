"""Run a command and press Ctrl-C once it has written a file: how a user stops a long job."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path


def interrupt_once(command: list[str], written: Path, pattern: str, *, cwd: Path, env: dict, timeout_s: float = 300):
    """Start ``command``, send SIGINT as soon as ``written.glob(pattern)`` finds a file, and return (exit status, stdout,
    stderr); fails the test if the command ends first or writes nothing within ``timeout_s``."""
    process = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + timeout_s
        while not list(written.glob(pattern)):
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, f"nothing matching {pattern} in {written} after {timeout_s} s"
            time.sleep(0.05)
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    return process.returncode, stdout, stderr
