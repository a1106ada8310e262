"""Training groups per CPU second through the real Trainer, before and after, measured in one run.

    git worktree add --detach /tmp/bench-speed/base 0b10270        # the baseline tree, once
    PYTHONPATH=$PWD .venv/bin/python benchmarks/bench_train.py --tree base=/tmp/bench-speed/base:fp32 \\
        --tree current=.:fp32 --tree current=.:bf16 --repeats 3

Each ``--tree LABEL=PATH:PRECISION`` is trained in a fresh child process with ``PYTHONPATH=PATH`` (its own
code), one torch thread, CPU: ``datasets/sim_small.npz``, ``n_groups`` 512, the benchmark preset of
``bench_model.py`` (n_filters_scale 1, base_filters 16, no CBAM, shared decoder, batch norm, truth loss
weight 300, batch 8, learning rate 2e-3, WarmupCosine), 2 epochs, through ``PtychoDataModule`` and
``ptycho_torch.model.training.build_trainer`` (a fresh run directory each time). ``bf16`` sets
``model.network.precision = 'bf16'`` before ``fit`` (trees that have it); ``:nocache`` sets ``model.input_cache_bytes = 0``
(each group's physics input recomputed in every epoch; trees from 2026-12-07 on). Timed: ``time.process_time()``
around ``trainer.fit`` (validation and checkpoint writing included, dataset construction not). Groups per
CPU s = training groups x epochs / that time. The trees run interleaved, round after round, so the load
hits them alike; the JSON (default ``benchmarks/figures/train.json``) keeps every run with its load.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EMBEDDED = ROOT / "datasets" / "sim_small.npz"
PRECISIONS = ("fp32", "bf16")

CHILD = r"""
import json, os, sys, time, logging
import torch
torch.set_num_threads(1)
from ptycho_torch.config_params import DataConfig, InferenceConfig, ModelConfig, TrainingConfig
from ptycho_torch.dset_loader_pt_mmap import PtychoDataset
from ptycho_torch.model import PtychoPINN_Lightning
from ptycho_torch.model.training import PtychoDataModule, build_trainer
logging.disable(logging.WARNING)
scan, work, precision, epochs = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])  # sys.argv[5]: input cache on/off
data = DataConfig(N=64, grid_size=(2, 2), K=7, nphotons=1e6, subsample_seed=42)
model_config = ModelConfig(n_filters_scale=1, base_filters=16, cbam_encoder=False, use_shared_decoder=True, batch_norm=True, object_big=True,
                           truth_loss_weight=300.0)
training = TrainingConfig(n_groups=512, epochs=epochs, batch_size=8, learning_rate=2e-3, scheduler="WarmupCosine", lr_warmup_epochs=0,
                          lr_min_ratio=0.0, device="cpu", num_workers=0, train_data_file=scan, test_data_file=scan)
dataset = PtychoDataset(scan, data, model_config, training, data_dir=os.path.join(work, "memmap"), ground_truth=True, progress=False)
model = PtychoPINN_Lightning(model_config, data, training, InferenceConfig(batch_size=64), seed=0)
if precision != "fp32":
    model.network.precision = precision
if sys.argv[5] == "off":
    if not isinstance(getattr(type(model), "input_cache_bytes", None), property):
        sys.exit(f"{os.getcwd()}: this tree has no input cache (PtychoPINN_Lightning.input_cache_bytes); drop :nocache")
    model.input_cache_bytes = 0  # each group's physics input recomputed in every epoch
module = PtychoDataModule(dataset, data, model_config, training)
run_dir = os.path.join(work, "run-%d-%d" % (os.getpid(), time.time_ns()))
trainer = build_trainer(training, run_dir, progress=False)
load = os.getloadavg()[0]
wall, cpu = time.perf_counter(), time.process_time()
trainer.fit(model, datamodule=module)
cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
groups = len(module.train_indices) * epochs
print(json.dumps({"fit_cpu_s": cpu, "fit_wall_s": wall, "train_groups": len(module.train_indices), "val_groups": len(module.val_indices),
                  "epochs": epochs, "group_steps": groups, "groups_per_cpu_s": groups / cpu, "load_1min": load,
                  "torch_threads": torch.get_num_threads(), "final_loss": {k: float(v) for k, v in trainer.callback_metrics.items()}}))
