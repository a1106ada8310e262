"""Experiment (not package code): the shipped U-Net's physics input replaced by windows of the scan's object after k sweeps.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/experiments/sweep_input_network.py train --work W --epochs 3 --init pretrained
    PYTHONPATH=$PWD .venv/bin/python benchmarks/experiments/sweep_input_network.py eval --model ft3=W/sweepnet.ckpt --json W/eval.json

``PtychoPINN.generator_input`` is replaced (in this process only) by each member's window of its scan's object after ``--k``
sweeps from a unit object (``refine.flat_start`` + ``refine.refine``), encoded as the physics input is
(``[Re(O - 1), Im(O - 1)]``); training is the shipped recipe's (``ptycho_torch.pretrained.build.RECIPE``) on its corpus
(``--corpus``, written when absent) for ``--epochs``, from the shipped weights (``--init pretrained``) or from scratch.
benchmarks/RESULTS.md, "The U-Net on a better physics input", has the runs.
"""
import argparse, json, logging, os, sys, time
from pathlib import Path
import numpy as np
import torch
ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from benchmarks.experiments.report import print_scan, write_record
from ptycho_torch.model import physics
from ptycho_torch.model.pinn import PtychoPINN
from ptycho_torch.model.refine import flat_start, refine, RefinementUpdate
from ptycho_torch.model.stitching import Canvas, reconstruct

CANVASES = {}  # experiment id -> (flat canvas tensor complex64 (H, W), origin (row, col))

def sweep_canvas(dataset, e, k, canvas=None):
    start = flat_start(dataset, canvas, experiment=e)
    obj = refine(start, dataset, k, experiment=e, progress=False) if k else start
    return obj

def set_canvas(e, rec):
    CANVASES[e] = (torch.from_numpy(np.ascontiguousarray(rec.object)).to(torch.complex64), rec.canvas.origin_px)

