"""What fine-tuning the shipped model on the scan itself adds (issue 26 item 4), and what it costs, on held-out scans.

    .venv/bin/python benchmarks/bench_finetune.py                                   # 2 scans of each held-out kind, 1 and 5 epochs
    .venv/bin/python benchmarks/bench_finetune.py --kinds all --epochs 1 --json /tmp/ft.json   # quick look

For each held-out scan (``bench_pretrained``'s, ``--heldout``, default ``benchmarks/results/heldout-seed1000-n2``) and
each ``--epochs E``, runs the user's command ``ptycho-train SCAN --init pretrained --epochs E --precision PREC --threads
1 --quiet`` in a child process (the recommended preset: Poisson likelihood only, no truth term, so the scan's
``objectGuess`` is not used), then reconstructs the scan with the fine-tuned network (single pass, ``groups='cover'``)
and after ``--sweeps`` refinement sweeps. Beside it, in the same run: the shipped model's single pass and its physics
input, each with the same sweeps. Scored with ``bench_ptychi.score_reconstruction`` (probe coverage >= 5 %).
CPU s of fine-tuning: the child's user + sys (``resource.getrusage(RUSAGE_CHILDREN)``), whole command, with
``python -c "import torch"`` measured the same way once beside it.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import bench_ptychi  # noqa: E402
from benchmarks.bench_model import git_commit  # noqa: E402
from benchmarks.bench_pretrained import KINDS, build_dataset, held_out_scans  # noqa: E402
from ptycho.scan_file import read_scan  # noqa: E402
from ptycho_torch.model.checkpoints import load_network  # noqa: E402
from ptycho_torch.model.refine import refine  # noqa: E402
from ptycho_torch.model.stitching import Canvas, reconstruct  # noqa: E402
from ptycho_torch.pretrained import resolve_checkpoint  # noqa: E402


def child_cpu(command: list[str], cwd: Path) -> tuple[subprocess.CompletedProcess, float]:
    """Run ``command``; its user + sys CPU seconds (children of this process only run one at a time here)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=3600)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return result, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def fine_tune(scan: Path, epochs: int, precision: str, work: Path) -> tuple[Path, float]:
    """``ptycho-train SCAN --init pretrained``: the checkpoint it prints and the command's CPU s."""
    command = [sys.executable, "-m", "ptycho_torch.cli_train", str(scan), "--init", "pretrained", "--epochs", str(epochs),
               "--precision", precision, "--threads", "1", "--output-dir", str(work), "--quiet"]
    result, cpu_s = child_cpu(command, work.parent)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed: {result.stderr[-2000:]}")
    return Path(result.stdout.strip().splitlines()[-1]), cpu_s


def scored(network, dataset, loaded, truth_shape, sweeps: int, use_network: bool = True) -> dict:
    """The single pass (or physics input) and the same + ``sweeps``: scores and CPU s of each."""
    network.precision = "bf16" if use_network else "fp32"
    started = time.process_time()
    result = reconstruct(network, dataset, canvas=Canvas(truth_shape, (0, 0)), groups="cover", use_network=use_network, progress=False)
    pass_s = time.process_time() - started
    refined = refine(result, dataset, sweeps, progress=False)
    refined_s = time.process_time() - started
    return {"pass": {**bench_ptychi.score_reconstruction(result.object, loaded), "cpu_s": pass_s},
            f"+ {sweeps} sweeps": {**bench_ptychi.score_reconstruction(refined.object, loaded), "cpu_s": refined_s}}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--heldout", type=Path, default=ROOT / "benchmarks" / "results" / "heldout-seed1000-n2")
    parser.add_argument("--n-per-kind", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1000)
    parser.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS))
    parser.add_argument("--epochs", nargs="+", type=int, default=[1, 5])
    parser.add_argument("--precision", choices=("bf16", "fp32"), default="bf16")
    parser.add_argument("--sweeps", type=int, default=10, help="refinement sweeps after each pass (default 10)")
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "figures" / "finetune_heldout.json")
    return parser.parse_args(argv)


