"""Where the pretrained model holds: held-out scans of every kind, the single pass against Pty-chi LSQML in CPU seconds.

    .venv/bin/python benchmarks/bench_pretrained.py                                  # shipped model 'pretrained'
    .venv/bin/python benchmarks/bench_pretrained.py --checkpoint /work/train/pinn64.ckpt
    .venv/bin/python benchmarks/bench_pretrained.py --checkpoint run.ckpt --kinds all --no-embedded --lsqml-epochs 1 5   # quick look

Scans (never training scans): ``ptycho.corpus`` held-out scans, ``--n-per-kind`` (2) of each kind ``seen`` (training
families, fresh seeds), ``probe`` (``kb_mirror``), ``object`` (``particles``), ``trajectory`` (``fermat``) and ``all``
(all three left out), drawn from ``--seed`` (1000) with ``--n-points`` (512) points, written once under ``--heldout``
and reused; plus the embedded ``datasets/sim_small.npz`` (islands, pinhole, raster: the families of ``seen``, but
from the older ``ptycho.simulate`` simulator, not ``ptycho.corpus``). Every scan is reconstructed by the physics
input alone (``use_network=False``), by the network's single pass (``groups='cover'`` and ``'all'``, U-Net in bf16 and
fp32) and by Pty-chi LSQML (``benchmarks/bench_ptychi.py``: known probe, fixed positions) at ``--lsqml-epochs``.
All ways are scored on the same pixels (the scan's probe coverage >= 5 % of its maximum,
``bench_ptychi.score_reconstruction``). From the LSQML curve of each scan it finds the CPU seconds LSQML needs to
reach the single pass's amplitude r and phase r (linear in CPU s between measured epochs) and the ratio, and judges
issue 26's targets on the ``all`` and ``seen`` kinds. Writes ``--json`` and two figures under ``--figures``.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import bench_ptychi  # noqa: E402
from benchmarks import bench_model  # noqa: E402
from benchmarks.bench_model import EMBEDDED, git_commit  # noqa: E402
from ptycho import corpus  # noqa: E402
from ptycho.scan_file import read_scan  # noqa: E402
from ptycho_torch.dset_loader_pt_mmap import PtychoDataset  # noqa: E402
from ptycho_torch.model.checkpoints import load_network  # noqa: E402
from ptycho_torch.model.pinn import choose_precision  # noqa: E402
from ptycho_torch.model.stitching import Canvas, reconstruct  # noqa: E402
from ptycho_torch.model.refine import PARALLEL, RefinementUpdate, refine  # noqa: E402

logger = logging.getLogger("bench_pretrained")

KINDS = tuple(corpus.HELD_OUT_KINDS)  # seen, probe, object, trajectory, all
EMBEDDED_KIND = "embedded"
LSQML_EPOCHS = (1, 3, 5, 10, 20, 50)
# The single pass as ptycho-reconstruct runs it by default: groups 'cover', precision 'auto' (bf16 where the CPU has it).
HEADLINE_GROUPS = "cover"
# Issue 26 item 7: on 'all' and 'seen' scans the single pass reaches these in at most RATIO_TARGET x LSQML's CPU s.
AMPLITUDE_TARGET, PHASE_TARGET, RATIO_TARGET = 0.9, 0.85, 0.5
TARGET_KINDS = ("all", "seen")
METRICS = ("amplitude_r", "phase_r", "nrmse", "phase_contrast")


# --- ways -------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Way:
    """One reconstruction of the network's pipeline: groups, U-Net arithmetic, with or without the network."""

    groups: str
    precision: str
    use_network: bool
    refine: int = 0  # error-reduction sweeps over the whole object after the pass (ptycho_torch.model.refine)
    parallel: bool = False  # the refinement's parallel update (refine.PARALLEL) instead of its default RefinementUpdate

    @property
    def name(self) -> str:
        if not self.use_network:
            base = f"physics input ({self.groups})"
        else:
            base = f"single pass ({self.groups}, {self.precision})"
        return base if not self.refine else f"{base} + refine {self.refine}{' (parallel)' if self.parallel else ''}"


