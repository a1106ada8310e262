"""Does training on several probe families make the network serve probes it never saw? Two models, held-out scans per probe family.

    .venv/bin/python benchmarks/ablate_probe_families.py \
        --model three-families=pretrained --model pinhole-only=/work/train/ablate-pinhole/pinn64-pinhole.ckpt

The models differ only in their corpus's probe families (``ptycho_torch.pretrained.build --probes pinhole --output FILE`` rebuilds
the pinhole-only one; the shipped model trained on pinhole, zone_plate and aberrated). Every scan is a held-out
``ptycho.corpus`` scan (odd seed, never a training seed) of one probe family, with the training object families and
trajectories: ``--n-per-probe`` scans per family of ``ptycho.corpus.PROBE_FAMILIES`` (``kb_mirror`` is left out of
both trainings). Each model reconstructs each scan by its physics input alone and by its single pass (groups
'cover', U-Net in bf16: ``ptycho-reconstruct``'s defaults), scored on the scan's probe coverage
(``bench_ptychi.score_reconstruction``). Writes ``--json`` and prints a Markdown table: mean, min and max over the
scans of each family.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.bench_model import git_commit  # noqa: E402
from benchmarks.bench_pretrained import HEADLINE_GROUPS, Way, model_records, warm_up_network  # noqa: E402
from ptycho import corpus  # noqa: E402
from ptycho_torch.model.checkpoints import load_network  # noqa: E402
from ptycho_torch.pretrained import resolve_checkpoint  # noqa: E402

logger = logging.getLogger("ablate_probe_families")

KIND_INDEX_BASE = 8  # held-out seed streams 8.. (bench_pretrained's kinds use 0..5 of the same corpus seed)
WAYS = (Way(HEADLINE_GROUPS, "fp32", False), Way(HEADLINE_GROUPS, "bf16", True))


def probe_family_scans(directory: Path, n_per_probe: int, seed: int, n_points: int) -> dict[str, list[Path]]:
    """``n_per_probe`` held-out scans per probe family (training objects and trajectories), written once under ``directory``."""
    named = [(f"probe-{family}-{i:02d}", corpus.recipe(corpus.held_out_seed(seed, KIND_INDEX_BASE + k, i), probe_families=(family,),
                                                      n_points=n_points))
             for k, family in enumerate(corpus.PROBE_FAMILIES) for i in range(n_per_probe)]
    try:
        present = corpus.read_recipes(directory)
    except (FileNotFoundError, json.JSONDecodeError, KeyError):
        present = {}
    if any(present.get(f"{name}.npz") != r or not (directory / f"{name}.npz").is_file() for name, r in named):
        logger.info("writing %d held-out scans to %s", len(named), directory)
        corpus.write_recipes(directory, named)
    return {family: [directory / f"probe-{family}-{i:02d}.npz" for i in range(n_per_probe)] for family in corpus.PROBE_FAMILIES}


def summary(values: list[float]) -> dict:
    return {"mean": float(np.mean(values)), "min": float(np.min(values)), "max": float(np.max(values)), "n": len(values)}


def table(results: dict, families: list[str], model_names: list[str], trained_on: dict[str, list[str]]) -> str:
    lines = ["| probe family | model (trained on) | physics input amp r / phase r | single pass amp r / phase r | single pass - physics input, phase r |",
             "|---|---|---|---|---|"]
    for family in families:
        for name in model_names:
            cells = results[family][name]
            physics, single = cells[WAYS[0].name], cells[WAYS[1].name]
            gain = cells["phase_r gain"]

            def text(entry):
                return f"{entry['mean']:.3f} [{entry['min']:.3f}, {entry['max']:.3f}]"

            seen = "seen" if family in trained_on[name] else "left out"
            lines.append(f"| {family} ({seen}) | {name} ({'+'.join(trained_on[name])}) | {text(physics['amplitude_r'])} / "
                         f"{text(physics['phase_r'])} | {text(single['amplitude_r'])} / {text(single['phase_r'])} | {text(gain)} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", required=True, metavar="NAME=CHECKPOINT",
                        help="a model to compare: a name and a checkpoint file or shipped model name (repeat)")
    parser.add_argument("--n-per-probe", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1000)
    parser.add_argument("--n-points", type=int, default=512)
    parser.add_argument("--heldout", type=Path, default=ROOT / "data" / "bench" / "probe-family-heldout")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "figures" / "probe_family_ablation.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    scans = probe_family_scans(args.heldout, args.n_per_probe, args.seed, args.n_points)
    models, trained_on, records = {}, {}, {}
    for spec in args.model:
        name, _, source = spec.partition("=")
        path = resolve_checkpoint(source)
        models[name] = load_network(path, map_location="cpu")
        record_path = path.with_suffix(".json")
        recipe = json.loads(record_path.read_text())["recipe"] if record_path.is_file() else {}
        trained_on[name] = list(recipe.get("corpus", {}).get("probe_families", corpus.TRAIN_PROBES))
        records[name] = {"checkpoint": str(path), "training_record": str(record_path) if record_path.is_file() else None}
    results, per_scan = {}, {}
    with tempfile.TemporaryDirectory(prefix="ablate-probes-") as work:
        work = Path(work)
        first = scans[corpus.PROBE_FAMILIES[0]][0]
        for network in models.values():
            warm_up_network(network, first, work, args.n_points)
        for family, paths in scans.items():
            results[family] = {}
            for name, network in models.items():
                scored = [model_records(network, scan, list(WAYS), work / name, args.n_points)[0] for scan in paths]
                per_scan.setdefault(name, {}).update({str(scan): r for scan, r in zip(paths, scored)})
                cell = {way.name: {metric: summary([r[way.name][metric] for r in scored]) for metric in ("amplitude_r", "phase_r", "nrmse")}
                        for way in WAYS}
                cell["phase_r gain"] = summary([r[WAYS[1].name]["phase_r"] - r[WAYS[0].name]["phase_r"] for r in scored])
                results[family][name] = cell
                logger.info("%s on %s: %s", name, family, {k: round(v["phase_r"]["mean"], 3) for k, v in cell.items() if k != "phase_r gain"})
    text = table(results, list(scans), list(models), trained_on)
    print(text)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({
        "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()), "commit": git_commit(), "threads": args.threads,
        "load_average": os.getloadavg(), "seed": args.seed, "n_per_probe": args.n_per_probe, "n_points": args.n_points,
        "models": records, "trained_on": trained_on, "results": results, "per_scan": per_scan, "table": text,
    }, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
