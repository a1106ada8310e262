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


def way_name(start: str, sweeps: int, plateau: float, step: float = RefinementUpdate().step) -> str:
    changed = [f"{name} {value:g}" for name, value in (("plateau", plateau), ("step", step)) if value != getattr(RefinementUpdate(), name)]
    return f"{start} + {sweeps}" + (f" ({', '.join(changed)})" if changed else "")


def scan_records(network, scan: Path, sweeps: list[int], work: Path, starts=STARTS, plateaus=(RefinementUpdate().plateau,),
                 steps=(RefinementUpdate().step,), object_network_after=()) -> dict:
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
        for step in steps:
            for plateau in plateaus:
                for n in sweeps:
                    began = time.process_time()
                    refined = refine(first, dataset, n, update=RefinementUpdate(plateau=plateau, step=step), progress=False)
                    records[way_name(start, n, plateau, step)] = {**bench_ptychi.score_reconstruction(refined.object, loaded),
                                                                  "cpu_s": start_s + time.process_time() - began}
    if object_network_after:
        from ptycho_torch.model.object_network import refine_with_object_network
        from ptycho_torch.pretrained import load_object_network

        object_network = load_object_network()
        for after in object_network_after:
            for n in (n for n in sweeps if n > after):
                began = time.process_time()  # as `--start flat --refine n --object-network after` runs it
                result, kept = refine_with_object_network(flat_start(dataset, canvas), dataset, object_network, n - after,
                                                          sweeps_before=after, bf16=True, progress=False)
                records[f"flat>net{after} + {n}"] = {**bench_ptychi.score_reconstruction(result.object, loaded),
                                                     "cpu_s": time.process_time() - began, "kept": kept}
    return records


def summary(per_scan: dict, ways: list[str]) -> str:
    lines = ["| kind | way | scans | amp r | phase r | CPU s |", "|---|---|---:|---:|---:|---:|"]
    for kind, means in kind_means(per_scan).items():
        scans = sum(e["kind"] == kind for e in per_scan.values())
        for way in (w for w in ways if w in means):
            mean = means[way]
            lines.append(f"| {kind} | {way} | {scans} | {mean['amplitude_r']:.3f} | {mean['phase_r']:.3f} | {mean['cpu_s']:.2f} |")
    return "\n".join(lines)


def kind_means(per_scan: dict) -> dict[str, dict[str, dict[str, float]]]:
    """``{kind: {way: {metric: mean over the kind's scans}}}`` for every way all of the kind's scans have."""
    means = {}
    for kind in dict.fromkeys(e["kind"] for e in per_scan.values()):
        entries = [e["ways"] for e in per_scan.values() if e["kind"] == kind]
        ways = [w for w in entries[0] if all(w in e for e in entries)]
        means[kind] = {w: {m: statistics.mean(e[w][m] for e in entries) for m in ("amplitude_r", "phase_r", "cpu_s")} for w in ways}
    return means


def sweeps_of(way: str) -> int | None:
    """The number of sweeps in a way's name (``'flat + 20 (plateau 0)'``: 20), ``None`` for a start alone or LSQML."""
    parts = way.split(" + ")
    return int(parts[1].split()[0]) if len(parts) == 2 else None


