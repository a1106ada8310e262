"""Ptychodus 1.7.0's own run_train + run_reconstruct on sim_small through ptycho_torch.api: wall/CPU time and quality."""

from __future__ import annotations

import argparse
import json
import logging
import os
import pickle
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from quality import reconstruction_quality  # noqa: E402

from tests.ptychodus.plugin_support import (  # noqa: E402
    build_configs,
    export_training_data,
    reconstruct_input,
    reconstruct_payload,
    run_in_process,
    train_payload,
)

logger = logging.getLogger("bench_ptychodus")


def cpu_seconds() -> float:
    """User + system CPU time of this process and its finished children (dataloader workers)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--filters-scale", type=int, default=1)
    parser.add_argument("--subsampling", type=int, default=2)
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "bench_ptychodus.json")
    parser.add_argument("--figure", type=Path, default=ROOT / "docs" / "images" / "ptychodus_reconstruction.png")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")

    from ptychodus.model.ptychopinn_torch._subprocess import run_reconstruct, run_train

    parameters = reconstruct_input()
    settings = dict(model_size=64, epochs=args.epochs, num_filters_scale=args.filters_scale, coordinate_subsampling_factor=args.subsampling)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-ptychodus-") as work:
        directory = Path(work)
        os.environ.setdefault("PTYCHOPINN_CACHE_DIR", str(directory / "cache"))
        export_training_data(directory, parameters)
        payload = train_payload(build_configs(**settings), directory, directory)

        start_wall, start_cpu = time.perf_counter(), cpu_seconds()
        messages = run_in_process(run_train, payload)
        train_wall, train_cpu = time.perf_counter() - start_wall, cpu_seconds() - start_cpu
        load_after_train = os.getloadavg()
        output = pickle.loads(dict(messages)["train_output"])
        checkpoint = Path(dict(messages)["model_saved"])

        start_wall, start_cpu = time.perf_counter(), cpu_seconds()
        messages = run_in_process(run_reconstruct, reconstruct_payload("Unsupervised", checkpoint, parameters))
        rec_wall, rec_cpu = time.perf_counter() - start_wall, cpu_seconds() - start_cpu
        product = pickle.loads(dict(messages)["output"]).product
    load_after = os.getloadavg()

    result = product.object_.get_layer(0)
    truth = parameters.product.object_.get_layer(0)
    quality = reconstruction_quality(result, truth, np.abs(result) > 0)
    record = {
        "settings": settings,
        "ptychodus_defaults_kept": "device 'cuda' (CPU fallback), strategy 'ddp_spawn', num_workers 4, batch 16, lr 1e-3, Poisson",
        "train_wall_s": round(train_wall, 1),
        "train_cpu_s": round(train_cpu, 1),
        "reconstruct_wall_s": round(rec_wall, 1),
        "reconstruct_cpu_s": round(rec_cpu, 1),
        "total_wall_s": round(train_wall + rec_wall, 1),
        "loadavg_before": load_before,
        "loadavg_after_train": load_after_train,
        "loadavg_after": load_after,
        "epochs_completed": output.progress,
        "training_loss": [loss.value for loss in output.training_loss],
        "validation_loss": [loss.value for loss in output.validation_loss],
        "object_shape": list(result.shape),
        "input_object_shape": list(truth.shape),
        "amplitude_r": quality.amplitude_r,
        "phase_r": quality.phase_r,
        "nrmse": quality.nrmse,
        "phase_contrast": quality.phase_contrast,
        "registration_shift_px": list(quality.shift_px),
        "compared_pixels": quality.n_pixels,
        "cpu_count": os.cpu_count(),
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(record, indent=2))
    logger.info("%s", json.dumps(record, indent=2))
    save_figure(result, truth, quality, record, args.figure)


def save_figure(result: np.ndarray, truth: np.ndarray, quality, record: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    covered = np.abs(result) > 0
    alpha = np.vdot(result[covered], truth[covered]) / np.vdot(result[covered], result[covered])
    fitted = np.where(covered, result * alpha, np.nan)
    fig, axes = plt.subplots(2, 2, figsize=(8, 7.5), constrained_layout=True)
    panels = (
        (np.abs(truth), "input object amplitude (truth)"), (np.angle(truth), "input object phase (truth)"),
        (np.abs(fitted), f"PtychoPINN-Torch amplitude (r = {quality.amplitude_r:.3f})"),
        (np.angle(fitted), f"PtychoPINN-Torch phase (r = {quality.phase_r:.3f})"),
    )
    for ax, (image, title) in zip(axes.ravel(), panels):
        shown = ax.imshow(image, cmap="gray" if "amplitude" in title else "twilight")
        ax.set_title(title, fontsize=9)
        ax.set_axis_off()
        fig.colorbar(shown, ax=ax, shrink=0.8)
    s = record["settings"]
    fig.suptitle(
        f"Ptychodus run_train + run_reconstruct, sim_small, CPU: {s['epochs']} epochs, filters scale {s['num_filters_scale']}, "
        f"subsampling {s['coordinate_subsampling_factor']};\nobject {record['object_shape'][0]} x {record['object_shape'][1]} px "
        f"on the input grid (shift {tuple(record['registration_shift_px'])} px)",
        fontsize=9,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    logger.info("figure %s", path)


if __name__ == "__main__":
    main()