def model_ways(precisions=("bf16", "fp32"), groups=("cover", "all"), refinements=(), headline_precision="bf16",
               parallel_refinements=()) -> list[Way]:
    """Physics input on each group selection, the single pass for each selection and precision, then the headline
    pass (cover) and the physics input (cover) each followed by each number of refinement sweeps (the default
    update), and by each of ``parallel_refinements`` with the parallel update."""
    ways = [Way(g, "fp32", False) for g in groups] + [Way(g, p, True) for g in groups for p in precisions]
    for n_sweeps, parallel in [*((n, False) for n in refinements), *((n, True) for n in parallel_refinements)]:
        ways += [Way(HEADLINE_GROUPS, headline_precision, True, n_sweeps, parallel), Way(HEADLINE_GROUPS, "fp32", False, n_sweeps, parallel)]
    return ways


def lsqml_name(epochs: int) -> str:
    return f"LSQML {epochs} epochs"


# --- scans ------------------------------------------------------------------------------------------

def held_out_scans(directory: Path, n_per_kind: int, seed: int, n_points: int, kinds=KINDS) -> dict[str, list[Path]]:
    """``ptycho.corpus`` held-out scans per kind under ``directory`` (written once, reused when its recipes match)."""
    wanted = corpus.held_out_recipes(n_per_kind, seed, kinds=tuple(kinds), n_points=n_points)
    names = {f"heldout-{kind}-{i:02d}.npz": r for kind, group in wanted.items() for i, r in enumerate(group)}
    try:
        present = corpus.read_recipes(directory)
    except (FileNotFoundError, json.JSONDecodeError, KeyError):
        present = {}
    if any(present.get(name) != r or not (directory / name).is_file() for name, r in names.items()):
        logger.info("writing %d held-out scans to %s", len(names), directory)
        corpus.write_held_out(directory, n_per_kind, seed, kinds=tuple(kinds), n_points=n_points)
    return {kind: [directory / f"heldout-{kind}-{i:02d}.npz" for i in range(len(group))] for kind, group in wanted.items()}


def training_seeds(record: dict | None) -> tuple[set[int], dict]:
    """Seeds of the model's training scans, from its training record, else the shipped recipe (``pretrained.build.RECIPE``)."""
    from ptycho_torch.pretrained.build import RECIPE

    source = "training record" if record and "recipe" in record else "ptycho_torch.pretrained.build.RECIPE (no training record)"
    recipe = (record or {}).get("recipe", RECIPE)["corpus"]
    seeds = {r.seed for r in corpus.training_recipes(recipe["n_scans"], recipe["seed"], n_points=recipe["n_points"], N=recipe["N"])}
    return seeds, {"source": source, **recipe}


def check_not_training(scans: dict[str, list[Path]], heldout_dir: Path, seeds: set[int]) -> dict:
    """Refuse a held-out scan drawn from a training seed; return each scan's recipe summary."""
    recipes = corpus.read_recipes(heldout_dir)
    summary = {}
    for kind, paths in scans.items():
        for path in paths:
            r = recipes[path.name]
            if r.seed in seeds:
                raise RuntimeError(f"{path} was drawn from training seed {r.seed}: it is a training scan")
            summary[str(path)] = {"kind": kind, "seed": r.seed, "probe": r.probe, "object": r.object, "trajectory": r.trajectory,
                                  "dose": r.dose, "n_points": r.n_points}
    return summary


# --- reconstructions ----------------------------------------------------------------------------------

def build_dataset(network, scan: Path, data_dir: Path, n_points: int) -> tuple[PtychoDataset, float, float]:
    """The scan's dataset (memory map and grouping, one group per point) in a fresh directory; CPU and wall seconds."""
    started_cpu, started_wall = time.process_time(), time.perf_counter()
    dataset = PtychoDataset(scan, network.data_config, network.model_config,
                            dataclasses.replace(network.training_config, n_groups=n_points), data_dir=data_dir, progress=False)
    return dataset, time.process_time() - started_cpu, time.perf_counter() - started_wall


def run_model_way(network, dataset, way: Way, truth_shape):
    """The stitched ``Reconstruction`` of ``way`` on ``truth``'s grid; CPU and wall seconds of the reconstruction only."""
    network.precision = way.precision
    started_cpu, started_wall = time.process_time(), time.perf_counter()
    result = reconstruct(network, dataset, canvas=Canvas(truth_shape, (0, 0)), groups=way.groups, use_network=way.use_network,
                         progress=False)
    result = refine(result, dataset, way.refine, update=PARALLEL if way.parallel else RefinementUpdate(), progress=False)
    return result, time.process_time() - started_cpu, time.perf_counter() - started_wall


