"""Train PtychoPINN on datasets/sim_small.npz on the CPU, stitch, and score against the true object.

    .venv/bin/python benchmarks/bench_model.py                       # this package's defaults
    .venv/bin/python benchmarks/bench_model.py --preset upstream     # Ptychodus's defaults (N filters 2, 2 epochs)

Prints one JSON record (quality, training groups/s, CPU and wall time, peak memory, load average)
and writes it with a figure (truth, reconstruction, error) under --out.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import shutil
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
from ptycho_torch.config_params import DataConfig, InferenceConfig, ModelConfig, TrainingConfig  # noqa: E402
from ptycho_torch.dset_loader_pt_mmap import PtychoDataset  # noqa: E402
from ptycho_torch.model import PtychoPINN_Lightning  # noqa: E402
from ptycho_torch.model.stitching import Canvas, reconstruct  # noqa: E402
from ptycho_torch.model.training import PtychoDataModule, build_trainer  # noqa: E402

PRESETS = {
    # this package: n_filters_scale 1, one group per scan point (512), 10 epochs
    "default": dict(n_filters_scale=1, n_groups=512, epochs=10, cbam_encoder=False, use_shared_decoder=True, batch_norm=True, learning_rate=2e-3, batch_size=8),
    # Ptychodus's defaults for the model size, 2023 groups as upstream's subsampling 7 gives, 2 epochs
    "upstream": dict(n_filters_scale=2, n_groups=2023, epochs=2, cbam_encoder=True, use_shared_decoder=False, batch_norm=False, learning_rate=1e-3, batch_size=16),
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--npz", type=Path, default=ROOT / "datasets" / "sim_small.npz")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="default")
    for name in ("n_filters_scale", "n_groups", "epochs"):
        parser.add_argument(f"--{name.replace('_', '-')}", type=int)
    parser.add_argument("--learning-rate", type=float)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--loss", choices=["Poisson", "MAE"], default="Poisson")
    parser.add_argument("--no-object-big", action="store_true")
    parser.add_argument("--shared-decoder", action="store_true")
    parser.add_argument("--separate-decoders", action="store_true", help="one decoder for amplitude, one for phase")
    parser.add_argument("--batch-norm", action="store_true")
    parser.add_argument("--no-batch-norm", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1: cheapest in CPU time on a shared machine)")
    parser.add_argument("--amp-activation", default="silu")
    parser.add_argument("--generator-input", choices=["object_estimate", "diffraction"], default=None,
                        help="what the generator sees (default: ModelConfig's, the object estimate; 'diffraction' as upstream)")
    parser.add_argument("--object-estimate-steps", type=int, default=None)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--tag", default=None)
    return parser.parse_args()


def settings(args) -> dict:
    chosen = dict(PRESETS[args.preset])
    for name in ("n_filters_scale", "n_groups", "epochs", "learning_rate", "batch_size"):
        if getattr(args, name) is not None:
            chosen[name] = getattr(args, name)
    if args.batch_norm or args.no_batch_norm:
        chosen["batch_norm"] = not args.no_batch_norm
    if args.shared_decoder:
        chosen["use_shared_decoder"] = True
    if args.separate_decoders:
        chosen["use_shared_decoder"] = False
    for name in ("generator_input", "object_estimate_steps"):
        chosen[name] = getattr(args, name) if getattr(args, name) is not None else getattr(ModelConfig, name)
    chosen.update(amp_activation=args.amp_activation, loss=args.loss, object_big=not args.no_object_big, seed=args.seed, threads=args.threads)
    return chosen


def configs(s: dict, npz: Path):
    data = DataConfig(N=64, grid_size=(2, 2), K=7, nphotons=1e6, subsample_seed=42)
    model = ModelConfig(n_filters_scale=s["n_filters_scale"], cbam_encoder=s["cbam_encoder"], object_big=s["object_big"],
                        use_shared_decoder=s["use_shared_decoder"], loss_function=s["loss"], amp_activation=s["amp_activation"], batch_norm=s.get("batch_norm", False),
                        generator_input=s["generator_input"], object_estimate_steps=s["object_estimate_steps"])
    training = TrainingConfig(n_groups=s["n_groups"], epochs=s["epochs"], batch_size=s["batch_size"], learning_rate=s["learning_rate"],
                              device="cpu", num_workers=0, train_data_file=str(npz), test_data_file=str(npz))
    return data, model, training, InferenceConfig(batch_size=64)


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.WARNING)
    s = settings(args)
    torch.set_num_threads(s["threads"])
    data, model_config, training, inference = configs(s, args.npz)
    work = Path(tempfile.mkdtemp(prefix="bench_model_"))
    try:  # the memory map, caches and checkpoints are scratch: removed afterwards
        overrides = {"enable_oversampling": True, "neighbor_pool_size": 7} if s["n_groups"] > 512 else None
        dataset = PtychoDataset(args.npz, data, model_config, training, data_dir=work / "memmap", overrides=overrides, progress=False)
        model = PtychoPINN_Lightning(model_config, data, training, inference, seed=s["seed"])
        module = PtychoDataModule(dataset, data, model_config, training)
        trainer = build_trainer(training, work / "run", progress=False)
        load_before = os.getloadavg()
        cpu0, wall0 = time.process_time(), time.perf_counter()
        trainer.fit(model, datamodule=module)
        train_cpu, train_wall = time.process_time() - cpu0, time.perf_counter() - wall0
        load_after = os.getloadavg()
        n_train = len(module.train_indices) * s["epochs"]

        scan = read_scan(args.npz)
        inference_set = PtychoDataset(args.npz, data, model_config, training, data_dir=work / "memmap", overrides={"n_groups": 512}, progress=False)
        cpu0, wall0 = time.process_time(), time.perf_counter()
        result = reconstruct(model, inference_set, canvas=Canvas(scan.objectGuess.shape, (0, 0)), progress=False)
        infer_cpu, infer_wall = time.process_time() - cpu0, time.perf_counter() - wall0
        covered = result.coverage > 0.05 * result.coverage.max()
        quality = reconstruction_quality(result.object, scan.objectGuess, covered)
        record = {
            "settings": s,
            "amplitude_r": quality.amplitude_r,
            "phase_r": quality.phase_r,
            "registration_shift_px": quality.shift_px,
            "compared_pixels": quality.n_pixels,
            "train_groups": len(module.train_indices),
            "train_cpu_s": train_cpu,
            "train_wall_s": train_wall,
            "train_groups_per_wall_s": n_train / train_wall,
            "train_groups_per_cpu_s": n_train / train_cpu,
            "inference_wall_s": infer_wall,
            "inference_cpu_s": infer_cpu,
            "peak_rss_mib": peak_rss_mib(),
            "loadavg_before": load_before,
            "loadavg_after": load_after,
            "final_metrics": {k: float(v) for k, v in trainer.callback_metrics.items()},
            "count_gain": result.gain,
        }
        args.out.mkdir(parents=True, exist_ok=True)
        tag = args.tag or f"{args.preset}_seed{s['seed']}"
        (args.out / f"bench_model_{tag}.json").write_text(json.dumps(record, indent=2))
        figure(result.object, scan.objectGuess, covered, quality, args.out / f"bench_model_{tag}.png")
        print(json.dumps(record, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def figure(rec: np.ndarray, truth: np.ndarray, covered: np.ndarray, quality, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from scipy import ndimage

    rec = np.roll(rec, quality.shift_px, axis=(0, 1))
    mask = ndimage.binary_erosion(np.roll(covered, quality.shift_px, axis=(0, 1)), iterations=8)
    alpha = np.vdot(rec[mask], truth[mask]) / np.vdot(rec[mask], rec[mask])
    rec = np.where(mask, alpha * rec, np.nan)
    t = np.where(mask, truth, np.nan)
    fig, axes = plt.subplots(2, 3, figsize=(10, 6.5))
    for row, (name, part) in enumerate((("amplitude", np.abs), ("phase (rad)", np.angle))):
        tv, rv = part(t), part(rec)
        lo, hi = np.nanmin(tv), np.nanmax(tv)
        for col, (title, image, limits) in enumerate(((f"true {name}", tv, (lo, hi)), (f"reconstructed {name}", rv, (lo, hi)), (f"error {name}", rv - tv, None))):
            ax = axes[row, col]
            shown = ax.imshow(image, cmap="gray" if col < 2 else "coolwarm", vmin=None if limits is None else limits[0], vmax=None if limits is None else limits[1])
            ax.set_title(title, fontsize=9)
            ax.axis("off")
            fig.colorbar(shown, ax=ax, fraction=0.046)
    fig.suptitle(f"sim_small: amplitude r {quality.amplitude_r:.3f}, phase r {quality.phase_r:.3f} (interior eroded 8 px, one complex scalar fitted)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


if __name__ == "__main__":
    main()