def time_to_quality_figure(record: dict, path: Path) -> None:
    """Amplitude r and phase r against CPU s, one column per kind (means over its scans): each start through its sweeps, LSQML through its epochs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    means = kind_means(record["per_scan"])
    fig, axes = plt.subplots(2, len(means), figsize=(2.9 * len(means), 5.6), squeeze=False, sharey="row")
    styles = {"network": ("C0", "o"), "physics": ("C1", "s"), "flat": ("C2", "^")}
    for col, (kind, ways) in enumerate(means.items()):
        series = {}
        for way, m in ways.items():
            if way.startswith("LSQML"):
                series.setdefault("LSQML", []).append((int(way.split()[1]), m))
            elif sweeps_of(way) is not None:
                start, rest = way.split(" + ")
                series.setdefault(start + ("" if "(" not in rest else " " + rest[rest.index("("):]), []).append((sweeps_of(way), m))
        for row, metric in enumerate(("amplitude_r", "phase_r")):
            ax = axes[row, col]
            for name, points in series.items():
                points.sort(key=lambda point: point[0])
                color, marker = ("k", "x") if name == "LSQML" else styles.get(name.split()[0], ("C3", "v"))
                line = ":" if "(plateau" in name else "--" if "(step" in name else "-"
                ax.plot([m["cpu_s"] for _, m in points], [m[metric] for _, m in points], line,
                        marker=marker, ms=4, color=color, lw=1.1, mfc=color if "(plateau" not in name else "none",
                        label=(name if name == "LSQML" else f"{name} + sweeps") if col == 0 and row == 0 else None)
                for count, m in points:
                    ax.annotate(str(count), (m["cpu_s"], m[metric]), fontsize=5, color=color, xytext=(2, -6), textcoords="offset points")
            ax.set_xscale("log")
            ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
            ax.grid(True, which="both", lw=0.3)
            if col == 0:
                ax.set_ylabel(metric.replace("_r", " r"))
            if row == 1:
                ax.set_xlabel("CPU s, one thread")
        axes[0, col].set_title(f"{kind} ({sum(e['kind'] == kind for e in record['per_scan'].values())} scans)", fontsize=9)
    fig.legend(loc="lower center", ncol=6, fontsize=7, frameon=False)
    meta = record["meta"]
    fig.suptitle(f"Held-out scans ({Path(meta['heldout']).name}), means by kind: refinement sweeps (counts annotated) from each start "
                 f"against Pty-chi LSQML (epochs annotated);\ncommit {meta['commit']}, {meta['started_utc']}; dotted, open markers: "
                 "the same sweeps without the switch at the misfit's plateau; dashed: another step", fontsize=8)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


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
    parser.add_argument("--steps", nargs="+", type=float, default=[RefinementUpdate().step],
                        help="RefinementUpdate.step values, each a way of its own (the factor on each update)")
    parser.add_argument("--object-network", nargs="*", type=int, default=[], metavar="K",
                        help="also `--start flat --refine N --object-network K` for every N of --sweeps above K (way 'flat>netK + N')")
    parser.add_argument("--lsqml-epochs", nargs="*", type=int, default=[1, 3, 5, 10, 20])
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "figures" / "starts_heldout.json")
    parser.add_argument("--figure", type=Path, default=None, help="time-to-quality PNG (default: --json with .png)")
    parser.add_argument("--replot", action="store_true", help="draw --figure from the existing --json record, run nothing")
    args = parser.parse_args(argv)
    for option, field in (("--plateaus", "plateau"), ("--steps", "step")):  # refused before any scan is generated or any start computed
        try:
            values = list(dict.fromkeys(getattr(RefinementUpdate(**{field: value}), field) for value in getattr(args, field + "s")))
        except ValueError as error:
            parser.error(f"{option}: {error}")
        if len({f"{value:g}" for value in values}) < len(values):
            parser.error(f"{option}: {values} name the same way twice at 6 significant digits; give values that differ there")
        setattr(args, field + "s", values)
    for after in args.object_network:
        if after < 1 or not any(n > after for n in args.sweeps):
            parser.error(f"--object-network {after}: the sweep after which the object network runs, >= 1 and below one of "
                         f"--sweeps {args.sweeps}")
    args.object_network = list(dict.fromkeys(args.object_network))
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    figure = args.figure or args.json.with_suffix(".png")
    if args.replot:
        time_to_quality_figure(json.loads(args.json.read_text()), figure)
        print(f"wrote {figure}")
        return 0
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
                records = scan_records(network, scan, args.sweeps, work, args.starts, args.plateaus, args.steps, args.object_network)
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
            "starts": args.starts, "plateaus": args.plateaus, "steps": args.steps, "lsqml_epochs": args.lsqml_epochs,
            "object_network": args.object_network}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"meta": meta, "summary_markdown": table, "per_scan": per_scan}, indent=1))
    time_to_quality_figure(json.loads(args.json.read_text()), figure)
    print(table)
    print(f"wrote {args.json} and {figure}")
    print(f"{started}, commit {meta['commit']}, load {load_start[0]:.2f} -> {meta['load_average_end'][0]:.2f}, "
          f"{meta['wall_s'] / 60:.1f} min wall")
    return 0


if __name__ == "__main__":
    sys.exit(main())
