"""Train PtychoPINN on simulated scans, reconstruct scans it never saw, and credit each part by ablation.

    .venv/bin/python benchmarks/bench_model.py                          # this package's defaults
    .venv/bin/python benchmarks/bench_model.py --truth-loss-weight 0    # physics loss only
    .venv/bin/python benchmarks/bench_model.py --ptychi-json benchmarks/results/ptychi_heldout.json
    .venv/bin/python benchmarks/bench_model.py --checkpoint run.ckpt --test-seed 3 --n-test 4   # fresh scans, no training

A corpus of ``--n-train`` simulated scans (``ptycho.simulate.corpus_settings``: other objects, doses
and positions than the held-out scans) trains the network through ``PtychoDataModule`` and
``build_trainer``, as ``ptycho-train`` does. Every held-out scan (``--n-test`` new ones and the
embedded ``datasets/sim_small.npz``, plus families of other objects) is then reconstructed four ways:
(a) the physics input alone, stitched; (b) the untrained network; (c) the trained network; (d) Pty-chi,
read from ``benchmarks/bench_ptychi.py --json ... --save-objects ...`` if given. Prints a Markdown table
and writes one JSON record and a figure under ``--out``. ``--checkpoint`` skips training and scores a
saved model; with ``--test-seed`` other than 2 the held-out scans are drawn afresh (a confirmation set
for settings chosen on the default held-out scans) and the embedded scan is left out.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.quality import reconstruction_quality  # noqa: E402
from ptycho.scan_file import read_scan  # noqa: E402
from ptycho.simulate import PRESETS as SIMULATION_PRESETS  # noqa: E402
from ptycho.simulate import corpus_settings, write_corpus  # noqa: E402
from ptycho_torch.config_params import DataConfig, InferenceConfig, ModelConfig, TrainingConfig  # noqa: E402
from ptycho_torch.dset_loader_pt_mmap import PtychoDataset  # noqa: E402
from ptycho_torch.model import PtychoPINN_Lightning  # noqa: E402
from ptycho_torch.model.stitching import Canvas, reconstruct  # noqa: E402
from ptycho_torch.model.training import PtychoDataModule, build_trainer, needs_ground_truth  # noqa: E402

logger = logging.getLogger("bench_model")

EMBEDDED = ROOT / "datasets" / "sim_small.npz"
TRAIN_SEED, TEST_SEED = 1, 2  # corpus seeds: the held-out scans share no object, dose or position draw with training
# Held-out object families: the training family (embedded preset) and two it never saw.
FAMILIES = {
    "islands": {},
    "fine islands": {"feature_size_px": 3.2},
    "strong phase": {"phase_scale_rad": 1.6},
}
PRESETS = {
    # this package: n_filters_scale 1, shared decoder, batch norm, 2-step physics input, corrected
    "default": dict(n_filters_scale=1, base_filters=16, epochs=10, batch_size=8, learning_rate=2e-3, truth_loss_weight=300.0,
                    cbam_encoder=False, use_shared_decoder=True, batch_norm=True),
    # PtychoPINN's model size (Ptychodus's n_filters_scale 2 at PtychoPINN's base width 32) and optimiser settings
    "upstream": dict(n_filters_scale=2, base_filters=32, epochs=10, batch_size=16, learning_rate=1e-3, truth_loss_weight=300.0,
                     cbam_encoder=True, use_shared_decoder=False, batch_norm=False),
}
WAYS = ("physics input", "untrained network", "trained network")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="default")
    parser.add_argument("--corpus", type=Path, default=ROOT / "benchmarks" / "results" / "corpus",
                        help="where the simulated scans are written (reused when present)")
    parser.add_argument("--n-train", type=int, default=24, help="training scans (512 points each; 24 since 2026-12-04, was 16)")
    parser.add_argument("--n-test", type=int, default=3, help="held-out scans per object family")
    parser.add_argument("--families", nargs="+", choices=sorted(FAMILIES), default=list(FAMILIES))
    for name in ("n_filters_scale", "base_filters", "epochs", "batch_size", "object_estimate_steps"):
        parser.add_argument(f"--{name.replace('_', '-')}", type=int)
    for name in ("learning_rate", "truth_loss_weight"):
        parser.add_argument(f"--{name.replace('_', '-')}", type=float)
    parser.add_argument("--generator-output", choices=["correction", "object"])
    parser.add_argument("--seed", type=int, default=0, help="network initialisation")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1: cheapest in CPU time on a shared machine)")
    parser.add_argument("--test-seed", type=int, default=TEST_SEED,
                        help="held-out corpus seed; another than the default draws fresh scans and leaves the embedded one out")
    parser.add_argument("--checkpoint", type=Path, help="score this saved model instead of training one")
    parser.add_argument("--ptychi-json", type=Path, help="bench_ptychi.py records of the same held-out scans (with --save-objects)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--tag", default=None)
    return parser.parse_args(argv)


def settings_of(args) -> dict:
    chosen = dict(PRESETS[args.preset])
    for name in ("n_filters_scale", "base_filters", "epochs", "batch_size", "learning_rate", "truth_loss_weight", "object_estimate_steps",
                 "generator_output"):
        if getattr(args, name) is not None:
            chosen[name] = getattr(args, name)
    chosen.setdefault("object_estimate_steps", ModelConfig.object_estimate_steps)
    chosen.setdefault("generator_output", ModelConfig.generator_output)
    return dict(chosen, seed=args.seed, threads=args.threads, n_train=args.n_train)


def configs(s: dict, train_file: Path):
    data = DataConfig(N=64, grid_size=(2, 2), K=7, nphotons=1e6, subsample_seed=42)
    model = ModelConfig(n_filters_scale=s["n_filters_scale"], base_filters=s["base_filters"], cbam_encoder=s["cbam_encoder"], use_shared_decoder=s["use_shared_decoder"],
                        batch_norm=s["batch_norm"], object_big=True, object_estimate_steps=s["object_estimate_steps"],
                        generator_output=s["generator_output"], truth_loss_weight=s["truth_loss_weight"])
    training = TrainingConfig(n_groups=512, epochs=s["epochs"], batch_size=s["batch_size"], learning_rate=s["learning_rate"],
                              scheduler="WarmupCosine", lr_warmup_epochs=0, lr_min_ratio=0.0,
                              device="cpu", num_workers=0, train_data_file=str(train_file), test_data_file=str(train_file))
    return data, model, training, InferenceConfig(batch_size=64)


def training_corpus(root: Path, n_train: int) -> Path:
    """``n_train`` training scans under ``root/train-<n>``, written once and reused."""
    train = root / f"train-{n_train}"
    if len(list(train.glob("*.npz"))) != n_train:
        write_corpus(train, corpus_settings(n_train, TRAIN_SEED, SIMULATION_PRESETS["embedded"]))
    return train


def held_out_scans(root: Path, n_test: int, families: list[str], test_seed: int = TEST_SEED) -> dict[str, list[Path]]:
    """Held-out scans per family under ``root/test-<family>-<n>[-seed<s>]``, written once and reused.

    With the default seed the islands family also holds the embedded scan.
    """
    base, fresh = SIMULATION_PRESETS["embedded"], test_seed != TEST_SEED
    tests = {}
    for family in families:
        directory = root / (f"test-{family.replace(' ', '-')}-{n_test}" + (f"-seed{test_seed}" if fresh else ""))
        if len(list(directory.glob("*.npz"))) != n_test:
            write_corpus(directory, corpus_settings(n_test, test_seed, dataclasses.replace(base, **FAMILIES[family])), prefix="test")
        embedded = [] if fresh or family != "islands" else [EMBEDDED]
        tests[family] = sorted(directory.glob("*.npz")) + embedded
    return tests


def cpu_seconds() -> float:
    return time.process_time()


def score(result, truth: np.ndarray) -> dict:
    quality = reconstruction_quality(result.object, truth, result.coverage > 0.05 * result.coverage.max())
    return {"amplitude_r": quality.amplitude_r, "phase_r": quality.phase_r, "nrmse": quality.nrmse,
            "phase_contrast": quality.phase_contrast, "shift_px": list(quality.shift_px)}


def reconstruct_held_out(models: dict, scan_path: Path, data, model_config, training, work: Path) -> tuple[dict, dict]:
    """Each way of :data:`WAYS` on one scan: scores with CPU seconds, and the objects."""
    dataset = PtychoDataset(scan_path, data, model_config, dataclasses.replace(training, n_groups=512), data_dir=work / "memmap-test", progress=False)
    truth = read_scan(scan_path, load_diffraction=False).objectGuess
    records, objects = {}, {}
    for way in WAYS:
        model = models["untrained" if way == "untrained network" else "trained"]
        started = cpu_seconds()
        result = reconstruct(model, dataset, canvas=Canvas(truth.shape, (0, 0)), progress=False, use_network=way != "physics input")
        records[way] = dict(score(result, truth), reconstruct_cpu_s=cpu_seconds() - started)
        objects[way] = result.object
    return records, objects


def ptychi_records(path: Path | None) -> list[dict]:
    if path is None:
        return []
    return json.loads(path.read_text())["records"]


def summary_rows(by_scan: dict, ptychi: list[dict], family_of: dict) -> list[dict]:
    """One row per family and way (and Pty-chi engine/epochs): mean and range over the family's scans."""
    rows = []
    for family in dict.fromkeys(family_of.values()):
        scans = [scan for scan, f in family_of.items() if f == family]
        ways = [(way, [by_scan[scan][way] for scan in scans]) for way in WAYS]
        for engine, epochs in sorted({(r["engine"], r["epochs"]) for r in ptychi if r["scan"] in scans}):
            found = [r for r in ptychi if r["scan"] in scans and (r["engine"], r["epochs"]) == (engine, epochs)]
            ways.append((f"Pty-chi {engine.upper() if engine != 'epie' else 'ePIE'} {epochs} epochs",
                         [dict(r, reconstruct_cpu_s=r["cpu_s"]) for r in found]))
        for way, records in ways:
            row = {"family": family, "way": way, "scans": len(records)}
            for key in ("amplitude_r", "phase_r", "nrmse", "phase_contrast", "reconstruct_cpu_s"):
                values = np.array([r[key] for r in records])
                row[key] = (float(values.mean()), float(values.min()), float(values.max()))
            rows.append(row)
    return rows