def model_records(network, scan: Path, ways: list[Way], work: Path, n_points: int) -> tuple[dict, dict]:
    """Every way of ``ways`` on one scan, scored on the scan's probe coverage; records and objects."""
    truth = read_scan(scan, load_diffraction=False).objectGuess
    loaded = bench_ptychi.load_scan(scan)
    dataset, dataset_cpu, dataset_wall = build_dataset(network, scan, work / f"memmap-{scan.stem}", n_points)
    records, objects = {}, {}
    for way in ways:
        load_before = os.getloadavg()[0]
        result, cpu_s, wall_s = run_model_way(network, dataset, way, truth.shape)
        obj = result.object
        stitched_mask = bench_model.score(result, truth)  # bench_model's scoring: the stitching's own coverage as the mask
        records[way.name] = {
            **bench_ptychi.score_reconstruction(obj, loaded), "way": way.name, "groups": way.groups,
            "scores_on_stitching_mask": {k: v for k, v in stitched_mask.items() if k in METRICS},
            "precision": way.precision if way.use_network else None, "use_network": way.use_network,
            "reconstruct_cpu_s": cpu_s, "reconstruct_wall_s": wall_s, "dataset_cpu_s": dataset_cpu, "dataset_wall_s": dataset_wall,
            "cpu_s": dataset_cpu + cpu_s, "load_average_1min_before": load_before, "load_average_1min_after": os.getloadavg()[0],
            "groups_in_dataset": len(dataset),
        }
        objects[way.name] = obj
    return records, objects


def warm_up_network(network, scan: Path, work: Path, n_points: int) -> None:
    """One untimed dataset and pass per precision, so the first timed scan pays no one-off start-up."""
    dataset, _, _ = build_dataset(network, scan, work / "memmap-warm-up", n_points)
    truth_shape = read_scan(scan, load_diffraction=False).objectGuess.shape
    for precision in ("bf16", "fp32"):
        run_model_way(network, dataset, Way(HEADLINE_GROUPS, precision, True), truth_shape)


def lsqml_records(scan: Path, epochs: list[int], settings: bench_ptychi.PtychiSettings, objects_dir: Path) -> dict:
    """``bench_ptychi.run_one`` at each epoch count: a fresh LSQML reconstruction each, known probe, fixed positions."""
    return {lsqml_name(e): dict(bench_ptychi.run_one(scan, "lsqml", e, settings, objects_dir), way=lsqml_name(e)) for e in epochs}


# --- time to quality ------------------------------------------------------------------------------------

def lsqml_cpu_to_reach(curve: list[dict], amplitude_r: float, phase_r: float) -> dict:
    """CPU s LSQML needs to reach ``amplitude_r`` and ``phase_r`` together, from its records at increasing epochs.

    The first measured epoch count whose amplitude r and phase r are both at least the targets brackets the
    crossing with the one before; within the bracket each metric is interpolated linearly in CPU s and the later
    of the two crossings is taken. ``status``: ``interpolated``; ``at most first`` (the first epoch count already
    reaches both: ``cpu_s`` is an upper bound); ``not reached`` (no epoch count does: ``cpu_s`` is None and the
    last CPU s is a lower bound).
    """
    curve = sorted(curve, key=lambda r: r["epochs"])
    for j, record in enumerate(curve):
        if record["amplitude_r"] >= amplitude_r and record["phase_r"] >= phase_r:
            if j == 0:
                return {"status": "at most first", "cpu_s": record["cpu_s"], "epochs": [record["epochs"]]}
            before = curve[j - 1]
            fraction = 0.0
            for key, target in (("amplitude_r", amplitude_r), ("phase_r", phase_r)):
                if before[key] < target:
                    fraction = max(fraction, (target - before[key]) / (record[key] - before[key]))
            cpu_s = before["cpu_s"] + fraction * (record["cpu_s"] - before["cpu_s"])
            return {"status": "interpolated", "cpu_s": cpu_s, "epochs": [before["epochs"], record["epochs"]]}
    return {"status": "not reached", "cpu_s": None, "epochs": [curve[-1]["epochs"]] if curve else [],
            "lower_bound_cpu_s": curve[-1]["cpu_s"] if curve else None}