def summary(per_scan: dict, ways: list[str]) -> str:
    lines = ["| kind | way | scans | amp r | phase r | CPU s (mean) |", "|---|---|---:|---:|---:|---:|"]
    kinds = list(dict.fromkeys(entry["kind"] for entry in per_scan.values()))
    for kind in kinds:
        entries = [e for e in per_scan.values() if e["kind"] == kind]
        for way in ways:
            rows = [e["ways"][way] for e in entries if way in e["ways"]]
            if not rows:
                continue
            cell = {m: statistics.mean(r[m] for r in rows) for m in ("amplitude_r", "phase_r", "cpu_s")}
            lines.append(f"| {kind} | {way} | {len(rows)} | {cell['amplitude_r']:.3f} | {cell['phase_r']:.3f} | {cell['cpu_s']:.2f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(1)
    started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    load_start, wall = os.getloadavg(), time.perf_counter()
    scans = held_out_scans(args.heldout, args.n_per_kind, args.seed, 512, args.kinds)
    shipped = load_network(resolve_checkpoint("pretrained"))
    work = Path(tempfile.mkdtemp(prefix="bench_finetune_"))
    _, import_torch_s = child_cpu([sys.executable, "-c", "import torch"], work)
    per_scan, ways = {}, []
    try:
        for kind, paths in scans.items():
            for scan in paths:
                loaded = bench_ptychi.load_scan(scan)
                truth_shape = read_scan(scan, load_diffraction=False).objectGuess.shape
                dataset, _, _ = build_dataset(shipped, scan, work / f"memmap-{scan.stem}", 512)
                records = {}
                for name, use_network in (("physics input", False), ("shipped model", True)):
                    for step, record in scored(shipped, dataset, loaded, truth_shape, args.sweeps, use_network).items():
                        records[f"{name}: {step}"] = record
                for epochs in args.epochs:
                    checkpoint, train_s = fine_tune(scan, epochs, args.precision, work / f"runs-{scan.stem}-{epochs}")
                    network = load_network(checkpoint)
                    for step, record in scored(network, dataset, loaded, truth_shape, args.sweeps).items():
                        records[f"fine-tuned {epochs} epoch(s): {step}"] = {**record, "fine_tune_cpu_s": train_s,
                                                                             "cpu_s_with_fine_tuning": train_s + record["cpu_s"]}
                ways = list(dict.fromkeys([*ways, *records]))
                per_scan[str(scan)] = {"kind": kind, "ways": records}
                print(f"{scan.name}: " + "; ".join(f"{w} {r['amplitude_r']:.3f}/{r['phase_r']:.3f}" for w, r in records.items()), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    table = summary(per_scan, ways)
    fine_tune_s = {e: [r["ways"][f"fine-tuned {e} epoch(s): pass"]["fine_tune_cpu_s"] for r in per_scan.values()] for e in args.epochs}
    meta = {"started_utc": started, "commit": git_commit(), "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "wall_s": time.perf_counter() - wall, "load_average_start": load_start, "load_average_end": os.getloadavg(),
            "torch": torch.__version__, "threads": 1, "precision": args.precision, "sweeps": args.sweeps, "heldout": str(args.heldout),
            "import_torch_cpu_s": import_torch_s,
            "fine_tune_cpu_s": {str(e): {"median": statistics.median(v), "min": min(v), "max": max(v)} for e, v in fine_tune_s.items()}}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"meta": meta, "summary_markdown": table, "per_scan": per_scan}, indent=1))
    print(table)
    for e, v in fine_tune_s.items():
        print(f"fine-tuning {e} epoch(s): {statistics.median(v):.1f} CPU s median ({min(v):.1f}-{max(v):.1f}) per scan, whole command "
              f"(python -c 'import torch': {import_torch_s:.2f} CPU s)")
    print(f"{started}, commit {meta['commit']}, load {load_start[0]:.2f} -> {meta['load_average_end'][0]:.2f}, "
          f"{meta['wall_s'] / 60:.1f} min wall")
    return 0


if __name__ == "__main__":
    sys.exit(main())
