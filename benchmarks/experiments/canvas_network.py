"""Experiment (not package code): a small U-Net over the whole object after k refinement sweeps from a unit object.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/experiments/canvas_network.py train --ks 5 10 --steps 3000 --lr 1e-3 --out W/cnn.pt
    PYTHONPATH=$PWD .venv/bin/python benchmarks/experiments/canvas_network.py eval --model cnn=W/cnn.pt --heldout-seed 1000 --json W/eval.json

Training pairs: each training scan of the shipped model's corpus (``ptycho_torch.pretrained.build.RECIPE``: 48 scans of corpus
seed 1, written to ``--corpus`` when absent) after each of ``--ks`` sweeps (``refine.flat_start`` + ``refine.refine``, default
update), on its objectGuess's grid, against that objectGuess; random ``--crop`` crops, loss ``physics.phase_invariant_error``
weighted by the probe coverage. The network multiplies the object (divided by its mean covered amplitude) by
``A exp(i phi)`` (``--phase-only``: by ``exp(i phi)``). ``eval`` scores ``flat+k`` and ``flat+k -> network`` (``--after N``: then N
more sweeps; ``--gate``: the network's output kept only where the summed modulus misfit of one parallel update does not rise) on ``bench_pretrained``'s held-out scans of ``--heldout-seed`` and the embedded scan (``bench_ptychi.score_reconstruction``).
benchmarks/RESULTS.md, "A network over the whole refined object", has the runs.
"""
import argparse, dataclasses, json, logging, sys, time
from pathlib import Path
import numpy as np
import torch
ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from benchmarks.experiments.report import print_scan, write_record
from ptycho_torch.model import physics
from ptycho_torch.model.networks import UNetGenerator
from ptycho_torch.model.object_network import correct_object, mean_covered_amplitude
from ptycho_torch.pretrained import load_object_network
from ptycho_torch.model.refine import data_misfit, flat_start, refine
from ptycho_torch.model.stitching import Canvas
from ptycho.scan_file import read_scan

def sweep(ds, canvas, k):
    s = flat_start(ds, canvas)
    return refine(s, ds, k, progress=False) if k else s

def misfit(ds, rec, obj):
    """Sum over scan points of the modulus misfit of ``obj`` (H, W complex, sweep units) on ``rec``'s canvas."""
    return data_misfit(dataclasses.replace(rec, object=obj), ds)

def normalise(obj, coverage):
    """``obj`` in units of its mean covered amplitude, the covered mask and that amplitude."""
    scale, covered = mean_covered_amplitude(obj, coverage)
    return (obj / scale).astype(np.complex64), covered, scale

def prepare(scans, ks, out: Path, shipped):
    from benchmarks.bench_pretrained import build_dataset
    out.mkdir(parents=True, exist_ok=True)
    files = []
    for scan in scans:
        truth = read_scan(scan, load_diffraction=False).objectGuess
        need = [k for k in ks if not (out / f"{scan.stem}-k{k}.npz").is_file()]
        if need:
            ds, _, _ = build_dataset(shipped, scan, out / "mm" / scan.stem, 512)
            for k in need:
                r = sweep(ds, Canvas(truth.shape, (0, 0)), k)
                np.savez(out / f"{scan.stem}-k{k}.npz", obj=r.object, coverage=r.coverage, truth=truth)
        files += [out / f"{scan.stem}-k{k}.npz" for k in ks]
    return files

def net():
    return UNetGenerator(1, 1, base_filters=16, in_channels=2, batch_norm=True, use_shared_decoder=True).to(memory_format=torch.channels_last)

def apply(model, obj_n, bf16=True, phase_only=False):
    """obj_n (B, H, W) complex -> corrected (B, H, W); H, W multiples of 8."""
    x = torch.stack([obj_n.real - 1, obj_n.imag], dim=1).contiguous(memory_format=torch.channels_last)
    if bf16:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            a, p = model.features(x)
        amp, ph = model.heads(a.float(), p.float())
    else:
        amp, ph = model(x)
    if phase_only:
        return obj_n * torch.polar(torch.ones_like(ph[:, 0].float()), ph[:, 0].float())
    return obj_n * torch.polar(amp[:, 0].float(), ph[:, 0].float())