def time_to_quality(record: dict, curve: list[dict]) -> dict:
    """LSQML's CPU s to reach ``record``'s amplitude and phase r, and the ratio of the record's CPU s (dataset + pass) to it."""
    reach = lsqml_cpu_to_reach(curve, record["amplitude_r"], record["phase_r"])
    # each metric alone (LSQML's amplitude r need not rise with epochs: at low dose it can fall while the phase r rises)
    reach["phase_only"] = lsqml_cpu_to_reach(curve, -np.inf, record["phase_r"])
    reach["amplitude_only"] = lsqml_cpu_to_reach(curve, record["amplitude_r"], -np.inf)
    if reach["cpu_s"] is not None:
        reach["ratio"] = record["cpu_s"] / reach["cpu_s"]
        reach["ratio_bound"] = "at least" if reach["status"] == "at most first" else "equal"
    else:
        reach["ratio"] = record["cpu_s"] / reach["lower_bound_cpu_s"] if reach.get("lower_bound_cpu_s") else None
        reach["ratio_bound"] = "at most"
    return reach


def target_verdict(record: dict) -> dict:
    """Issue 26's target on one scan: amplitude r >= 0.9, phase r >= 0.85, CPU s <= 0.5 x LSQML's to the same quality."""
    quality = record["amplitude_r"] >= AMPLITUDE_TARGET and record["phase_r"] >= PHASE_TARGET
    reach = record["lsqml_to_reach"]
    ratio = reach.get("ratio")
    # 'at most first': the true ratio is at least the one shown, so only a ratio above 0.5 decides (not fast);
    # 'not reached': the true ratio is at most the one shown, so only a ratio <= 0.5 decides (fast). None: undecided.
    if ratio is None:
        fast = None
    elif reach["ratio_bound"] == "at least":
        fast = False if ratio > RATIO_TARGET else None
    elif reach["ratio_bound"] == "at most":
        fast = True if ratio <= RATIO_TARGET else None
    else:
        fast = ratio <= RATIO_TARGET
    return {"quality": quality, "fast": fast, "met": bool(quality and fast)}


# --- tables -------------------------------------------------------------------------------------------------

def _cell(values, digits: int) -> str:
    values = np.asarray([v for v in values if v is not None], dtype=float)
    if values.size == 0:
        return "-"
    if values.size == 1:
        return f"{values[0]:.{digits}f}"
    return f"{values.mean():.{digits}f} ({values.min():.{digits}f}-{values.max():.{digits}f})"


