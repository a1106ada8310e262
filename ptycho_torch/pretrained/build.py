"""Rebuild a shipped model from nothing: simulate its corpus, train (resuming from the last checkpoint), export weights only.

    python -m ptycho_torch.pretrained.build                 # `make pretrained`: ptycho_torch/pretrained/pinn64.ckpt
    python -m ptycho_torch.pretrained.build --work DIR      # scratch (corpus, memory maps, run) in DIR; rerun to resume

The recipe (corpus seed and size, network and training settings) is :data:`RECIPE`; the record written beside the
weights holds it with the command, the commit, the CPU seconds of every training session and the final losses.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

from ptycho_torch.cli import positive_int, report_interrupted
from ptycho_torch.pretrained import MODELS_DIR, SHIPPED

logger = logging.getLogger("ptycho_torch.pretrained.build")

RECIPE = {
    "corpus": {"n_scans": 48, "seed": 1, "n_points": 512, "N": 64},  # ptycho.corpus.training_recipes (default families)
    "data": {"N": 64, "grid_size": (2, 2), "K": 7, "subsample_seed": 42},
    "model": {"n_filters_scale": 1, "base_filters": 16, "cbam_encoder": False, "use_shared_decoder": True, "batch_norm": True,
              "object_big": True, "object_estimate_steps": 2, "generator_output": "correction", "truth_loss_weight": 300.0},
    "training": {"n_groups": 512, "epochs": 10, "batch_size": 8, "learning_rate": 2e-3, "scheduler": "WarmupCosine",
                 "lr_warmup_epochs": 0, "lr_min_ratio": 0.0, "device": "cpu", "num_workers": 0},
    "network_seed": 0,
    "precision": "bf16",
}


CORPUS_FAMILY_KEYS = ("probe_families", "object_families", "trajectories")  # absent: ptycho.corpus's training split


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m {__spec__.name if __spec__ else __name__}", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--name", default="pretrained", choices=sorted(SHIPPED))
    parser.add_argument("--work", type=Path, default=Path("data") / "pretrained-build", help="scratch directory; rerun with it to resume")
    parser.add_argument("--output", type=Path, help="weights file (default: the shipped model's file in the package)")
    parser.add_argument("--epochs", type=positive_int, help="override the recipe's epochs (a shorter rebuild, e.g. for a test)")
    parser.add_argument("--n-scans", type=positive_int, help="override the recipe's corpus size")
    parser.add_argument("--precision", choices=("fp32", "bf16"), help="override the recipe's U-Net arithmetic")
    parser.add_argument("--probes", nargs="+", help="override the corpus's probe families (an ablation, e.g. --probes pinhole)")
    parser.add_argument("--threads", type=positive_int, default=1, help="torch threads (default 1: cheapest in CPU time on a shared machine)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    recipe = json.loads(json.dumps(RECIPE))
    if args.epochs is not None:
        recipe["training"]["epochs"] = args.epochs
    if args.n_scans is not None:
        recipe["corpus"]["n_scans"] = args.n_scans
    if args.precision:
        recipe["precision"] = args.precision
    if args.probes:
        from ptycho.corpus import FILE_PROBE_PREFIX, PROBE_FAMILIES

        unknown = [name for name in args.probes if name not in PROBE_FAMILIES and not name.startswith(FILE_PROBE_PREFIX)]
        if unknown:  # before the work directory or the corpus is written
            parser.error(f"--probes {' '.join(unknown)}: unknown probe famil{'y' if len(unknown) == 1 else 'ies'}; choose from "
                         f"{', '.join(PROBE_FAMILIES)} or {FILE_PROBE_PREFIX}<path.npy|npz>")
        recipe["corpus"]["probe_families"] = list(args.probes)
    if recipe != json.loads(json.dumps(RECIPE)):
        changed = [option for option, value in (("--epochs", args.epochs), ("--n-scans", args.n_scans), ("--precision", args.precision),
                                                ("--probes", args.probes)) if value is not None]
    else:
        changed = []
    require_output_for(changed, args.output, parser, "model", MODELS_DIR / SHIPPED[args.name][0])
    output = args.output or MODELS_DIR / SHIPPED[args.name][0]
    try:
        build(recipe, args.work, output, threads=args.threads,
              command=[sys.executable, "-m", "ptycho_torch.pretrained.build", *(argv or sys.argv[1:])])
    except KeyboardInterrupt as exc:  # Ctrl-C or a job's time limit: the sessions record and the last checkpoint stay
        # before or after the training (corpus, memory maps) the interruption carries no message: one line all the same
        return report_interrupted(parser.prog, exc, f"the build in {args.work} was interrupted; run the same command again to resume")
    return 0  # build() logged the path it wrote


WEIGHTS_SUFFIXES = (".ckpt", ".pt", ".pth")  # what ptycho_torch.pretrained.resolve_checkpoint takes for a weights file


def require_output_for(changed: list[str], output: Path | None, parser: argparse.ArgumentParser, what: str, shipped: Path) -> None:
    """Options that change the recipe build another network than the shipped one: refused (usage error) without ``--output``,
    so the shipped file and its record stay the shipped recipe's. A given ``--output`` the build could not write, or whose
    writing would replace another kind of file (a scan, a record), is refused too, before the hours of training."""
    if changed and output is None:
        parser.error(f"{' and '.join(changed)} build{'s' if len(changed) == 1 else ''} another {what} than the shipped one: give "
                     f"--output FILE (the default is the shipped {shipped})")
    if output is None:
        return
    if output.is_dir():
        parser.error(f"--output {output} is a directory; give the weights file, e.g. {output / ('model' + shipped.suffix)}")
    if output.suffix.lower() not in WEIGHTS_SUFFIXES:
        parser.error(f"--output {output}: a weights file ends in {', '.join(WEIGHTS_SUFFIXES)} (its record is written beside it as "
                     f"{output.with_suffix('.json').name}); choose such a name, e.g. {output.with_suffix(shipped.suffix)}")
    from ptycho_torch.store.atomic import require_writable_directory

    try:
        require_writable_directory(output.parent, fix="choose another --output")
    except OSError as exc:
        parser.error(str(exc))


def build(recipe: dict, work: Path, output: Path, *, threads: int = 1, command=()) -> Path:
    import torch

    from ptycho.corpus import write_training_corpus
    from ptycho_torch.config_params import DataConfig, InferenceConfig, ModelConfig, TrainingConfig
    from ptycho_torch.model import PtychoPINN_Lightning
    from ptycho_torch.model.checkpoints import network_state
    from ptycho_torch.model.training import LAST_CHECKPOINT, PtychoDataModule, build_trainer

    torch.set_num_threads(threads)
    commit = _commit()  # the code this session runs (the tree may change while it trains)
    work.mkdir(parents=True, exist_ok=True)
    families = {key: tuple(value) for key, value in recipe["corpus"].items() if key in CORPUS_FAMILY_KEYS}
    named = "".join("-" + "+".join(value) for value in families.values())
    corpus = work / f"corpus-{recipe['corpus']['n_scans']}-seed{recipe['corpus']['seed']}{named}"
    if len(list(corpus.glob("*.npz"))) != recipe["corpus"]["n_scans"]:
        started = time.process_time()
        write_training_corpus(corpus, recipe["corpus"]["n_scans"], recipe["corpus"]["seed"], n_points=recipe["corpus"]["n_points"],
                              N=recipe["corpus"]["N"], **families)
        logger.info("corpus of %d scans written to %s in %.1f CPU s", recipe["corpus"]["n_scans"], corpus, time.process_time() - started)
    data = DataConfig(**{**recipe["data"], "grid_size": tuple(recipe["data"]["grid_size"])})
    model_config = ModelConfig(**recipe["model"])
    first = str(sorted(corpus.glob("*.npz"))[0])
    training = TrainingConfig(**recipe["training"], train_data_file=first, test_data_file=first)
    model = PtychoPINN_Lightning(model_config, data, training, InferenceConfig(batch_size=64), seed=recipe["network_seed"])
    model.network.precision = recipe["precision"]
    module = PtychoDataModule(corpus, data, model_config, training, data_dir=work / "memmap", progress=False)
    sessions_dirs = sorted(work.glob("run-*"))  # one run directory per session: build_trainer never reuses one
    previous = [path / "checkpoints" / LAST_CHECKPOINT for path in sessions_dirs if (path / "checkpoints" / LAST_CHECKPOINT).is_file()]
    resume = str(previous[-1]) if previous else None
    run_dir = work / f"run-{len(sessions_dirs):02d}"
    record_path = work / "sessions.json"
    sessions = json.loads(record_path.read_text()) if record_path.is_file() and resume else []
    trainer = build_trainer(training, run_dir, progress=False)
    started_cpu, started_wall, load_before = time.process_time(), time.perf_counter(), os.getloadavg()
    logger.info("training %s (%s)", "resumed from " + resume if resume else "from the start", recipe)
    try:
        trainer.fit(model, datamodule=module, ckpt_path=resume)
    except SystemExit as exc:  # Lightning 2.6 ends a fit stopped by Ctrl-C with sys.exit(1)
        if not (trainer.interrupted and isinstance(exc.__context__, KeyboardInterrupt)):
            raise
    finally:  # an interrupted session's CPU time is counted too
        sessions.append({"resumed_from_epoch": _epoch_of(resume), "cpu_s": time.process_time() - started_cpu,
                         "wall_s": time.perf_counter() - started_wall, "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
                         "threads": threads, "commit": commit, "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime())})
        record_path.write_text(json.dumps(sessions, indent=1))
    if trainer.interrupted:
        raise KeyboardInterrupt(f"the build in {work} was interrupted; run the same command again to resume from its last checkpoint")
    best, last = run_dir / "checkpoints" / "best-checkpoint.ckpt", run_dir / "checkpoints" / LAST_CHECKPOINT
    checkpoint = torch.load(best if best.is_file() else last, map_location="cpu", weights_only=True)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_suffix(".tmp")
    torch.save({"state_dict": network_state(checkpoint["state_dict"]), "hyper_parameters": checkpoint["hyper_parameters"]}, tmp)
    os.replace(tmp, output)
    train_groups = len(module.train_indices)
    record = {
        "name": output.stem, "recipe": recipe, "command": " ".join(map(str, command)), "commit": commit,
        "checkpoint_epoch": int(checkpoint.get("epoch", -1)), "train_groups_per_epoch": train_groups,
        "validation_groups": len(module.val_indices), "group_steps": train_groups * recipe["training"]["epochs"],
        "train_cpu_s": sum(s["cpu_s"] for s in sessions), "sessions": sessions,
        "final_metrics": {k: float(v) for k, v in trainer.callback_metrics.items()},
        "corpus_files": sorted(p.name for p in corpus.glob("*.npz")), "torch": torch.__version__,
    }
    output.with_suffix(".json").write_text(json.dumps(record, indent=1))
    logger.info("wrote %s (%.1f MB) and its record; %.1f CPU s of training", output, output.stat().st_size / 1e6, record["train_cpu_s"])
    return output


def _epoch_of(checkpoint) -> int | None:
    if checkpoint is None:
        return None
    import torch

    return int(torch.load(checkpoint, map_location="cpu", weights_only=True).get("epoch", -1))


PACKAGE_CODE = (":(glob)ptycho/**/*.py", ":(glob)ptycho_torch/**/*.py")  # what a build runs: not the weights and records beside it


def _commit(root: Path | None = None) -> str:
    """The repository's HEAD, with ``+changes`` when the package code differs from it (the run is then not that commit's):
    a changed, added or untracked ``.py`` file of ``ptycho``/``ptycho_torch``; rebuilt weights and records are data."""
    root = Path(__file__).resolve().parents[2] if root is None else root
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True).stdout.strip()
        changed = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all", "--", *PACKAGE_CODE], cwd=root,
                                 capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+changes" if changed else "")

if __name__ == "__main__":
    sys.exit(main())