def train(args):
    from ptycho_torch.pretrained import load_pretrained
    torch.set_num_threads(1)
    from ptycho.corpus import write_training_corpus
    from ptycho_torch.pretrained.build import RECIPE

    corpus = Path(args.corpus)
    if len(list(corpus.glob("*.npz"))) != RECIPE["corpus"]["n_scans"]:
        write_training_corpus(corpus, RECIPE["corpus"]["n_scans"], RECIPE["corpus"]["seed"], n_points=RECIPE["corpus"]["n_points"], N=RECIPE["corpus"]["N"])
    scans = sorted(corpus.glob("*.npz"))
    files = prepare(scans, args.ks, Path(args.prep), load_pretrained())
    data = []
    for f in files:
        z = np.load(f)
        o, covered, _ = normalise(z["obj"], z["coverage"])
        w = (z["coverage"] / z["coverage"].max()).astype(np.float32) * covered
        data.append((torch.from_numpy(o), torch.from_numpy(z["truth"].astype(np.complex64)), torch.from_numpy(w)))
    gen = torch.Generator().manual_seed(args.seed)
    torch.manual_seed(args.seed)
    model = net(); model.train()
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=args.steps, pct_start=0.1)
    P, B = args.crop, args.batch
    t0 = time.process_time(); log = []
    for step in range(args.steps):
        xs, ys, ws = [], [], []
        for _ in range(B):
            o, y, w = data[int(torch.randint(len(data), (1,), generator=gen))]
            H, W = o.shape
            for _try in range(20):
                i = int(torch.randint(H - P + 1, (1,), generator=gen)); j = int(torch.randint(W - P + 1, (1,), generator=gen))
                if w[i + P // 2, j + P // 2] > 0.3: break
            xs.append(o[i:i + P, j:j + P]); ys.append(y[i:i + P, j:j + P]); ws.append(w[i:i + P, j:j + P])
        x, y, w = torch.stack(xs), torch.stack(ys), torch.stack(ws)
        out = apply(model, x, phase_only=args.phase_only)
        loss = physics.phase_invariant_error(out, y, w).mean()
        opt.zero_grad(); loss.backward(); opt.step(); sched.step()
        log.append(float(loss))
        if (step + 1) % 200 == 0:
            logging.info("step %d loss %.4f (input %.4f) %.1f CPU s", step + 1, np.mean(log[-200:]),
                         float(physics.phase_invariant_error(x, y, w).mean()), time.process_time() - t0)
    torch.save(model.state_dict(), Path(args.out))
    Path(args.out).with_suffix(".json").write_text(json.dumps({"args": vars(args), "cpu_s": time.process_time() - t0, "final": np.mean(log[-200:])}))

def evaluate(args):
    from benchmarks import bench_ptychi
    from benchmarks.bench_pretrained import held_out_scans, build_dataset
    from ptycho_torch.pretrained import load_pretrained
    torch.set_num_threads(1)
    shipped = load_pretrained()
    models = {}
    for spec in args.model:
        name, path = spec.split("=")
        phase_only = path.endswith(":phase"); path = path.removesuffix(":phase")
        if phase_only:
            m = net(); m.load_state_dict(torch.load(path, weights_only=True)); m.eval()
        else:  # the package's network (its inputs from its weights), applied as the package does (correct_object)
            m = load_object_network(path=path)
        m.phase_only = phase_only; models[name] = m
    scans = held_out_scans(Path(args.heldout), 2, args.heldout_seed, 512)
    scans["embedded"] = [ROOT / "datasets" / "sim_small.npz"]
    out = {}
    for kind, paths in scans.items():
        for scan in paths:
            loaded = bench_ptychi.load_scan(scan)
            truth = read_scan(scan, load_diffraction=False).objectGuess
            ds, _, _ = build_dataset(shipped, scan, Path(args.work) / f"mm-{scan.stem}", 512)
            rec = {}
            for k in args.sweeps:
                t = time.process_time(); r = sweep(ds, Canvas(truth.shape, (0, 0)), k); ts = time.process_time() - t
                rec[f"flat+{k}"] = {**bench_ptychi.score_reconstruction(r.object, loaded), "cpu_s": ts}
                if k not in args.k_net:
                    continue
                for name, m in models.items():
                    t = time.process_time()
                    with torch.inference_mode():
                        o, covered, scale = normalise(r.object, r.coverage)
                        if m.phase_only:
                            H, W = o.shape; Hp, Wp = -(-H // 8) * 8, -(-W // 8) * 8
                            x = torch.ones(1, Hp, Wp, dtype=torch.complex64); x[0, :H, :W] = torch.from_numpy(o)
                            y = apply(m, x, phase_only=True)[0, :H, :W].numpy()
                            y = np.where(covered | (r.object != 0), y, 0)
                            y_units = (y * scale).astype(np.complex64)  # back in the sweeps' units
                        else:
                            y_units = correct_object(m, r, bf16=True).object
                            y = y_units / scale
                    tc = ts + time.process_time() - t
                    rec[f"flat+{k} -> {name}"] = {**bench_ptychi.score_reconstruction(y, loaded), "cpu_s": tc}
                    if args.gate:
                        t = time.process_time()
                        m0, m1 = misfit(ds, r, r.object), misfit(ds, r, y_units)
                        chosen = y if m1 <= m0 else r.object
                        rec[f"flat+{k} -> {name} gated"] = {**bench_ptychi.score_reconstruction(chosen, loaded),
                                                             "cpu_s": tc + time.process_time() - t, "misfit_in": m0, "misfit_out": m1,
                                                             "accepted": bool(m1 <= m0)}
                    for extra in args.after:
                        t = time.process_time()
                        rr = refine(dataclasses.replace(r, object=y_units), ds, extra, progress=False)
                        rec[f"flat+{k} -> {name} +{extra}"] = {**bench_ptychi.score_reconstruction(rr.object, loaded), "cpu_s": tc + time.process_time() - t}
                    for extra in args.gate_after:
                        t = time.process_time()
                        from_net = refine(dataclasses.replace(r, object=y_units), ds, extra, progress=False)
                        from_sweeps = refine(r, ds, extra, progress=False)
                        m_net, m_sweeps = misfit(ds, r, from_net.object), misfit(ds, r, from_sweeps.object)
                        chosen = from_net.object if m_net <= m_sweeps else from_sweeps.object
                        rec[f"flat+{k} -> {name} gate+{extra}"] = {**bench_ptychi.score_reconstruction(chosen, loaded),
                                                                   "cpu_s": tc + time.process_time() - t, "misfit_net": m_net,
                                                                   "misfit_sweeps": m_sweeps, "accepted": bool(m_net <= m_sweeps),
                                                                   "net": bench_ptychi.score_reconstruction(from_net.object, loaded),
                                                                   "sweeps": bench_ptychi.score_reconstruction(from_sweeps.object, loaded)}
            out[scan.stem] = {"kind": kind, "ways": rec}
            print_scan(scan.stem, kind, rec)
    write_record(out, args.json)

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("ptycho_torch").setLevel(logging.WARNING); logging.getLogger("ptycho").setLevel(logging.WARNING)
    p = argparse.ArgumentParser()
    p.add_argument("mode"); p.add_argument("--ks", type=int, nargs="+", default=[5]); p.add_argument("--prep", default="data/experiments/canvas-prep"); p.add_argument("--corpus", default="data/experiments/corpus-48-seed1")
    p.add_argument("--steps", type=int, default=2000); p.add_argument("--batch", type=int, default=16); p.add_argument("--crop", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3); p.add_argument("--seed", type=int, default=0); p.add_argument("--heldout-seed", type=int, default=1000); p.add_argument("--phase-only", action="store_true"); p.add_argument("--out", default="data/experiments/canvas.pt")
    p.add_argument("--model", action="append", default=[]); p.add_argument("--heldout", default="data/experiments/heldout1000"); p.add_argument("--work", default="data/experiments/canvas-eval")
    p.add_argument("--sweeps", type=int, nargs="+", default=[3, 5, 8, 10, 15, 20]); p.add_argument("--k-net", type=int, nargs="+", default=[5, 10])
    p.add_argument("--json", default="data/experiments/canvas_eval.json"); p.add_argument("--after", type=int, nargs="*", default=[]); p.add_argument("--gate", action="store_true")
    p.add_argument("--gate-after", type=int, nargs="*", default=[])
    a = p.parse_args()
    train(a) if a.mode == "train" else evaluate(a)