def summary_table(per_scan: dict, kind_of: dict, way_names: list[str]) -> str:
    """Per kind and way: mean (min-max) of the scores, the CPU s, and LSQML's CPU s to the same quality with the ratio."""
    lines = ["| kind | way | scans | amp r | phase r | NRMSE | phase contrast | CPU s (pass) | CPU s (dataset) | "
             "LSQML CPU s to same quality | ratio |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for kind in dict.fromkeys(kind_of.values()):
        scans = [s for s, k in kind_of.items() if k == kind]
        for way in way_names:
            records = [per_scan[s]["ways"][way] for s in scans if way in per_scan[s]["ways"]]
            if not records:
                continue
            lsqml = way.startswith("LSQML")
            reach = [r.get("lsqml_to_reach", {}) for r in records]
            cells = [_cell([r[m] for r in records], 3) for m in METRICS]
            cells.append(_cell([r["reconstruct_cpu_s"] if not lsqml else r["cpu_s"] for r in records], 2))
            cells.append("-" if lsqml else _cell([r["dataset_cpu_s"] for r in records], 2))
            if lsqml:
                cells += ["-", "-"]
            else:
                unreached = sum(x.get("status") == "not reached" for x in reach)
                cells.append(_cell([x.get("cpu_s") for x in reach], 1) + (f" ({unreached} not reached)" if unreached else ""))
                cells.append(_cell([x.get("ratio") if x.get("status") != "not reached" else None for x in reach], 2))
            lines.append(f"| {kind} | {way} | {len(records)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _ratio_text(reach: dict) -> str:
    if reach.get("ratio") is None:
        return "-"
    prefix = {"at least": ">= ", "at most": "<= ", "equal": ""}[reach["ratio_bound"]]
    return f"{prefix}{reach['ratio']:.2f}"


def _reach_text(reach: dict) -> str:
    if reach["status"] == "not reached":
        return f"not in {reach['epochs'][0]} epochs (> {reach['lower_bound_cpu_s']:.1f})"
    if reach["status"] == "at most first":
        return f"<= {reach['cpu_s']:.1f} ({reach['epochs'][0]} epoch)"
    return f"{reach['cpu_s']:.1f} ({reach['epochs'][0]}-{reach['epochs'][1]} epochs)"


def per_scan_table(per_scan: dict, headline: str) -> str:
    """The headline single pass per scan against LSQML's time to the same quality, with the target verdict."""
    lines = [f"| scan | kind | families (probe, object, trajectory) | photons per pattern | amp r | phase r | CPU s (dataset + pass) | "
             f"LSQML CPU s to same quality | ratio | LSQML CPU s to same phase r alone | "
             f"amp r >= {AMPLITUDE_TARGET}, phase r >= {PHASE_TARGET} | ratio <= {RATIO_TARGET} |",
             "|---|---|---|---:|---:|---:|---:|---|---:|---|---|---|"]
    for scan, entry in per_scan.items():
        r = entry["ways"][headline]
        verdict = target_verdict(r)
        fast = {True: "yes", False: "no", None: "undecided"}[verdict["fast"]]
        dose = entry["recipe"].get("dose")
        lines.append(f"| {Path(scan).stem} | {entry['kind']} | {entry['families']} | {f'{dose:.2g}' if dose else '-'} | {r['amplitude_r']:.3f} | {r['phase_r']:.3f} | "
                     f"{r['dataset_cpu_s']:.2f} + {r['reconstruct_cpu_s']:.2f} | {_reach_text(r['lsqml_to_reach'])} | "
                     f"{_ratio_text(r['lsqml_to_reach'])} | {_reach_text(r['lsqml_to_reach']['phase_only'])} | "
                     f"{'yes' if verdict['quality'] else 'no'} | {fast} |")
    return "\n".join(lines)


def targets(per_scan: dict, headline: str) -> dict:
    """Per target kind: whether every scan of it meets issue 26's target, with each scan's verdict."""
    verdicts = {}
    for kind in TARGET_KINDS:
        scans = {Path(s).stem: target_verdict(e["ways"][headline]) for s, e in per_scan.items() if e["kind"] == kind}
        if scans:
            verdicts[kind] = {"met": all(v["met"] for v in scans.values()), "scans": scans}
    return verdicts


# --- figures -------------------------------------------------------------------------------------------------

def time_to_quality_figure(per_scan: dict, kinds: list[str], model_way_names: list[str], path: Path) -> None:
    """Amplitude r (top) and phase r (bottom) against CPU s, one column per kind: LSQML lines, our ways as markers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.lines
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    refined = [name for name in model_way_names if " + refine " in name and not name.endswith("(parallel)")]  # the table has those
    model_way_names = [name for name in model_way_names if " + refine " not in name]
    markers = {name: m for name, m in zip(model_way_names, "os^vDPX*")}
    fig, axes = plt.subplots(2, len(kinds), figsize=(3.2 * len(kinds), 6.4), squeeze=False, sharey="row")
    for col, kind in enumerate(kinds):
        scans = [(s, e) for s, e in per_scan.items() if e["kind"] == kind]
        for i, (scan, entry) in enumerate(scans):
            color = f"C{i}"
            curve = sorted((r for r in entry["ways"].values() if r["way"].startswith("LSQML")), key=lambda r: r["epochs"])
            for row, metric in enumerate(("amplitude_r", "phase_r")):
                ax = axes[row, col]
                if curve:
                    ax.plot([r["cpu_s"] for r in curve], [r[metric] for r in curve], "-", color=color, lw=1.2,
                            label=f"{Path(scan).stem}: LSQML {curve[0]['epochs']}-{curve[-1]['epochs']} epochs" if row == 0 else None)
                    for r in curve:
                        ax.annotate(str(r["epochs"]), (r["cpu_s"], r[metric]), fontsize=5, color=color, xytext=(1, 1),
                                    textcoords="offset points")
                for name in model_way_names:
                    r = entry["ways"].get(name)
                    if r is not None:
                        ax.plot(r["cpu_s"], r[metric], markers[name], color=color, ms=5, mfc="none" if not r["use_network"] else color)
                for start in dict.fromkeys(name.split(" + refine ")[0] for name in refined):
                    series = [entry["ways"][start]] + sorted((entry["ways"][n] for n in refined if n.startswith(start + " + refine ")
                                                              and n in entry["ways"]), key=lambda r: r["cpu_s"])
                    if start in entry["ways"] and len(series) > 1:
                        ax.plot([r["cpu_s"] for r in series], [r[metric] for r in series], "--" if series[0]["use_network"] else ":",
                                marker=".", color=color, lw=0.9, ms=3)
        for row, (metric, label) in enumerate((("amplitude_r", "amplitude r"), ("phase_r", "phase r"))):
            ax = axes[row, col]
            ax.set_xscale("log")
            ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
            ax.grid(True, which="both", lw=0.3)
            ax.axhline(AMPLITUDE_TARGET if metric == "amplitude_r" else PHASE_TARGET, color="k", lw=0.6, ls=":")
            if col == 0:
                ax.set_ylabel(label)
            if row == 1:
                ax.set_xlabel("CPU s (ours: dataset + pass)")
        axes[0, col].set_title(kind, fontsize=9)
        axes[0, col].legend(fontsize=5, loc="lower right")
    handles = [matplotlib.lines.Line2D([], [], ls="none", marker=markers[name], color="0.3", mfc="none" if name.startswith("physics") else "0.3",
                                       label=name) for name in model_way_names]
    fig.legend(handles=handles, loc="lower center", ncol=3, fontsize=7, frameon=False)
    fig.suptitle("Held-out scans: quality against CPU seconds, one torch thread. Lines: Pty-chi LSQML (epoch counts annotated);\n"
                 "markers: the pretrained model's single pass (filled) and its physics input (open); dashed (dotted): the pass (physics input)\n"
                 "then 5, 10, 20, 40 refinement sweeps (64 points per update, momentum 0.5); horizontal dotted lines: issue 26's targets", fontsize=8)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def example_figure(scan: Path, entry: dict, objects: dict, headline: str, physics: str, lsqml_objects: dict, path: Path) -> None:
    """Truth, the single pass, the physics input and LSQML at the epoch counts bracketing the single pass's CPU s."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from scipy import ndimage

    truth = read_scan(scan, load_diffraction=False).objectGuess
    ours = entry["ways"][headline]
    curve = sorted((r for r in entry["ways"].values() if r["way"].startswith("LSQML")), key=lambda r: r["epochs"])
    below = [r for r in curve if r["cpu_s"] <= ours["cpu_s"]]
    above = [r for r in curve if r["cpu_s"] > ours["cpu_s"]]
    chosen = ([below[-1]] if below else []) + ([above[0]] if above else [])
    panels = [("truth", truth, None), (headline, objects[headline], ours), (physics, objects[physics], entry["ways"][physics])]
    panels += [(r["way"], lsqml_objects[r["way"]], r) for r in chosen]
    mask = ndimage.binary_erosion(bench_ptychi.covered_region(bench_ptychi.load_scan(scan)), iterations=8)
    phase_range = np.percentile(np.angle(truth[mask]), [1, 99])
    fig, axes = plt.subplots(2, len(panels), figsize=(3.0 * len(panels), 6.4), squeeze=False)
    for col, (title, image, scores) in enumerate(panels):
        values = image[mask].astype(np.complex128)
        alpha = np.vdot(values, truth[mask]) / np.vdot(values, values) if scores is not None else 1.0  # one complex scalar
        shown = np.where(mask, alpha * image, np.nan)
        label = title if scores is None else (f"{title}\namp r {scores['amplitude_r']:.3f}, phase r {scores['phase_r']:.3f}\n"
                                              f"{scores['cpu_s']:.2f} CPU s")
        axes[0, col].imshow(np.abs(shown), cmap="gray")
        axes[1, col].imshow(np.angle(shown), cmap="gray", vmin=phase_range[0], vmax=phase_range[1])
        axes[0, col].set_title(label, fontsize=7)
        for row in (0, 1):
            axes[row, col].set_xticks([])
            axes[row, col].set_yticks([])
    axes[0, 0].set_ylabel("amplitude")
    axes[1, 0].set_ylabel("phase")
    fig.suptitle(f"{scan.stem} ({entry['families']}; probe, object and trajectory families never seen in training): "
                 "one complex scalar fitted, covered region eroded by 8 px", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)


# --- CLI -------------------------------------------------------------------------------------------------------

def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default="pretrained", help="checkpoint file or shipped model name (default: 'pretrained')")
    parser.add_argument("--heldout", type=Path, default=None,
                        help="held-out scan directory (default: benchmarks/results/heldout-seed<S>-n<K>[-p<P>])")
    parser.add_argument("--n-per-kind", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1000)
    parser.add_argument("--n-points", type=int, default=512)
    parser.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS))
    parser.add_argument("--no-embedded", action="store_true", help="leave out datasets/sim_small.npz")
    parser.add_argument("--lsqml-epochs", nargs="*", type=int, default=list(LSQML_EPOCHS), help="empty: no Pty-chi")
    parser.add_argument("--precisions", nargs="+", choices=("bf16", "fp32"), default=["bf16", "fp32"])
    parser.add_argument("--refine", nargs="*", type=int, default=[5, 10, 20, 40],
                        help="refinement sweeps (default update) after the headline pass and after the physics input alone (empty: none)")
    parser.add_argument("--refine-parallel", nargs="*", type=int, default=[20],
                        help="the same with the parallel update (refine.PARALLEL, the update before 2026-12-07), for the ablation")
    parser.add_argument("--groups", nargs="+", choices=("cover", "all"), default=["cover", "all"])
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: CPU seconds comparable with Pty-chi's)")
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "figures" / "pretrained_heldout.json")
    parser.add_argument("--figures", type=Path, default=ROOT / "benchmarks" / "figures", help="directory of the two PNGs")
    parser.add_argument("--verbose", action="store_true")
    return parser.parse_args(argv)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logger.setLevel(logging.INFO)
    warnings.filterwarnings("ignore", message="Converting a tensor with requires_grad=True to a scalar")
    torch.set_num_threads(args.threads)
    started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    load_start = os.getloadavg()
    started_wall = time.perf_counter()

    from ptycho_torch.pretrained import resolve_checkpoint

    checkpoint = resolve_checkpoint(args.checkpoint)
    record_path = Path(checkpoint).with_suffix(".json")
    training_record = json.loads(record_path.read_text()) if record_path.is_file() else None
    network = load_network(checkpoint)
    headline_precision = choose_precision("auto", "cpu")
    headline = Way(HEADLINE_GROUPS, headline_precision, True).name
    precisions = list(dict.fromkeys([headline_precision, *args.precisions]))
    ways = model_ways(precisions, args.groups if HEADLINE_GROUPS in args.groups else [HEADLINE_GROUPS, *args.groups], args.refine,
                      headline_precision, args.refine_parallel)
    physics = Way(HEADLINE_GROUPS, "fp32", False).name

    heldout = args.heldout or ROOT / "benchmarks" / "results" / (
        f"heldout-seed{args.seed}-n{args.n_per_kind}" + (f"-p{args.n_points}" if args.n_points != 512 else ""))
    scans = held_out_scans(heldout, args.n_per_kind, args.seed, args.n_points, args.kinds)
    seeds, training_corpus = training_seeds(training_record)
    recipes = check_not_training(scans, heldout, seeds)
    if not args.no_embedded:
        scans[EMBEDDED_KIND] = [EMBEDDED]
        recipes[str(EMBEDDED)] = {"kind": EMBEDDED_KIND, "probe": "pinhole", "object": "islands", "trajectory": "raster",
                                  "simulator": "ptycho.simulate preset 'embedded' (the older simulator, seed 0)", "n_points": 512,
                                  "dose": 1e6}
    settings = bench_ptychi.PtychiSettings(threads=args.threads)
    epochs = sorted(set(args.lsqml_epochs))
    work = Path(tempfile.mkdtemp(prefix="bench_pretrained_"))
    per_scan, kept_objects = {}, {}
    try:
        first = next(iter(scans.values()))[0]
        warm_up_network(network, first, work, args.n_points)
        if epochs:
            bench_ptychi.warm_up(first, "lsqml", settings)
        example = scans.get("all", [None])[0]
        for kind, paths in scans.items():
            for scan in paths:
                recipe = recipes[str(scan)]
                records, objects = model_records(network, scan, ways, work, args.n_points)
                lsqml = lsqml_records(scan, epochs, settings, work / "lsqml") if epochs else {}
                curve = list(lsqml.values())
                if curve:
                    for record in records.values():
                        record["lsqml_to_reach"] = time_to_quality(record, curve)
                per_scan[str(scan)] = {"kind": kind, "families": f"{recipe['probe']}, {recipe['object']}, {recipe['trajectory']}",
                                       "recipe": recipe, "ways": {**records, **lsqml}}
                if scan == example:
                    kept_objects = {**objects, **{name: np.load(r["object_path"]) for name, r in lsqml.items()}}
                ours = records[headline]
                logger.info("%s (%s): single pass amp r %.3f phase r %.3f in %.2f CPU s; LSQML to reach it: %s", scan.name, kind,
                            ours["amplitude_r"], ours["phase_r"], ours["cpu_s"],
                            _reach_text(ours["lsqml_to_reach"]) if curve else "-")
    finally:
        shutil.rmtree(work, ignore_errors=True)

    for entry in per_scan.values():  # the objects were scratch
        for record in entry["ways"].values():
            record.pop("object_path", None)
    kind_of = {s: e["kind"] for s, e in per_scan.items()}
    way_names = [w.name for w in ways] + [lsqml_name(e) for e in epochs]
    summary = summary_table(per_scan, kind_of, way_names)
    verdicts = targets(per_scan, headline) if epochs else {}
    if epochs:
        import ptychi

    meta = {
        "started_utc": started, "finished_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "wall_s": time.perf_counter() - started_wall, "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "commit": git_commit(), "load_average_start": load_start, "load_average_end": os.getloadavg(), "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(), "torch": torch.__version__, "ptychi": sys.modules["ptychi"].__version__ if epochs else None,
        "checkpoint": str(checkpoint), "checkpoint_sha256": _sha256(Path(checkpoint)), "training_record": training_record,
        "training_corpus": training_corpus, "heldout_dir": str(heldout), "heldout_seed": args.seed, "n_per_kind": args.n_per_kind,
        "n_points": args.n_points, "lsqml_epochs": epochs, "ptychi_settings": dataclasses.asdict(settings),
        "headline_way": headline, "physics_way": physics,
        "scoring": "bench_ptychi.score_reconstruction for every way: probe coverage >= 5 % of its maximum, eroded 8 px, "
                   "registered within 8 px, one complex scalar fitted",
        "cpu_seconds": "time.process_time; ours: dataset_cpu_s (memory map + grouping) + reconstruct_cpu_s = cpu_s; "
                       "LSQML: building the task and running it (bench_ptychi)",
        "targets": {"amplitude_r": AMPLITUDE_TARGET, "phase_r": PHASE_TARGET, "ratio": RATIO_TARGET, "kinds": list(TARGET_KINDS)},
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"meta": meta, "summary_markdown": summary, "targets": verdicts, "per_scan": per_scan}, indent=1))
    print(summary, end="\n\n")
    if epochs:
        print(per_scan_table(per_scan, headline), end="\n\n")
        for kind, verdict in verdicts.items():
            print(f"target on '{kind}' (amp r >= {AMPLITUDE_TARGET}, phase r >= {PHASE_TARGET}, <= {RATIO_TARGET}x LSQML CPU s): "
                  f"{'MET' if verdict['met'] else 'NOT MET'} ({sum(v['met'] for v in verdict['scans'].values())} of {len(verdict['scans'])} scans)")
        model_names = [w.name for w in ways]
        time_to_quality_figure(per_scan, list(dict.fromkeys(kind_of.values())), model_names, args.figures / "pretrained_time_to_quality.png")
        if example is not None and kept_objects:
            example_figure(example, per_scan[str(example)], kept_objects, headline, physics, kept_objects,
                           args.figures / "pretrained_heldout_example.png")
    differences = [abs(r[m] - r["scores_on_stitching_mask"][m]) for e in per_scan.values() for r in e["ways"].values()
                   if "scores_on_stitching_mask" in r for m in ("amplitude_r", "phase_r")]
    if differences:
        print(f"scored on the stitching's own coverage instead (bench_model.score), our amp r and phase r move by at most "
              f"{max(differences):.4f}")
    print(f"\n{started}, commit {meta['commit']}, torch {meta['torch']}, ptychi {meta['ptychi']}, {meta['threads']} torch thread(s), "
          f"load average {load_start[0]:.2f} -> {meta['load_average_end'][0]:.2f} on {meta['cpu_count']} cores, "
          f"{meta['wall_s'] / 60:.1f} min wall; checkpoint {checkpoint}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
