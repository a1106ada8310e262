"""`make demo`: memory-map, group and cache the embedded dataset, iterate it, show the cache hit, then reconstruct it
with the shipped model in one pass (a PNG of amplitude and phase beside the scan's object, and the scores)."""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from tqdm.auto import tqdm

from ptycho_torch.config_params import DataConfig, ModelConfig, TrainingConfig
from ptycho_torch.dataloader import TensorDictDataLoader
from ptycho_torch.dset_loader_pt_mmap import PtychoDataset

ROOT = Path(__file__).resolve().parents[1]
REFINE_ITERATIONS = 20
OBJECT_NETWORK_SWEEPS = (5, 2)  # sweeps before the whole-object network and after it (both branches)


def build(args, remake: bool) -> tuple[PtychoDataset, float]:
    started = time.perf_counter()
    dataset = PtychoDataset(
        args.data,
        DataConfig(N=64, K=7, subsample_seed=42, nphotons=1e6),
        ModelConfig(),
        TrainingConfig(n_groups=args.n_groups, train_data_file=args.data, test_data_file=args.data),
        data_dir=args.data_dir,
        remake_map=remake,
    )
    return dataset, time.perf_counter() - started


def one_epoch(dataset: PtychoDataset, batch_size: int) -> float:
    loader = TensorDictDataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=0)
    started = time.perf_counter()
    for batch, probe, scale in tqdm(loader, desc="epoch", unit="batch"):
        assert batch["images"].shape[1:] == (dataset.C, dataset.N, dataset.N)
    return len(dataset) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=ROOT / "datasets" / "sim_small.npz")
    parser.add_argument("--data-dir", type=Path, default=ROOT / "data" / "memmap")
    parser.add_argument("--n-groups", type=int, default=400)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--plot", type=Path, default=ROOT / "outputs" / "demo_groups.png")
    parser.add_argument("--reconstruction", type=Path, default=ROOT / "outputs" / "demo_reconstruction.png")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    cold_dataset, cold = build(args, remake=True)
    throughput = one_epoch(cold_dataset, args.batch_size)
    warm_dataset, warm = build(args, remake=False)
    assert not warm_dataset.regrouped, "the second construction should have reused the cache"

    print()
    print(f"dataset          {args.data.relative_to(ROOT) if args.data.is_relative_to(ROOT) else args.data}")
    print(f"groups           {len(warm_dataset)} of {warm_dataset.C} patterns ({warm_dataset.N}x{warm_dataset.N})")
    print(f"groups cache     {warm_dataset.cache_paths[0]}")
    print(f"cold build       {cold:.2f} s (memory map + grouping + cache write)")
    print(f"warm start       {warm:.3f} s (cache hit, no regrouping: {warm / cold:.1%} of cold)")
    print(f"epoch throughput {throughput:,.0f} groups/s (batch {args.batch_size}, shuffled)")
    write_plot(warm_dataset, args.plot)
    reconstruct_with_shipped_model(args)


def reconstruct_with_shipped_model(args) -> None:
    """The product: the shipped model turns the scan into its object in one pass, with no training."""
    import numpy as np
    import torch

    from ptycho.quality import reconstruction_quality, resample_onto_canvas
    from ptycho.scan_file import read_scan
    from ptycho_torch.model.pinn import choose_precision
    from ptycho_torch.model.refine import flat_start, refine
    from ptycho_torch.model.stitching import reconstruct
    from ptycho_torch.plot import write_reconstruction_png
    from ptycho_torch.pretrained import UnknownModelError, load_pretrained

    torch.set_num_threads(1)
    try:
        network = load_pretrained()
    except UnknownModelError as exc:
        print(f"reconstruction    skipped ({exc})")
        return
    network.precision = choose_precision("auto", "cpu")
    scan = read_scan(args.data, load_diffraction=False)
    started = time.process_time()
    dataset = PtychoDataset(args.data, network.data_config, network.model_config, TrainingConfig(n_groups=len(scan.xcoords)),
                            data_dir=args.data_dir / "reconstruction", progress=False)  # its own map: the cold build above remade the other
    dataset_s = time.process_time() - started
    result = reconstruct(network, dataset, progress=False, groups="cover")
    cpu_s = time.process_time() - started
    reference = resample_onto_canvas(scan.objectGuess, result.object.shape, result.canvas.origin_px)
    covered = (result.coverage > 0.05 * result.coverage.max()) & np.isfinite(reference)
    args.reconstruction.parent.mkdir(parents=True, exist_ok=True)
    write_reconstruction_png(result.object, reference, args.reconstruction)
    started = time.process_time()
    refined = refine(result, dataset, REFINE_ITERATIONS, progress=False)
    refine_s = time.process_time() - started
    refined_png = args.reconstruction.with_name(args.reconstruction.stem + "_refined.png")
    write_reconstruction_png(refined.object, reference, refined_png)
    started = time.process_time()
    flat = refine(flat_start(dataset, result.canvas), dataset, REFINE_ITERATIONS, progress=False)
    flat_s = time.process_time() - started
    flat_png = args.reconstruction.with_name(args.reconstruction.stem + "_flat_start.png")
    write_reconstruction_png(flat.object, reference, flat_png)
    from ptycho_torch.model.object_network import refine_with_object_network
    from ptycho_torch.pretrained import load_object_network

    started = time.process_time()
    gated, kept = refine_with_object_network(flat_start(dataset, result.canvas), dataset, load_object_network(), OBJECT_NETWORK_SWEEPS[1],
                                             sweeps_before=OBJECT_NETWORK_SWEEPS[0], bf16=network.precision == "bf16", progress=False)
    gated_s = time.process_time() - started
    gated_png = args.reconstruction.with_name(args.reconstruction.stem + "_object_network.png")
    write_reconstruction_png(gated.object, reference, gated_png)
    before, after = OBJECT_NETWORK_SWEEPS
    for who, what, obj, seconds, png in (
            ("shipped model", f"one pass ({network.precision})", result.object, cpu_s, args.reconstruction),
            ("shipped model", f"one pass + {REFINE_ITERATIONS} refinement sweeps", refined.object, cpu_s + refine_s, refined_png),
            ("no network", f"unit object + {REFINE_ITERATIONS} refinement sweeps (--start flat)", flat.object, dataset_s + flat_s, flat_png),
            ("object network", f"unit object + {before} sweeps, the object network, {after} more ({'kept' if kept else 'dropped'}; "
             f"--start flat --refine {before + after} --object-network {before})", gated.object, dataset_s + gated_s, gated_png)):
        quality = reconstruction_quality(obj, np.nan_to_num(reference), covered)
        print(f"{who:17s} {what} (1 thread, grouping included): {seconds:.2f} CPU s; against the scan's object: amplitude r "
              f"{quality.amplitude_r:.4f}, phase r {quality.phase_r:.4f}, NRMSE {quality.nrmse:.4f}; {png}")


def write_plot(dataset: PtychoDataset, path: Path) -> None:
    try:
        from ptycho_torch.plot import write_groups_plot
    except ImportError as exc:
        print(f"groups plot      skipped ({exc})")
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    write_groups_plot(dataset.experiments[0], path)
    print(f"groups plot      {path}")


if __name__ == "__main__":
    main()
