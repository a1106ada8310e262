"""``ptycho-reconstruct`` as a user runs it: whole-command CPU seconds and peak RSS, beside Pty-chi's LSQML.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/bench_reconstruct.py --checkpoint CKPT \\
        --scans datasets/sim_small.npz /tmp/bench-speed/scan8192.npz --ptychi-scans datasets/sim_small.npz

Every measurement is a fresh child process with one torch thread (``--threads 1``, ``OMP_NUM_THREADS=1``);
its user+sys CPU seconds and peak RSS come from ``os.wait4`` (the child's own rusage). From each command's
CPU seconds the median CPU seconds of ``python -c "import torch"`` (measured the same way, at the start and
the end) is subtracted: what the command costs beyond importing torch. Per scan, the first run builds the
memory map and groups cache (reported apart, 'cold'); the timed runs find it ('warm'). Configurations:
``--groups cover|all`` x ``--precision bf16|fp32`` x PNG on/off (``--no-png``), each ``--repeats`` times
(median, min-max). Start-up: CPU seconds of importing the command's modules minus ``import torch``.
Pty-chi: LSQML ``--ptychi-epochs`` (10) epochs per scan of ``--ptychi-scans`` with one thread, through
``bench_ptychi.reconstruct_with_ptychi`` (CPU s of building and running the task, ``time.process_time``), in
one child per scan after an untimed 1-epoch warm-up. Writes JSON (default
``benchmarks/figures/reconstruct.json``) and prints Markdown tables.
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STARTUP_MODULES = "ptycho_torch.cli_reconstruct, ptycho_torch.dset_loader_pt_mmap, ptycho_torch.model.stitching, ptycho_torch.model.checkpoints"
TARGETS = {"ratio_to_lsqml10": 0.35, "ratio_goal": 0.1, "startup_cpu_s": 1.5, "rss_mib": {8192: 2048, 100000: 4096}}


def child_env(threads: int) -> dict:
    return dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))


def run_child(args: list[str], env: dict, stdout=subprocess.DEVNULL) -> dict:
    """One child process: user+sys CPU s, peak RSS (MiB) and wall s from its own rusage (``os.wait4``); the load before it."""
    load = os.getloadavg()[0]
    started = time.perf_counter()
    proc = subprocess.Popen(args, env=env, stdout=stdout, stderr=subprocess.PIPE, cwd=ROOT)
    stderr = proc.stderr.read().decode(errors="replace")  # read before waiting: a full pipe would block the child
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    proc.stderr.close()
    out = proc.stdout.read().decode() if proc.stdout else ""
    if proc.stdout:
        proc.stdout.close()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} exited {proc.returncode}:\n{stderr[-3000:]}")
    return {"cpu_s": round(usage.ru_utime + usage.ru_stime, 3), "user_s": round(usage.ru_utime, 3), "sys_s": round(usage.ru_stime, 3),
            "max_rss_mib": round(usage.ru_maxrss / 1024, 1), "wall_s": round(wall, 3), "load_1min": load, "stdout": out, "stderr_tail": stderr[-400:]}


def summary(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def torch_import(env: dict, repeats: int) -> list[dict]:
    return [run_child([sys.executable, "-c", "import torch"], env) for _ in range(repeats)]


def reconstruct_args(checkpoint: Path, scan: Path, out: Path, data_dir: Path, groups: str, precision: str, png: bool, threads: int) -> list[str]:
    args = [sys.executable, "-m", "ptycho_torch.cli_reconstruct", str(checkpoint), str(scan), "--output", str(out), "--data-dir", str(data_dir),
            "--groups", groups, "--precision", precision, "--threads", str(threads), "--quiet"]
    return args + ([] if png else ["--no-png"])


def count_points(scan: Path) -> int:
    import numpy as np

    with np.load(scan, mmap_mode="r") as data:
        return int(data["xcoords"].shape[0])


PTYCHI_CHILD = """
import json, sys, resource
sys.path.insert(0, {root!r})
from benchmarks import bench_ptychi as b
settings = b.PtychiSettings(threads={threads})
b.warm_up(__import__('pathlib').Path({scan!r}), 'lsqml', settings)
runs = []
for _ in range({repeats}):
    _, cpu_s = b.reconstruct_with_ptychi({scan!r}, 'lsqml', {epochs}, batch_size=settings.batch_size, threads={threads})
    runs.append(cpu_s)