def sweep_input(self, batch, probe, scale, *, measurement=None, windows=None):
    N, C = self.N, self.C
    pos = (batch["coords_center"] - batch["coords_relative"])[:, :, 0, :].to(torch.float64)  # (B, C, 2) [x, y]
    exps = batch["experiment_id"].tolist()
    out = torch.empty(len(exps), C, N, N, dtype=torch.complex64)
    for e in set(exps):
        rows = [i for i, x in enumerate(exps) if x == e]
        obj, origin = CANVASES[e]
        p = pos[rows]
        corners = torch.stack([p[..., 0] + origin[1] - N // 2, p[..., 1] + origin[0] - N // 2], dim=-1)
        w = physics.GroupWindows.at(corners, N, tuple(obj.shape))
        out[rows] = w.extract(obj[None].expand(len(rows), *obj.shape).contiguous() if len(rows) > 1 else obj[None])
    est = out - 1
    return torch.cat([est.real, est.imag], dim=1).to(batch["images"].dtype)

def patch():
    PtychoPINN.generator_input = sweep_input

def train(args):
    from ptycho_torch.config_params import DataConfig, InferenceConfig, ModelConfig, TrainingConfig
    from ptycho_torch.model import PtychoPINN_Lightning
    from ptycho_torch.model.training import PtychoDataModule, build_trainer
    from ptycho_torch.pretrained.build import RECIPE
    from ptycho_torch.pretrained import resolve_checkpoint
    torch.set_num_threads(1)
    recipe = RECIPE
    from ptycho.corpus import write_training_corpus

    corpus = Path(args.corpus)
    if len(list(corpus.glob("*.npz"))) != recipe["corpus"]["n_scans"]:
        write_training_corpus(corpus, recipe["corpus"]["n_scans"], recipe["corpus"]["seed"], n_points=recipe["corpus"]["n_points"], N=recipe["corpus"]["N"])
    data = DataConfig(**{**recipe["data"], "grid_size": tuple(recipe["data"]["grid_size"])})
    mc = ModelConfig(**recipe["model"])
    first = str(sorted(corpus.glob("*.npz"))[0])
    tr = TrainingConfig(**{**recipe["training"], "epochs": args.epochs, "learning_rate": args.lr}, train_data_file=first, test_data_file=first)
    model = PtychoPINN_Lightning(mc, data, tr, InferenceConfig(batch_size=64), seed=0)
    if args.init == "pretrained":
        ck = torch.load(resolve_checkpoint("pretrained"), map_location="cpu", weights_only=True)
        missing = model.network.load_state_dict({k.removeprefix("network."): v for k, v in ck["state_dict"].items()}, strict=True)
    model.network.precision = "bf16"
    module = PtychoDataModule(corpus, data, mc, tr, data_dir=Path(args.work) / "memmap", progress=False)
    module.setup("fit")
    ds = module.dataset
    t = time.process_time()
    for e in range(len(ds.experiments)):
        set_canvas(e, sweep_canvas(ds, e, args.k))
    logging.info("sweep canvases of %d scans: %.1f CPU s", len(ds.experiments), time.process_time() - t)
    patch()
    trainer = build_trainer(tr, Path(args.work) / "run", progress=False)
    t = time.process_time()
    trainer.fit(model, datamodule=module)
    logging.info("fit %.1f CPU s; metrics %s", time.process_time() - t, {k: float(v) for k, v in trainer.callback_metrics.items()})
    from ptycho_torch.model.checkpoints import network_state
    best = Path(args.work) / "run" / "checkpoints" / "best-checkpoint.ckpt"
    ck = torch.load(best, map_location="cpu", weights_only=True)
    torch.save({"state_dict": network_state(ck["state_dict"]), "hyper_parameters": ck["hyper_parameters"]}, Path(args.work) / "sweepnet.ckpt")
    Path(args.work, "train.json").write_text(json.dumps({"args": vars(args), "fit_cpu_s": time.process_time() - t,
        "metrics": {k: float(v) for k, v in trainer.callback_metrics.items()}}, indent=1))

def evaluate(args):
    from benchmarks import bench_ptychi
    from benchmarks.bench_pretrained import held_out_scans, build_dataset
    from ptycho.scan_file import read_scan
    from ptycho_torch.model.checkpoints import load_network
    from ptycho_torch.pretrained import load_pretrained
    torch.set_num_threads(1)
    shipped = load_pretrained(); shipped.precision = "bf16"
    nets = {name: load_network(path) for name, path in (m.split("=") for m in args.model)}
    for n in nets.values(): n.precision = "bf16"
    scans = held_out_scans(Path(args.heldout), 2, args.seed, 512)
    scans["embedded"] = [ROOT / "datasets" / "sim_small.npz"]
    out = {}
    orig = PtychoPINN.generator_input
    for kind, paths in scans.items():
        for scan in paths:
            loaded = bench_ptychi.load_scan(scan)
            canvas = Canvas(read_scan(scan, load_diffraction=False).objectGuess.shape, (0, 0))
            ds, _, _ = build_dataset(shipped, scan, Path(args.work) / f"mm-{scan.stem}", 512)
            rec = {}
            PtychoPINN.generator_input = orig
            t = time.process_time(); r = reconstruct(shipped, ds, canvas=canvas, groups="cover", progress=False)
            rec["shipped pass"] = {**bench_ptychi.score_reconstruction(r.object, loaded), "cpu_s": time.process_time() - t}
            for k in sorted(set(args.sweeps)):
                t = time.process_time(); s = sweep_canvas(ds, 0, k, canvas); ts = time.process_time() - t
                rec[f"flat+{k}"] = {**bench_ptychi.score_reconstruction(s.object, loaded), "cpu_s": ts}
                if k not in args.k_net:
                    continue
                set_canvas(0, s)
                PtychoPINN.generator_input = sweep_input
                for name, net in nets.items():
                    t = time.process_time(); r = reconstruct(net, ds, canvas=canvas, groups="cover", progress=False)
                    rec[f"flat+{k} -> {name}"] = {**bench_ptychi.score_reconstruction(r.object, loaded), "cpu_s": ts + time.process_time() - t}
                    t = time.process_time(); r2 = reconstruct(net, ds, canvas=canvas, groups="cover", progress=False, use_network=False)
                    rec[f"flat+{k} -> stitched windows"] = {**bench_ptychi.score_reconstruction(r2.object, loaded), "cpu_s": ts + time.process_time() - t}
                PtychoPINN.generator_input = orig
            out[scan.stem] = {"kind": kind, "ways": rec}
            print_scan(scan.stem, kind, rec)
    write_record(out, args.json)

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    p = argparse.ArgumentParser()
    p.add_argument("mode"); p.add_argument("--work", default="data/experiments/sweep-input"); p.add_argument("--corpus", default="data/experiments/corpus-48-seed1"); p.add_argument("--k", type=int, default=5)
    p.add_argument("--epochs", type=int, default=3); p.add_argument("--lr", type=float, default=2e-3); p.add_argument("--init", default="pretrained")
    p.add_argument("--model", action="append", default=[]); p.add_argument("--heldout", default="data/experiments/heldout1000")
    p.add_argument("--seed", type=int, default=1000); p.add_argument("--sweeps", type=int, nargs="+", default=[3, 5, 8, 10, 15])
    p.add_argument("--k-net", type=int, nargs="+", default=[5]); p.add_argument("--json", default="data/experiments/sweep_input_eval.json")
    a = p.parse_args()
    Path(a.work).mkdir(parents=True, exist_ok=True)
    train(a) if a.mode == "train" else evaluate(a)