def markdown(rows: list[dict]) -> str:
    lines = ["| held-out family | reconstruction | scans | amplitude r | phase r | NRMSE | phase contrast | reconstruction CPU s |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        cells = [f"{m:.4f} ({lo:.4f}-{hi:.4f})" if key != "reconstruct_cpu_s" else f"{m:.1f} ({lo:.1f}-{hi:.1f})"
                 for key in ("amplitude_r", "phase_r", "nrmse", "phase_contrast", "reconstruct_cpu_s")
                 for m, lo, hi in [row[key]]]
        lines.append(f"| {row['family']} | {row['way']} | {row['scans']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def train(s: dict, train_dir: Path, work: Path, checkpoint: Path, data, model_config, training, inference) -> tuple:
    """The untrained and the trained network (saved to ``checkpoint``) and the run's record: settings and cost."""
    dataset = PtychoDataset(train_dir, data, model_config, training, data_dir=work / "memmap", ground_truth=needs_ground_truth(model_config), progress=False)
    untrained = PtychoPINN_Lightning(model_config, data, training, inference, seed=s["seed"])
    model = PtychoPINN_Lightning(model_config, data, training, inference, seed=s["seed"])
    module = PtychoDataModule(dataset, data, model_config, training)
    trainer = build_trainer(training, work / "run", progress=False)
    load_before, started_wall, started_cpu = os.getloadavg(), time.perf_counter(), cpu_seconds()
    trainer.fit(model, datamodule=module)
    train_cpu, train_wall, load_after = cpu_seconds() - started_cpu, time.perf_counter() - started_wall, os.getloadavg()
    group_steps = len(module.train_indices) * s["epochs"]
    logger.info("trained %d group steps in %.1f CPU s", group_steps, train_cpu)
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    trainer.save_checkpoint(checkpoint, weights_only=True)  # for re-timing and figures
    cost = {
        "settings": s, "train_scans": sorted(p.name for p in train_dir.glob("*.npz")), "train_groups": len(module.train_indices),
        "validation_groups": len(module.val_indices), "group_steps": group_steps,
        "train_cpu_s": train_cpu, "train_wall_s": train_wall, "train_groups_per_cpu_s": group_steps / train_cpu,
        "loadavg_before_training": load_before, "loadavg_after_training": load_after,
        "final_metrics": {k: float(v) for k, v in trainer.callback_metrics.items()},
    }
    return untrained, model, cost


def load_trained(path: Path, seed: int) -> tuple:
    """A saved model and an untrained one of the same configuration, initialised from ``seed``."""
    model = PtychoPINN_Lightning.load_from_checkpoint(path, map_location="cpu")
    untrained = PtychoPINN_Lightning(model.model_config, model.data_config, model.training_config, model.inference_config, seed=seed)
    return untrained, model.eval(), {"settings": {"seed": seed}, "checkpoint": str(path), "model_config": dataclasses.asdict(model.model_config)}


def main(argv=None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    logger.setLevel(logging.INFO)
    s = settings_of(args)
    torch.set_num_threads(s["threads"])
    tests = held_out_scans(args.corpus, args.n_test, args.families, args.test_seed)
    train_dir = training_corpus(args.corpus, args.n_train) if args.checkpoint is None else None
    data, model_config, training, inference = configs(s, sorted(train_dir.glob("*.npz"))[0] if train_dir else EMBEDDED)
    tag = args.tag or f"{args.preset}_seed{s['seed']}"
    work = Path(tempfile.mkdtemp(prefix="bench_model_"))
    try:  # memory maps and caches are scratch: removed afterwards
        if args.checkpoint is None:
            untrained, model, cost = train(s, train_dir, work, args.out / f"bench_model_{tag}.ckpt", data, model_config, training, inference)
        else:
            untrained, model, cost = load_trained(args.checkpoint, s["seed"])
            data, model_config = model.data_config, model.model_config
        by_scan, objects, family_of = {}, {}, {}
        for family, scans in tests.items():
            for scan in scans:
                family_of[str(scan)] = family
                by_scan[str(scan)], objects[str(scan)] = reconstruct_held_out({"trained": model, "untrained": untrained}, scan, data, model_config, training, work)
                logger.info("%s (%s): %s", scan.name, family, {w: (round(r["amplitude_r"], 4), round(r["phase_r"], 4)) for w, r in by_scan[str(scan)].items()})
        ptychi = ptychi_records(args.ptychi_json)
        rows = summary_rows(by_scan, ptychi, family_of)
        record = {
            **cost, "threads": s["threads"], "test_seed": args.test_seed,
            "commit": git_commit(), "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
            "loadavg_end": os.getloadavg(), "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "per_scan": by_scan, "summary": rows,
        }
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"bench_model_{tag}.json").write_text(json.dumps(record, indent=1))
        shown = EMBEDDED if str(EMBEDDED) in objects else Path(next(iter(objects)))
        figure(objects[str(shown)], shown, by_scan, ptychi, args.out / f"bench_model_{tag}.png")
        print(markdown(rows))
        if "train_cpu_s" in cost:
            print(f"training: {cost['group_steps']} group steps in {cost['train_cpu_s']:.1f} CPU s ({cost['train_groups_per_cpu_s']:.2f} groups per CPU s), "
                  f"{cost['train_wall_s']:.1f} s wall, load {cost['loadavg_before_training'][0]:.2f} -> {cost['loadavg_after_training'][0]:.2f}, "
                  f"{s['threads']} torch thread(s)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def figure(objects: dict, scan_path: Path, by_scan: dict, ptychi: list[dict], path: Path) -> None:
    """Truth, trained network, physics input and Pty-chi LSQML at the epochs closest to the network's CPU time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from scipy import ndimage

    truth = read_scan(scan_path, load_diffraction=False).objectGuess
    panels = [("truth", truth, None), ("trained network", objects["trained network"], by_scan[str(scan_path)]["trained network"]),
              ("physics input alone", objects["physics input"], by_scan[str(scan_path)]["physics input"])]
    network_cpu = by_scan[str(scan_path)]["trained network"]["reconstruct_cpu_s"]
    lsqml = [r for r in ptychi if r["scan"] == str(scan_path) and r["engine"] == "lsqml" and r.get("object_path")]
    if lsqml:
        nearest = min(lsqml, key=lambda r: abs(r["cpu_s"] - network_cpu))
        panels.append((f"Pty-chi LSQML {nearest['epochs']} epochs", np.load(nearest["object_path"], allow_pickle=False), dict(nearest, reconstruct_cpu_s=nearest["cpu_s"])))
    covered = np.abs(objects["physics input"]) > 0
    mask = ndimage.binary_erosion(covered, iterations=8)
    fig, axes = plt.subplots(2, len(panels), figsize=(3.3 * len(panels), 6.6))
    phase_range = np.percentile(np.angle(truth[mask]), [1, 99])
    for col, (title, image, scores) in enumerate(panels):
        r = image[mask].astype(np.complex128)
        alpha = np.vdot(r, truth[mask]) / np.vdot(r, r) if scores is not None else 1.0
        shown = np.where(mask, alpha * image, np.nan)
        label = title if scores is None else (f"{title}\namp r {scores['amplitude_r']:.3f}, phase r {scores['phase_r']:.3f}\n"
                                              f"{scores['reconstruct_cpu_s']:.1f} CPU s")
        axes[0, col].imshow(np.abs(shown), cmap="gray")
        axes[1, col].imshow(np.angle(shown), cmap="gray", vmin=phase_range[0], vmax=phase_range[1])
        axes[0, col].set_title(label, fontsize=8)
        for row in (0, 1):
            axes[row, col].axis("off")
    axes[0, 0].set_ylabel("amplitude")
    axes[1, 0].set_ylabel("phase")
    fig.suptitle(f"{scan_path.name}, never seen in training: amplitude (top) and phase (bottom), one complex scalar fitted", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


if __name__ == "__main__":
    main()
