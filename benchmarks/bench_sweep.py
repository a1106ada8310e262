"""One refinement sweep against its floor: FFT FLOPs and bytes moved per sweep, counted, beside the CPU s it takes.

    .venv/bin/python benchmarks/bench_sweep.py                       # datasets/sim_small.npz, 512 points, one thread
    .venv/bin/python benchmarks/bench_sweep.py --scan SCAN --json benchmarks/figures/sweep_floor.json

Counts one sweep of the default ``RefinementUpdate`` from a unit object (``bench_floor.WorkCounter``: FFT transforms and
their ``5 n log2 n`` FLOPs, bytes read and written by every other operator, gathers and scatters included) and one
parallel update; times ``--repeats`` rounds of ``--sweeps`` sweeps each (``time.process_time``, set-up excluded) and
measures this core's ``fft2`` rate and copy bandwidth (``bench_floor.fft_benchmark``, ``bandwidth_benchmark``). The floor
is FFT FLOPs at that rate plus bytes at that bandwidth; it is not a strict bound (small tensors stay in cache).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.bench_floor import WorkCounter, bandwidth_benchmark, fft_benchmark, git_commit  # noqa: E402
from benchmarks.bench_model import EMBEDDED  # noqa: E402
from benchmarks.bench_pretrained import build_dataset  # noqa: E402
from ptycho_torch.model import refine as refinement  # noqa: E402
from ptycho_torch.pretrained import load_pretrained  # noqa: E402


def sweep_of(dataset, update: refinement.RefinementUpdate, track_misfit: bool):
    """The package's ``_Sweep`` for ``dataset`` on its default canvas, and the unit object it starts from."""
    start = refinement.flat_start(dataset)
    sweep = refinement._sweep_factory(dataset, start.canvas, 0, refinement.PATTERNS_PER_BATCH)(update, track_misfit=track_misfit)
    return sweep, torch.from_numpy(start.object).to(torch.complex64).reshape(-1)


def measure(sweep, obj, sweeps: int, repeats: int) -> dict:
    with torch.inference_mode():
        counter = WorkCounter()
        with counter:
            sweep(obj)
        obj = sweep(obj)  # warm-up
        rounds = []
        for _ in range(repeats):
            began = time.process_time()
            for _ in range(sweeps):
                obj = sweep(obj)
            rounds.append((time.process_time() - began) / sweeps)
    return {"fft_transforms": counter.fft_transforms, "fft_flops": counter.fft_flops, "bytes": sum(counter.bytes.values()) - sum(
        v for k, v in counter.bytes.items() if k.startswith("fft:")), "fft_bytes": sum(v for k, v in counter.bytes.items() if k.startswith("fft:")),
            "top_bytes": dict(counter.bytes.most_common(8)), "s_per_sweep": statistics.median(rounds), "s_range": [min(rounds), max(rounds)]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scan", type=Path, default=EMBEDDED)
    parser.add_argument("--sweeps", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    load_start = os.getloadavg()
    dataset, _, _ = build_dataset(load_pretrained(), args.scan, Path(tempfile.mkdtemp(prefix="bench_sweep_")), 512)
    fft, bandwidth = fft_benchmark(args.repeats), bandwidth_benchmark(args.repeats)
    rows = {}
    for label, update, track in (("sweep (64 points, misfit tracked)", refinement.RefinementUpdate(), True),
                                 ("sweep (64 points, no misfit)", refinement.RefinementUpdate(plateau=0.0), False),
                                 ("parallel update", refinement.PARALLEL, False)):
        r = measure(*sweep_of(dataset, update, track), args.sweeps, args.repeats)
        r["floor_s"] = r["fft_flops"] / (fft["gflops"] * 1e9) + (r["bytes"] + r["fft_bytes"]) / (bandwidth["large"]["gb_per_s"] * 1e9)
        rows[label] = r
        print(f"{label}: {r['s_per_sweep'] * 1e3:.1f} ms per sweep ({r['s_range'][0] * 1e3:.1f}-{r['s_range'][1] * 1e3:.1f}); "
              f"{r['fft_transforms']} transforms, {r['fft_flops'] / 1e6:.0f} MFLOP ({r['fft_flops'] / fft['gflops'] / 1e6:.1f} ms at "
              f"{fft['gflops']:.1f} GFLOP/s); {(r['bytes'] + r['fft_bytes']) / 1e6:.0f} MB moved "
              f"({(r['bytes'] + r['fft_bytes']) / bandwidth['large']['gb_per_s'] / 1e6:.1f} ms at {bandwidth['large']['gb_per_s']:.1f} GB/s); "
              f"floor {r['floor_s'] * 1e3:.1f} ms, achieved / floor {r['s_per_sweep'] / r['floor_s']:.2f}", flush=True)
    record = {"commit": git_commit(), "scan": str(args.scan), "points": len(dataset.experiments[0].scan.xcoords), "threads": 1,
              "torch": torch.__version__, "load_average_start": load_start, "load_average_end": os.getloadavg(), "fft": fft,
              "bandwidth": bandwidth, "rows": rows}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(record, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
