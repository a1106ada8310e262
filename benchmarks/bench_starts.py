"""What refinement should start from: the network's pass, its physics input, or a unit object; with LSQML in the same run.

    .venv/bin/python benchmarks/bench_starts.py                                  # seed-1000 held-out scans and the embedded one
    .venv/bin/python benchmarks/bench_starts.py --seed 2000 --no-embedded --json benchmarks/figures/starts_seed2000.json

On ``bench_pretrained``'s held-out scans (``--n-per-kind`` of each kind from ``--seed``) and ``datasets/sim_small.npz``,
each start (``ptycho-reconstruct --start network|physics|flat``: the shipped model's single pass, ``groups='cover'``,
bf16; its physics input alone; a unit object, ``refine.flat_start``) is followed by each number of ``--sweeps`` of the
default refinement (and of each ``--plateaus``: ``RefinementUpdate.plateau``, the ablation of the switch to parallel
updates), and Pty-chi LSQML runs at ``--lsqml-epochs`` beside it (known probe, one thread). CPU s of ours:
the start plus the sweeps (``time.process_time``; the dataset's memory map and grouping, 0.05-0.09 s, not included).
Scored with ``bench_ptychi.score_reconstruction``. Writes ``--json``: every scan's numbers and a Markdown table of means.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import bench_ptychi  # noqa: E402
from benchmarks.bench_model import EMBEDDED, git_commit  # noqa: E402
from benchmarks.bench_pretrained import KINDS, build_dataset, held_out_scans, lsqml_records  # noqa: E402
from ptycho.scan_file import read_scan  # noqa: E402
from ptycho_torch.model.refine import RefinementUpdate, flat_start, refine  # noqa: E402
from ptycho_torch.model.stitching import Canvas, reconstruct  # noqa: E402
from ptycho_torch.pretrained import load_pretrained  # noqa: E402
from ptycho_torch.workflow import STARTS  # noqa: E402


def start_object(network, dataset, start: str, canvas: Canvas):
    if start == "flat":
        return flat_start(dataset, canvas)
    network.precision = "bf16" if start == "network" else "fp32"
    return reconstruct(network, dataset, canvas=canvas, groups="cover", use_network=start == "network", progress=False)


def way_name(start: str, sweeps: int, plateau: float) -> str:
    default = plateau == RefinementUpdate().plateau
    return f"{start} + {sweeps}" + ("" if default else f" (plateau {plateau:g})")


def scan_records(network, scan: Path, sweeps: list[int], work: Path, starts=STARTS, plateaus=(RefinementUpdate().plateau,)) -> dict:
    loaded = bench_ptychi.load_scan(scan)
    canvas = Canvas(read_scan(scan, load_diffraction=False).objectGuess.shape, (0, 0))
    dataset, _, _ = build_dataset(network, scan, work / f"memmap-{scan.stem}", 512)
    records = {}
    for start in starts:
        began = time.process_time()
        first = start_object(network, dataset, start, canvas)
        start_s = time.process_time() - began
        if start != "flat":
            records[f"{start}"] = {**bench_ptychi.score_reconstruction(first.object, loaded), "cpu_s": start_s}
        for plateau in plateaus:
            for n in sweeps:
                began = time.process_time()
                refined = refine(first, dataset, n, update=RefinementUpdate(plateau=plateau), progress=False)
                records[way_name(start, n, plateau)] = {**bench_ptychi.score_reconstruction(refined.object, loaded),
                                                        "cpu_s": start_s + time.process_time() - began}
    return records


def summary(per_scan: dict, ways: list[str]) -> str:
    lines = ["| kind | way | scans | amp r | phase r | CPU s |", "|---|---|---:|---:|---:|---:|"]
    for kind in dict.fromkeys(e["kind"] for e in per_scan.values()):
        entries = [e for e in per_scan.values() if e["kind"] == kind]
        for way in ways:
            rows = [e["ways"][way] for e in entries if way in e["ways"]]
            mean = {m: statistics.mean(r[m] for r in rows) for m in ("amplitude_r", "phase_r", "cpu_s")}
            lines.append(f"| {kind} | {way} | {len(rows)} | {mean['amplitude_r']:.3f} | {mean['phase_r']:.3f} | {mean['cpu_s']:.2f} |")
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=1000)
    parser.add_argument("--n-per-kind", type=int, default=2)
    parser.add_argument("--heldout", type=Path, default=None, help="default: benchmarks/results/heldout-seed<S>-n<K>")
    parser.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS))
    parser.add_argument("--no-embedded", action="store_true")
    parser.add_argument("--sweeps", nargs="+", type=int, default=[3, 5, 10, 20])
    parser.add_argument("--starts", nargs="+", choices=STARTS, default=list(STARTS))
    parser.add_argument("--plateaus", nargs="+", type=float, default=[RefinementUpdate().plateau],
                        help="RefinementUpdate.plateau values, each a way of its own (0: never switch to parallel updates)")
    parser.add_argument("--lsqml-epochs", nargs="*", type=int, default=[1, 3, 5, 10, 20])
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "figures" / "starts_heldout.json")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(1)
    started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    load_start, wall = os.getloadavg(), time.perf_counter()
    heldout = args.heldout or ROOT / "benchmarks" / "results" / f"heldout-seed{args.seed}-n{args.n_per_kind}"
    scans = held_out_scans(heldout, args.n_per_kind, args.seed, 512, args.kinds)
    if not args.no_embedded:
        scans["embedded"] = [EMBEDDED]
    network = load_pretrained()
    settings = bench_ptychi.PtychiSettings(threads=1)
    work = Path(tempfile.mkdtemp(prefix="bench_starts_"))
    per_scan, ways = {}, []
    try:
        first = next(iter(scans.values()))[0]
        scan_records(network, first, [1], work, args.starts)  # warm-up, untimed
        if args.lsqml_epochs:
            bench_ptychi.warm_up(first, "lsqml", settings)
        for kind, paths in scans.items():
            for scan in paths:
                records = scan_records(network, scan, args.sweeps, work, args.starts, args.plateaus)
                if args.lsqml_epochs:
                    records.update(lsqml_records(scan, sorted(args.lsqml_epochs), settings, work / "lsqml"))
                ways = list(dict.fromkeys([*ways, *records]))
                per_scan[str(scan)] = {"kind": kind, "ways": records}
                print(f"{scan.name}: " + "; ".join(f"{w} {r['amplitude_r']:.3f}/{r['phase_r']:.3f} ({r['cpu_s']:.2f})"
                                                   for w, r in records.items()), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for entry in per_scan.values():
        for record in entry["ways"].values():
            record.pop("object_path", None)
    table = summary(per_scan, ways)
    meta = {"started_utc": started, "commit": git_commit(), "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "wall_s": time.perf_counter() - wall, "load_average_start": load_start, "load_average_end": os.getloadavg(),
            "torch": torch.__version__, "threads": 1, "heldout": str(heldout), "sweeps": args.sweeps,
            "starts": args.starts, "plateaus": args.plateaus, "lsqml_epochs": args.lsqml_epochs}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"meta": meta, "summary_markdown": table, "per_scan": per_scan}, indent=1))
    print(table)
    print(f"{started}, commit {meta['commit']}, load {load_start[0]:.2f} -> {meta['load_average_end'][0]:.2f}, "
          f"{meta['wall_s'] / 60:.1f} min wall")
    return 0


if __name__ == "__main__":
    sys.exit(main())