print(json.dumps(runs))
"""


def ptychi_lsqml(scan: Path, epochs: int, repeats: int, env: dict, threads: int) -> dict:
    code = PTYCHI_CHILD.format(root=str(ROOT), threads=threads, scan=str(scan), repeats=repeats, epochs=epochs)
    child = run_child([sys.executable, "-c", code], env, stdout=subprocess.PIPE)
    runs = json.loads(child.pop("stdout").strip().splitlines()[-1])
    return {"scan": str(scan), "epochs": epochs, "cpu_s_runs": runs, "cpu_s": summary(runs), "child": child}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, required=True, help="a checkpoint of the default architecture (timing does not depend on its weights)")
    parser.add_argument("--scans", type=Path, nargs="+", default=[ROOT / "datasets" / "sim_small.npz"])
    parser.add_argument("--groups", nargs="+", default=["cover", "all"], choices=["cover", "all"])
    parser.add_argument("--precision", nargs="+", default=["bf16", "fp32"], choices=["bf16", "fp32", "auto"])
    parser.add_argument("--png", nargs="+", default=["off", "on"], choices=["off", "on"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--ptychi-scans", type=Path, nargs="*", default=[], help="scans to reconstruct with LSQML too")
    parser.add_argument("--ptychi-epochs", type=int, default=10)
    parser.add_argument("--ptychi-json", type=Path, help="reuse the Pty-chi records of an earlier run of this script instead")
    parser.add_argument("--no-startup", action="store_true", help="skip the start-up measurement")
    parser.add_argument("--no-cold", action="store_true", help="keep the memory maps of an earlier run and skip the first (cache-building) run")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/bench-speed/reconstruct"), help="memory maps and outputs (its memmap-* are deleted)")
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "figures" / "reconstruct.json")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    env = child_env(args.threads)
    args.workdir.mkdir(parents=True, exist_ok=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    record = {"date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), "commit": commit,
              "threads": args.threads, "checkpoint": str(args.checkpoint), "load_1min_start": os.getloadavg()[0], "scans": [], "argv": sys.argv[1:]}
    imports = torch_import(env, args.repeats)
    if not args.no_startup:
        modules = [run_child([sys.executable, "-c", f"import {STARTUP_MODULES}"], env) for _ in range(args.repeats)]
        imports += torch_import(env, args.repeats)
    torch_cpu = statistics.median(r["cpu_s"] for r in imports)
    record["torch_import"] = {"runs": imports, "cpu_s": summary([r["cpu_s"] for r in imports]), "max_rss_mib": summary([r["max_rss_mib"] for r in imports])}
    if not args.no_startup:
        beyond = [r["cpu_s"] - torch_cpu for r in modules]
        record["startup"] = {"modules": STARTUP_MODULES, "runs": modules, "cpu_s_beyond_torch": summary(beyond)}
        print(f"start-up: importing the command's modules costs {statistics.median(beyond):.2f} CPU s beyond `import torch` "
              f"({min(beyond):.2f}-{max(beyond):.2f}; torch itself {torch_cpu:.2f})", flush=True)
    for scan in args.scans:
        points = count_points(scan)
        data_dir = args.workdir / f"memmap-{scan.stem}"
        out = args.workdir / f"{scan.stem}_reconstruction.npz"
        entry = {"scan": str(scan), "points": points, "runs": {}}
        if not args.no_cold:
            shutil.rmtree(data_dir, ignore_errors=True)
            cold = run_child(reconstruct_args(args.checkpoint, scan, out, data_dir, "cover", args.precision[0], False, args.threads), env)
            cold["cpu_s_beyond_torch"] = cold["cpu_s"] - torch_cpu
            entry["cold"] = {"groups": "cover", "precision": args.precision[0], "png": "off", **cold}
            print(f"{scan.name} ({points} points) cold cover {args.precision[0]} no-png: {cold['cpu_s_beyond_torch']:.2f} CPU s beyond torch, "
                  f"{cold['max_rss_mib']:.0f} MiB, load {cold['load_1min']:.2f}", flush=True)
        for groups, precision, png in itertools.product(args.groups, args.precision, args.png):
            runs = [run_child(reconstruct_args(args.checkpoint, scan, out, data_dir, groups, precision, png == "on", args.threads), env)
                    for _ in range(args.repeats)]
            beyond = [r["cpu_s"] - torch_cpu for r in runs]
            key = f"{groups}/{precision}/png-{png}"
            entry["runs"][key] = {"groups": groups, "precision": precision, "png": png, "runs": runs, "cpu_s_beyond_torch": summary(beyond),
                                  "max_rss_mib": summary([r["max_rss_mib"] for r in runs]), "wall_s": summary([r["wall_s"] for r in runs]),
                                  "load_1min": [r["load_1min"] for r in runs]}
            print(f"{scan.name} {key}: {statistics.median(beyond):.2f} CPU s beyond torch ({min(beyond):.2f}-{max(beyond):.2f}), "
                  f"peak RSS {max(r['max_rss_mib'] for r in runs):.0f} MiB, load {runs[0]['load_1min']:.2f}", flush=True)
        record["scans"].append(entry)
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(record, indent=1) + "\n")
    if args.ptychi_json:
        record["ptychi"] = json.loads(args.ptychi_json.read_text()).get("ptychi", [])
    else:
        record["ptychi"] = []
        for scan in args.ptychi_scans:
            result = ptychi_lsqml(scan, args.ptychi_epochs, args.repeats, env, args.threads)
            result["points"] = count_points(scan)
            record["ptychi"].append(result)
            print(f"Pty-chi LSQML {args.ptychi_epochs} epochs {scan.name}: {result['cpu_s']['median']:.2f} CPU s "
                  f"({result['cpu_s']['min']:.2f}-{result['cpu_s']['max']:.2f}), load {result['child']['load_1min']:.2f}", flush=True)
    record["load_1min_end"] = os.getloadavg()[0]
    args.json.write_text(json.dumps(record, indent=1) + "\n")
    print(markdown(record))
    print(f"\nwritten {args.json}")
    return 0


def markdown(r: dict) -> str:
    lsqml = {Path(p["scan"]).name: p for p in r.get("ptychi", [])}
    lines = [f"bench_reconstruct: {r['date_utc']}, commit {r['commit']}, {r['threads']} thread(s), load {r['load_1min_start']:.2f} -> "
             f"{r.get('load_1min_end', float('nan')):.2f}; `import torch`: {r['torch_import']['cpu_s']['median']:.2f} CPU s "
             f"({r['torch_import']['cpu_s']['min']:.2f}-{r['torch_import']['cpu_s']['max']:.2f}), subtracted", ""]
    if "startup" in r:
        s = r["startup"]["cpu_s_beyond_torch"]
        lines += [f"start-up (importing the command's modules) beyond `import torch`: {s['median']:.2f} CPU s ({s['min']:.2f}-{s['max']:.2f}); "
                  f"target <= {TARGETS['startup_cpu_s']}", ""]
    lines += ["| scan | groups | precision | PNG | CPU s beyond torch (median, min-max) | peak RSS MiB | LSQML-10 CPU s | ours / LSQML-10 |",
              "|---|---|---|---|---:|---:|---:|---:|"]
    for entry in r["scans"]:
        name = Path(entry["scan"]).name
        ref = lsqml.get(name)
        if "cold" in entry:
            c = entry["cold"]
            lines.append(f"| {name} ({entry['points']:,} points), first run (builds the cache) | cover | {c['precision']} | off | "
                         f"{c['cpu_s_beyond_torch']:.2f} (1 run) | {c['max_rss_mib']:.0f} | | |")
        for key, run in entry["runs"].items():
            s = run["cpu_s_beyond_torch"]
            ratio = f"{s['median'] / ref['cpu_s']['median']:.3f}" if ref else ""
            ref_cell = f"{ref['cpu_s']['median']:.2f} ({ref['cpu_s']['min']:.2f}-{ref['cpu_s']['max']:.2f})" if ref else ""
            lines.append(f"| {name} | {run['groups']} | {run['precision']} | {run['png']} | {s['median']:.2f} ({s['min']:.2f}-{s['max']:.2f}) | "
                         f"{run['max_rss_mib']['max']:.0f} | {ref_cell} | {ratio} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
