"""``ptycho-reconstruct`` of one scan on several checkouts, interleaved, with LSQML-10 in the same session.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/compare_reconstruct.py --tree main=/work/main --tree branch=. --rounds 3 --ptychi

Each round runs, one after the other, ``python -c "import torch"`` and, per ``--tree NAME=PATH``, the
command ``ptycho-reconstruct CHECKPOINT SCAN --threads 1 --quiet`` with the PNG and with ``--no-png`` (that
tree's package on ``PYTHONPATH``, ``OMP_NUM_THREADS=1``, its own ``--data-dir`` built by an untimed run
first). CPU s are the child's user + sys (``os.wait4``); the 1-minute load average is recorded before each
run. "Less torch" subtracts the median of the ``import torch`` runs. ``--ptychi`` then runs Pty-chi LSQML
for 10 epochs ``--rounds`` times after a warm-up, in one child, as ``bench_reconstruct.py`` does (CPU s of
building and running the task), and prints each command's ratio to it. Rounds interleave the trees, so
background load hits them alike.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(cmd: list[str], tree: Path, stdout=subprocess.DEVNULL) -> dict:
    env = dict(os.environ, PYTHONPATH=str(tree), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    load = os.getloadavg()[0]
    proc = subprocess.Popen(cmd, env=env, cwd=tree, stdout=stdout, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    text = proc.stdout.read().decode() if stdout == subprocess.PIPE else ""
    if status:
        raise SystemExit(f"{' '.join(map(str, cmd))} failed: {proc.stderr.read().decode()[-3000:]}")
    return {"cpu_s": usage.ru_utime + usage.ru_stime, "load": load, "max_rss_mib": usage.ru_maxrss / 1024, "stdout": text}


PTYCHI_CHILD = """
import json, pathlib, sys
sys.path.insert(0, {root!r})
from benchmarks import bench_ptychi as b
settings = b.PtychiSettings(threads=1)
b.warm_up(pathlib.Path({scan!r}), 'lsqml', settings)
print(json.dumps([b.reconstruct_with_ptychi({scan!r}, 'lsqml', 10, batch_size=settings.batch_size, threads=1)[1] for _ in range({rounds})]))
"""


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tree", action="append", required=True, help="NAME=PATH of a checkout (repeatable)")
    parser.add_argument("--checkpoint", default="pretrained")
    parser.add_argument("--scan", default="datasets/sim_small.npz", help="relative to each tree, or absolute")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--ptychi", action="store_true")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/compare-reconstruct"))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    trees = dict(item.split("=", 1) for item in args.tree)
    trees = {name: Path(path).resolve() for name, path in trees.items()}
    variants = {"import torch": ([sys.executable, "-c", "import torch"], ROOT)}
    for name, tree in trees.items():
        work = args.workdir / name
        work.mkdir(parents=True, exist_ok=True)
        base = [sys.executable, "-m", "ptycho_torch.cli_reconstruct", args.checkpoint, str(tree / args.scan), "--output", str(work / "r.npz"),
                "--data-dir", str(work / "memmap"), "--threads", "1", "--quiet"]
        run(base + ["--no-png"], tree)  # memory map and groups cache, untimed
        variants[f"{name} PNG"] = (base, tree)
        variants[f"{name} --no-png"] = (base + ["--no-png"], tree)
    runs = {key: [] for key in variants}
    for _ in range(args.rounds):
        for key, (cmd, tree) in variants.items():
            runs[key].append(run(cmd, tree))
    torch_s = statistics.median(r["cpu_s"] for r in runs["import torch"])
    record = {"date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), "trees": {k: str(v) for k, v in trees.items()},
              "checkpoint": args.checkpoint, "scan": args.scan, "import_torch_cpu_s": torch_s, "rows": {}}
    for key, rows in runs.items():
        cpu = [r["cpu_s"] for r in rows]
        record["rows"][key] = {"cpu_s_runs": cpu, "median": statistics.median(cpu), "loads": [r["load"] for r in rows],
                               "max_rss_mib": max(r["max_rss_mib"] for r in rows)}
        beyond = "" if key == "import torch" else (f"; less torch {statistics.median(cpu) - torch_s:.3f} "
                                                   f"({min(cpu) - torch_s:.3f}-{max(cpu) - torch_s:.3f})")
        print(f"{key:24s} {statistics.median(cpu):.3f} CPU s ({min(cpu):.3f}-{max(cpu):.3f}){beyond}; loads {[round(r['load'], 2) for r in rows]}")
    if args.ptychi:
        scan = str(Path(args.scan) if Path(args.scan).is_absolute() else ROOT / args.scan)
        child = run([sys.executable, "-c", PTYCHI_CHILD.format(root=str(ROOT), scan=scan, rounds=args.rounds)], ROOT, stdout=subprocess.PIPE)
        lsqml = json.loads(child["stdout"].strip().splitlines()[-1])
        median = statistics.median(lsqml)
        record["lsqml10"] = {"cpu_s_runs": lsqml, "median": median, "load_before": child["load"]}
        print(f"LSQML-10 {median:.3f} CPU s ({min(lsqml):.3f}-{max(lsqml):.3f}); load before {child['load']:.2f}")
        for key, row in record["rows"].items():
            if key != "import torch":
                row["ratio_to_lsqml10"] = (row["median"] - torch_s) / median
                print(f"  {key}: (command - import torch) / LSQML-10 = {row['ratio_to_lsqml10']:.3f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(record, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
