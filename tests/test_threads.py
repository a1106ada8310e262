"""The number of torch threads the commands choose (issue 29 item 3), without torch."""

import os
import subprocess
import sys
from pathlib import Path

from ptycho_torch.threads import available_cores, choose_threads

ROOT = Path(__file__).resolve().parents[1]


def python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True,
                          text=True, check=True)


def test_threads_are_the_cores_this_process_may_use_less_its_loader_workers():
    assert choose_threads(loader_workers=1, environ={}, cores=2).threads == 1
    assert choose_threads(loader_workers=0, environ={}, cores=2).threads == 2
    assert choose_threads(loader_workers=8, environ={}, cores=4).threads == 1
    assert choose_threads(environ={}, cores=8, processes=2).threads == 4
    choice = choose_threads(loader_workers=1, environ={}, cores=6)
    assert choice.threads == 5 and "6 core(s)" in choice.reason and "1 loader worker(s)" in choice.reason


def test_omp_num_threads_and_the_option_win():
    assert choose_threads(loader_workers=0, environ={"OMP_NUM_THREADS": "3"}, cores=16).threads == 3
    assert choose_threads(loader_workers=0, environ={"OMP_NUM_THREADS": "junk"}, cores=2).threads == 2
    assert choose_threads(5, environ={"OMP_NUM_THREADS": "3"}).threads == 5


def test_available_cores_follow_the_affinity_of_the_process():
    if not hasattr(os, "sched_getaffinity"):
        return
    code = "import os; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); from ptycho_torch.threads import available_cores; print(available_cores())"
    assert python(code).stdout.strip() == "1"
    assert available_cores() >= 1


def test_the_choice_imports_no_torch():
    code = "import sys, ptycho_torch.threads; assert 'torch' not in sys.modules"
    python(code)
