"""``ptycho-reconstruct``: stitch a scan's object with a trained checkpoint into an NPZ (and a PNG)."""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

logger = logging.getLogger("ptycho_torch.reconstruct")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="ptycho-reconstruct", description=__doc__)
    parser.add_argument("checkpoint", type=Path, help="a .ckpt written by ptycho-train")
    parser.add_argument("scan", type=Path, help="scan NPZ to reconstruct")
    parser.add_argument("--output", type=Path, help="output NPZ (default: <scan stem>_reconstruction.npz beside the scan)")
    parser.add_argument("--canvas", choices=["scan", "object"], default="scan",
                        help="'scan': ceil(scan span + N) centred on the scan's bounding box (Ptychodus's rule, default); "
                             "'object': the grid of the scan's objectGuess (positions are its pixels)")
    parser.add_argument("--batch-size", type=int, default=64, help="groups per inference batch (default: 64)")
    parser.add_argument("--n-groups", type=int, help="groups to predict (default: one per scan point)")
    parser.add_argument("--data-dir", type=Path, help="memory map directory (default: <output stem>_memmap beside the output)")
    parser.add_argument("--no-png", action="store_true", help="do not write the amplitude/phase PNG")
    parser.add_argument("--quiet", action="store_true", help="no progress bar, warnings only")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for path in (args.checkpoint, args.scan):
        if not path.is_file():
            raise SystemExit(f"{path}: no such file")
    import torch

    from ptycho.scan_file import read_scan
    from ptycho_torch.dset_loader_pt_mmap import PtychoDataset
    from ptycho_torch.model import PtychoPINN_Lightning
    from ptycho_torch.model.stitching import Canvas, reconstruct

    output = args.output or args.scan.with_name(f"{args.scan.stem}_reconstruction.npz")
    model = PtychoPINN_Lightning.load_from_checkpoint(args.checkpoint, map_location=torch.device("cpu"))
    scan = read_scan(args.scan, load_diffraction=False)
    training = replace(model.training_config, n_groups=args.n_groups or len(scan.xcoords), train_data_file=str(args.scan), test_data_file=str(args.scan))
    dataset = PtychoDataset(args.scan, model.data_config, model.model_config, training,
                            data_dir=args.data_dir or output.with_name(f"{output.stem}_memmap"), progress=not args.quiet)
    canvas = None
    if args.canvas == "object":
        if scan.objectGuess is None:
            raise SystemExit(f"{args.scan}: --canvas object needs an objectGuess in the scan")
        canvas = Canvas(scan.objectGuess.shape, (0.0, 0.0))
    result = reconstruct(model, dataset, batch_size=args.batch_size, canvas=canvas, progress=not args.quiet)
    output.parent.mkdir(parents=True, exist_ok=True)
    np.savez(output, object=result.object, coverage=result.coverage.astype(np.float32),
             origin_px=np.asarray(result.canvas.origin_px, dtype=np.float64), count_gain=np.float64(result.gain))
    print(output)
    if not args.no_png:
        print(write_png(result.object, scan.objectGuess, output.with_suffix(".png")))
    return 0


def write_png(obj: np.ndarray, truth: np.ndarray | None, path: Path) -> Path:
    """Amplitude and phase of the reconstruction, beside the ground truth's when the scan has one."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = [("reconstruction", obj)] + ([] if truth is None else [("ground truth", truth)])
    fig, axes = plt.subplots(2, len(columns), figsize=(4.2 * len(columns), 7), squeeze=False)
    for col, (title, image) in enumerate(columns):
        for row, (name, part) in enumerate((("amplitude", np.abs), ("phase (rad)", np.angle))):
            shown = axes[row, col].imshow(part(image), cmap="gray")
            axes[row, col].set_title(f"{title}: {name}", fontsize=9)
            axes[row, col].axis("off")
            fig.colorbar(shown, ax=axes[row, col], fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


if __name__ == "__main__":
    sys.exit(main())
