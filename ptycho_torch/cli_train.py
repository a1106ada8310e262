"""``ptycho-train``: train PtychoPINN on a scan NPZ (or a directory of them) and print the checkpoint path."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from ptycho.scan_file import ScanFile, scan_files
from ptycho_torch.config_file import ConfigFileError, read_config_sections
from ptycho_torch.config_params import DataConfig, InferenceConfig, ModelConfig, TrainingConfig

logger = logging.getLogger("ptycho_torch.train")

SECTIONS = {"data": DataConfig, "model": ModelConfig, "training": TrainingConfig, "inference": InferenceConfig}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="ptycho-train", description=__doc__)
    parser.add_argument("data", type=Path, help="scan NPZ or a directory of scan NPZ files")
    parser.add_argument("--config", type=Path, help="JSON or YAML file with sections data, model, training, inference (field names of ptycho_torch.config_params)")
    parser.add_argument("--output-dir", type=Path, default=Path("training_outputs"), help="runs are written to OUTPUT_DIR/run_<UTC time> (default: training_outputs)")
    parser.add_argument("--data-dir", type=Path, help="memory map and groups cache directory (default: OUTPUT_DIR/memmap)")
    parser.add_argument("--epochs", type=int, help="override training.epochs")
    parser.add_argument("--n-groups", type=int, help="override training.n_groups (default when unset: one group per scan point)")
    parser.add_argument("--nphotons", type=float, help="override data.nphotons (photons per pattern of the scan)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the network initialisation (default: 0)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar, warnings only")
    return parser.parse_args(argv)


def build_configs(args: argparse.Namespace, first_scan: Path):
    try:
        sections = read_config_sections(args.config, SECTIONS) if args.config else {name: cls() for name, cls in SECTIONS.items()}
    except (ConfigFileError, FileNotFoundError) as exc:
        raise SystemExit(str(exc)) from exc
    data, model, training, inference = sections.values()
    with ScanFile(first_scan) as scan_file:
        layout = scan_file.pattern_layout(scan_file.diffraction_key())
        n_points = len(scan_file.load("xcoords"))
    data.N = layout.N
    if args.nphotons is not None:
        data.nphotons = args.nphotons
    if args.epochs is not None:
        training.epochs = args.epochs
    if args.n_groups is not None:
        training.n_groups = args.n_groups
    elif training.n_groups is None:
        training.n_groups = n_points
    training.train_data_file = training.train_data_file or str(first_scan)
    training.test_data_file = training.test_data_file or str(first_scan)
    return data, model, training, inference


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        files = scan_files(args.data)
    except (FileNotFoundError, ValueError) as exc:
        raise SystemExit(str(exc)) from exc
    data, model_config, training, inference = build_configs(args, files[0])

    from ptycho_torch.model import PtychoPINN_Lightning
    from ptycho_torch.model.training import BEST_CHECKPOINT, PtychoDataModule, build_trainer

    run_dir = args.output_dir / time.strftime("run_%Y%m%d_%H%M%S", time.gmtime())
    module = PtychoDataModule(args.data, data, model_config, training, data_dir=args.data_dir or args.output_dir / "memmap", progress=not args.quiet)
    model = PtychoPINN_Lightning(model_config, data, training, inference, seed=args.seed)
    trainer = build_trainer(training, run_dir, progress=not args.quiet)
    trainer.fit(model, datamodule=module)
    best = run_dir / "checkpoints" / BEST_CHECKPOINT
    if not best.exists():
        raise SystemExit(f"training finished without a checkpoint in {best.parent}")
    print(best)
    return 0


if __name__ == "__main__":
    sys.exit(main())