"""


def parse_tree(text: str) -> dict:
    """``LABEL=PATH[:fp32|bf16][:nocache]`` as a dict; anything else is a ValueError (never a silently different tree)."""
    label, sep, rest = text.partition("=")
    cache = "default"
    if rest.endswith(":nocache"):
        rest, cache = rest[: -len(":nocache")], "off"
    path, precision = rest, "fp32"
    for name in PRECISIONS:
        if rest.endswith(":" + name):
            path, precision = rest[: -len(name) - 1], name
    if not sep or not label or not path or not Path(path).is_dir():
        raise ValueError(f"--tree {text!r}: use LABEL=PATH[:fp32|bf16][:nocache] with PATH a source tree (directory)")
    return {"label": label, "path": str(Path(path).resolve()), "precision": precision, "input_cache": cache}


def tree_key(tree: dict) -> str:
    return f"{tree['label']}:{tree['precision']}" + (":nocache" if tree["input_cache"] == "off" else "")


def commit_of(path: str) -> str:
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=path, capture_output=True, text=True).stdout.strip()


def run(tree: dict, work: Path, epochs: int, scan: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=tree["path"], OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    work.mkdir(parents=True, exist_ok=True)
    done = subprocess.run([sys.executable, "-c", CHILD, str(scan), str(work), tree["precision"], str(epochs), tree["input_cache"]], env=env,
                          cwd=tree["path"],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{tree['label']} ({tree['path']}) failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tree", action="append", required=True,
                        help="LABEL=PATH[:fp32|bf16][:nocache], in the order they run each round (nocache: input_cache_bytes 0)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--scan", type=Path, default=EMBEDDED)
    parser.add_argument("--workdir", type=Path, default=None, help="memory maps and run directories (default: a temporary directory)")
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "figures" / "train.json")
    args = parser.parse_args(argv)
    try:
        trees = [parse_tree(t) for t in args.tree]
    except ValueError as error:
        parser.error(str(error))
    keys = [tree_key(t) for t in trees]
    if len(set(keys)) < len(keys):
        parser.error(f"--tree: two trees share a label, precision and cache setting ({', '.join(sorted({k for k in keys if keys.count(k) > 1}))}); "
                     "give each its own LABEL")
    for tree in trees:
        tree["commit"] = commit_of(tree["path"])
    record = {"date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), "trees": trees, "epochs": args.epochs,
              "scan": str(args.scan), "load_1min_start": os.getloadavg()[0], "runs": {tree_key(t): [] for t in trees}}
    with tempfile.TemporaryDirectory(prefix="bench_train_") as tmp:
        work = args.workdir or Path(tmp)
        for round_ in range(args.repeats):
            for tree in trees:
                key = tree_key(tree)
                result = run(tree, work / tree["label"], args.epochs, args.scan.resolve())
                record["runs"][key].append(result)
                print(f"round {round_ + 1} {key} ({tree['commit']}): {result['group_steps']} group steps in {result['fit_cpu_s']:.2f} CPU s = "
                      f"{result['groups_per_cpu_s']:.2f} groups/CPU s (load {result['load_1min']:.2f})", flush=True)
    record["load_1min_end"] = os.getloadavg()[0]
    record["summary"] = {}
    for key, runs in record["runs"].items():
        rates = [r["groups_per_cpu_s"] for r in runs]
        record["summary"][key] = {"groups_per_cpu_s": {"median": statistics.median(rates), "min": min(rates), "max": max(rates)},
                                  "fit_cpu_s": [r["fit_cpu_s"] for r in runs]}
    base_key = next(iter(record["runs"]))
    base = record["summary"][base_key]["groups_per_cpu_s"]["median"]
    lines = [f"bench_train: {record['date_utc']}, {args.epochs} epochs of {args.scan.name}, 1 thread, load {record['load_1min_start']:.2f} -> "
             f"{record['load_1min_end']:.2f}", "",
             f"| tree (commit), precision | fit CPU s per run | groups per CPU s (median, min-max) | / {base_key} |", "|---|---|---:|---:|"]
    for tree in trees:
        key = tree_key(tree)
        s = record["summary"][key]
        g = s["groups_per_cpu_s"]
        s["ratio_to_first"] = g["median"] / base
        lines.append(f"| {tree['label']} ({tree['commit']}), {key.split(':', 1)[1].replace(':', ', ')} | {', '.join(f'{c:.2f}' for c in s['fit_cpu_s'])} | "
                     f"{g['median']:.2f} ({g['min']:.2f}-{g['max']:.2f}) | {s['ratio_to_first']:.2f}x |")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(record, indent=1) + "\n")
    print("\n".join(lines))
    print(f"\nwritten {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
