"""Train PtychoPINN (the real model and loss) on PtychoDataset batches, on one process or under torchrun (CPU, gloo).

    python examples/train_loop.py --steps 20
    python -m torch.distributed.run --nproc_per_node 2 examples/train_loop.py --steps 2

The first run memory-maps and groups the scan; later runs (and the other ranks) reuse that cache.
A plain torch loop shows what a batch feeds; ``ptycho-train`` does the same through Lightning.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler

from ptycho.scan_file import ScanFile
from ptycho_torch.config_params import DataConfig, InferenceConfig, ModelConfig, TrainingConfig
from ptycho_torch.dataloader import TensorDictDataLoader
from ptycho_torch.dset_loader_pt_mmap import PtychoDataset
from ptycho_torch.model import PtychoPINN_Lightning

ROOT = Path(__file__).resolve().parents[1]
logger = logging.getLogger("train_loop")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("npz", nargs="?", type=Path, default=ROOT / "datasets" / "sim_small.npz", help="scan NPZ (default: the embedded dataset)")
    parser.add_argument("--steps", type=int, default=20, help="optimisation steps (default: 20)")
    parser.add_argument("--data-dir", type=Path, default=ROOT / "data" / "memmap", help="where the memory map and groups cache live (default: data/memmap in the repository)")
    parser.add_argument("--batch-size", type=int, default=16, help="groups per batch on each process (default: 16)")
    parser.add_argument("--n-groups", type=int, default=256, help="groups drawn from the scan (default: 256)")
    parser.add_argument("--nphotons", type=float, default=1e6, help="photons per pattern of the scan (default: 1e6, the embedded dataset's)")
    return parser.parse_args()


def pattern_size(npz: Path) -> int:
    """N of the file's N x N patterns, read from the NPZ header (no data loaded)."""
    with ScanFile(npz) as scan_file:
        return scan_file.pattern_layout(scan_file.diffraction_key()).N


def configs(args: argparse.Namespace):
    data = DataConfig(N=pattern_size(args.npz), grid_size=(2, 2), K=7, subsample_seed=42, nphotons=args.nphotons)
    model = ModelConfig(n_filters_scale=1, cbam_encoder=False, use_shared_decoder=True, object_big=True)
    training = TrainingConfig(n_groups=args.n_groups, batch_size=args.batch_size, learning_rate=2e-3, train_data_file=args.npz, test_data_file=args.npz)
    return data, model, training


def build_dataset(args: argparse.Namespace) -> PtychoDataset:
    data, model, training = configs(args)
    return PtychoDataset(args.npz, data, model, training, data_dir=args.data_dir, progress=rank() == 0)


class PoissonLoss(nn.Module):
    """The model's training loss as a module's forward, so DistributedDataParallel can wrap it."""

    def __init__(self, model: PtychoPINN_Lightning):
        super().__init__()
        self.model = model

    def forward(self, batch):
        return self.model.loss_of(batch)


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def train(args: argparse.Namespace) -> None:
    dataset = build_dataset(args)
    logger.info("%d groups of %d patterns %dx%d; groups cache %s (dataset.regrouped=%s): %s",
                len(dataset), dataset.C, dataset.N, dataset.N, "built" if dataset.regrouped else "reused",
                dataset.regrouped, dataset.cache_paths[0])
    sampler = DistributedSampler(dataset, shuffle=True, seed=0) if dist.is_initialized() else None
    generator = None if sampler is not None else torch.Generator().manual_seed(0)
    loader = TensorDictDataLoader(dataset, batch_size=args.batch_size, shuffle=sampler is None, sampler=sampler, generator=generator)
    data, model_config, training = configs(args)
    model = PoissonLoss(PtychoPINN_Lightning(model_config, data, training, InferenceConfig(), seed=0))
    if dist.is_initialized():
        model = DistributedDataParallel(model)
    optimiser = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=training.learning_rate)
    step, epoch = 0, 0
    while step < args.steps:
        if sampler is not None:
            sampler.set_epoch(epoch)
        for batch in loader:  # (TensorDict of images, coords..., probe, scale)
            loss = model(batch)  # Poisson NLL of the predicted counts against the measured ones
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            step += 1
            logger.info("epoch %d step %d/%d loss %.6g", epoch, step, args.steps, loss.item())
            if not math.isfinite(loss.item()):
                raise FloatingPointError(f"loss became {loss.item()} at step {step}")
            if step == args.steps:
                break
        epoch += 1


def main() -> None:
    args = parse_args()
    distributed = "RANK" in os.environ  # set by torchrun
    if distributed:
        dist.init_process_group("gloo")
    logging.basicConfig(level=logging.INFO, format=f"rank {rank()} %(levelname)s %(name)s: %(message)s")
    try:
        train(args)
    finally:
        if distributed:
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
