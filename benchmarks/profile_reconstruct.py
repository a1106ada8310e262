"""Where ``ptycho-reconstruct``'s time goes: the command under cProfile, top functions by own time and by phase.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/profile_reconstruct.py --checkpoint CKPT        # datasets/sim_small.npz

Runs ``python -m cProfile -o PROF -m ptycho_torch.cli_reconstruct CKPT SCAN ...`` in a child process
(one torch thread, the command's defaults unless ``--args`` adds options; the memory map is built once
before, untimed), then writes to ``--out`` (default ``benchmarks/figures/profile_reconstruct.txt``): the
phases of the command (cumulative time of its main functions), the top ``--top`` functions sorted by
tottime and the same by cumulative time. cProfile adds its own overhead per Python call, so the times
are larger than without it; the shares are what to read.
"""

from __future__ import annotations

import argparse
import datetime
import io
import os
import pstats
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# (label, file suffix, function name) whose cumulative time is one phase of the command
PHASES = [
    ("whole process (cProfile's total)", None, None),
    ("imports, wherever they happen (torch, matplotlib, ...)", "<frozen importlib._bootstrap>", "_find_and_load"),
    ("reconstruct_command (after imports of cli_reconstruct)", "ptycho_torch/cli_reconstruct.py", "reconstruct_command"),
    ("  load_network (checkpoint)", "ptycho_torch/model/checkpoints.py", "load_network"),
    ("  PtychoDataset(...) (memory map and groups cache found)", "ptycho_torch/dset_loader_pt_mmap.py", "__init__"),
    ("  stitching.reconstruct", "ptycho_torch/model/stitching.py", "reconstruct"),
    ("    dataset gather (batches)", "ptycho_torch/model/stitching.py", "_batch"),
    ("    predict_patches", "ptycho_torch/model/pinn.py", "predict_patches"),
    ("      generator_input (physics input: 2 ER steps)", "ptycho_torch/model/pinn.py", "_generator_input"),
    ("      generator_output (U-Net)", "ptycho_torch/model/pinn.py", "generator_output"),
    ("      merge_group (object_big)", "ptycho_torch/model/physics.py", "merge_group"),
    ("    predicted_counts (count gain)", "ptycho_torch/model/pinn.py", "predicted_counts"),
    ("    _Accumulator.add (stitching, phase alignment)", "ptycho_torch/model/stitching.py", "add"),
    ("  write_reconstruction (NPZ)", "ptycho_torch/cli_reconstruct.py", "write_reconstruction"),
    ("  log_scores (against objectGuess)", "ptycho_torch/cli_reconstruct.py", "log_scores"),
    ("  write_png", "ptycho_torch/cli_reconstruct.py", "write_png"),
]


def phase_table(stats: pstats.Stats) -> list[tuple[str, float, int]]:
    total = stats.total_tt
    rows = []
    for label, suffix, name in PHASES:
        if suffix is None:
            rows.append((label, total, 1))
            continue
        cumulative, calls = 0.0, 0
        for (filename, _, function), (cc, nc, tt, ct, callers) in stats.stats.items():
            if function == name and filename.endswith(suffix):
                cumulative += ct
                calls += nc
        rows.append((label, cumulative, calls))
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--scan", type=Path, default=ROOT / "datasets" / "sim_small.npz")
    parser.add_argument("--args", nargs=argparse.REMAINDER, default=[], help="further options of the command, e.g. --groups all")
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/bench-speed/profile"))
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "figures" / "profile_reconstruct.txt")
    args = parser.parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    command = [str(args.checkpoint), str(args.scan), "--output", str(args.workdir / "profiled.npz"), "--data-dir", str(args.workdir / "memmap"),
               "--threads", "1", "--quiet", *args.args]
    subprocess.run([sys.executable, "-m", "ptycho_torch.cli_reconstruct", *command], env=env, cwd=ROOT, check=True, capture_output=True)  # cache
    profile = args.workdir / "reconstruct.prof"
    load = os.getloadavg()[0]
    subprocess.run([sys.executable, "-m", "cProfile", "-o", str(profile), "-m", "ptycho_torch.cli_reconstruct", *command], env=env, cwd=ROOT,
                   check=True, capture_output=True)
    stats = pstats.Stats(str(profile))
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    out = io.StringIO()
    out.write(f"ptycho-reconstruct under cProfile: {datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')}, commit {commit}, "
              f"1 torch thread, load (1 min) {load:.2f}\n")
    out.write(f"command: ptycho-reconstruct {' '.join(command)}\n\n")
    out.write("phases (cumulative s under cProfile, calls):\n")
    for label, seconds, calls in phase_table(stats):
        out.write(f"  {label:<58} {seconds:8.3f} s  {calls:>5}  {100 * seconds / stats.total_tt:5.1f} %\n")
    for key, title in (("tottime", "own time (tottime)"), ("cumulative", "cumulative time")):
        buffer = io.StringIO()
        pstats.Stats(str(profile), stream=buffer).strip_dirs().sort_stats(key).print_stats(args.top)
        text = buffer.getvalue()
        out.write(f"\ntop {args.top} by {title}:\n" + text[text.index("   ncalls"):] if "   ncalls" in text else text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(out.getvalue())
    print(out.getvalue())
    print(f"written {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
