"""The training-script example runs as users run it: plain, then under torchrun reusing the cache."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("tensordict")
pytest.importorskip("lightning")

ROOT = Path(__file__).resolve().parents[1]
TRAIN_LOOP = ROOT / "examples" / "train_loop.py"
LOSS = re.compile(r"rank (\d) INFO train_loop: epoch \d+ step (\d+)/2 loss (\S+)")
CACHE = re.compile(r"rank (\d) INFO train_loop: .*groups cache (built|reused) \(dataset\.regrouped=(True|False)\)")


def run(launcher: list[str], data_dir: Path) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    command = [*launcher, str(TRAIN_LOOP), "--steps", "2", "--batch-size", "8", "--n-groups", "64", "--data-dir", str(data_dir)]
    out = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout + out.stderr


def losses_by_rank(log: str) -> dict[int, list[float]]:
    found: dict[int, list[float]] = {}
    for rank, step, value in LOSS.findall(log):
        found.setdefault(int(rank), []).append(float(value))
    return found


def test_train_loop_then_torchrun_resumes_from_the_cache(tmp_path):
    data_dir = tmp_path / "memmap"

    first = run([sys.executable], data_dir)
    assert CACHE.findall(first) == [("0", "built", "True")]
    assert list(losses_by_rank(first)) == [0]
    assert len(losses_by_rank(first)[0]) == 2 and all(math.isfinite(v) for v in losses_by_rank(first)[0])

    second = run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"], data_dir)
    assert sorted(CACHE.findall(second)) == [("0", "reused", "False"), ("1", "reused", "False")]
    losses = losses_by_rank(second)
    assert sorted(losses) == [0, 1]
    assert all(len(values) == 2 and all(math.isfinite(v) for v in values) for values in losses.values())
    assert len(list(data_dir.glob("*/*.groups_cache.npz"))) == 1
