"""Helpers shared by the reliability tests: subprocesses, file-tree snapshots, the embedded scan."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from ptycho_torch.experiment import dataset_directory
from tests.torch.test_data_pipeline import EMBEDDED, ROOT

TEMPORARY = re.compile(r"^\..+\.tmp-\d+-[0-9a-f]{8}$")
CACHE_GLOB = "*.groups_cache.npz"


def copy_embedded(path: Path) -> Path:
    """A private copy of the embedded scan (so tests may hash, chmod or damage it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(EMBEDDED, path)
    return path


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def file_identity(path: Path) -> tuple[str, int]:
    """Content hash and modification time: both stay equal only if nobody wrote the file."""
    return sha256(path), Path(path).stat().st_mtime_ns


def tree_state(directory: Path) -> dict[str, tuple[str, int]]:
    """``file_identity`` of every file under ``directory``, by relative path."""
    directory = Path(directory)
    return {str(p.relative_to(directory)): file_identity(p) for p in sorted(directory.rglob("*")) if p.is_file()}


def temporaries(directory: Path) -> list[str]:
    """Names of the atomic-write temporaries left in ``directory``."""
    return sorted(p.name for p in Path(directory).iterdir() if TEMPORARY.match(p.name))


def scan_directory(data_dir: Path, npz: Path) -> Path:
    return dataset_directory(data_dir, npz)


def python_env(**extra: str) -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "PYTHONPATH": path, "PYTHONDONTWRITEBYTECODE": "1", "OMP_NUM_THREADS": "1"}
    env.update(extra)
    return env


def run_python(code: str, *args, timeout: float = 120, **kwargs) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter from the repository root."""
    kwargs.setdefault("env", python_env())
    return subprocess.run(
        [sys.executable, "-c", code, *map(str, args)], cwd=ROOT, capture_output=True, text=True, timeout=timeout, **kwargs
    )


def last_json(stdout: str):
    """The last JSON line a subprocess printed."""
    lines = [line for line in stdout.splitlines() if line.startswith(("{", "["))]
    assert lines, f"no JSON in the output:\n{stdout}"
    return json.loads(lines[-1])
