"""Know the floor: what one core can do for the U-Net and the physics, and how close reconstruction and training come.

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_floor.py            # one thread, ~3 min
    PYTHONPATH=$PWD OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_floor.py --quick    # fewer repeats

1. Work per group, counted: the U-Net's FLOPs (``torch.utils.flop_counter.FlopCounterMode``, 2 per
   multiply-add) forward and forward+backward; the physics' FFTs (``5 n log2 n`` per transform of ``n``
   points, ``n = N^2``) and the bytes its other operators read and write (a ``TorchDispatchMode`` sums the
   tensors each aten operator reads and writes; views are free, a broadcast input counts its stored
   elements once).
2. What one core sustains: 3x3 convolutions at the U-Net's shapes (fp32 NCHW, fp32 channels-last,
   bf16 channels-last; forward at the inference batch, forward+backward at the training batches),
   batched 64 x 64 complex64 ``fft2``, and a large copy (memory bandwidth).
3. The floor per group = U-Net time at the micro-benchmarks' rate at its own layer shapes + FFT
   FLOPs / FFT rate + other bytes / copy bandwidth; achieved against it for (a) ``reconstruct()`` of
   ``datasets/sim_small.npz`` (every group predicted, and the 'cover' selection) and (b) a training step
   (``PtychoPINN_Lightning.loss_of``, backward, Adam) at batch 8 and 16, fp32 and bf16, and within it the U-Net's own
   forward and backward alone (against its convolutions' floor).

Prints a Markdown table and writes JSON (default ``benchmarks/figures/floor.json``). CPU seconds are
``time.process_time()`` of this process; the load average is recorded with every timing.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ptycho_torch.config_params import DataConfig, InferenceConfig, ModelConfig, TrainingConfig  # noqa: E402

EMBEDDED = ROOT / "datasets" / "sim_small.npz"
N, C, IN_CHANNELS = 64, 4, 8
# The default architecture (bench_model.py's 'default' preset).
PRESET = dict(n_filters_scale=1, base_filters=16, cbam_encoder=False, use_shared_decoder=True, batch_norm=True)
INFERENCE_BATCH = 64  # ptycho-reconstruct's --batch-size default
TRAINING_BATCHES = (8, 16)
CONV_OPS = {"conv2d", "convolution", "_convolution", "convolution_backward", "mkldnn_convolution", "addmm", "mm", "bmm"}
# FFT operators as a dispatch mode sees them: the low-level ones, or (under inference_mode) torch.fft's own.
FFT_OPS = {"_fft_c2c", "_fft_r2c", "_fft_c2r", "fft_fft2", "fft_ifft2", "fft_fftn", "fft_ifftn"}
GATHERS = {"index", "gather", "take", "index_select"}  # read what they output (and the indices), not their whole source
SCATTERS = {"index_add", "index_add_", "index_put", "index_put_", "scatter_add", "scatter_add_"}  # read-modify-write where indexed


# ---- configs -------------------------------------------------------------------------------------

def configs(train_file: Path = EMBEDDED, truth_loss_weight: float = 300.0):
    data = DataConfig(N=N, grid_size=(2, 2), K=7, nphotons=1e6, subsample_seed=42)
    model = ModelConfig(**PRESET, object_big=True, truth_loss_weight=truth_loss_weight)
    training = TrainingConfig(n_groups=512, epochs=2, batch_size=8, learning_rate=2e-3, scheduler="WarmupCosine", lr_warmup_epochs=0,
                              lr_min_ratio=0.0, device="cpu", num_workers=0, train_data_file=str(train_file), test_data_file=str(train_file))
    return data, model, training, InferenceConfig(batch_size=INFERENCE_BATCH)


def load_average() -> float:
    return os.getloadavg()[0]


def cpu_time(fn, repeats: int, min_s: float = 0.2) -> dict:
    """``fn()``'s CPU seconds per call: ``repeats`` rounds of as many calls as fill ``min_s``; median and range of the rounds."""
    fn()  # warm-up (oneDNN primitive creation, allocator)
    started, calls = time.process_time(), 0
    while time.process_time() - started < min_s / 4 or calls < 1:
        fn()
        calls += 1
    per_call = (time.process_time() - started) / calls
    calls = max(1, int(min_s / max(per_call, 1e-7)))
    rounds = []
    load = load_average()
    for _ in range(repeats):
        started = time.process_time()
        for _ in range(calls):
            fn()
        rounds.append((time.process_time() - started) / calls)
    return {"median_s": statistics.median(rounds), "min_s": min(rounds), "max_s": max(rounds), "calls_per_round": calls,
            "rounds": rounds, "load_1min": load}


# ---- counting ------------------------------------------------------------------------------------

def _stored_bytes(t: torch.Tensor) -> int:
    """Bytes of the distinct elements a tensor addresses (a stride-0 broadcast axis counts once)."""
    elements = 1
    for size, stride in zip(t.shape, t.stride()):
        if stride != 0:
            elements *= size
    return elements * t.element_size()


def fft_flops(shape, dims, kind: str = "_fft_c2c") -> float:
    """``5 n log2 n`` per complex transform of ``n`` points (half for real-input or real-output transforms)."""
    n = math.prod(int(shape[d]) for d in dims)
    batch = math.prod(int(s) for s in shape) / n
    flops = 5 * n * math.log2(n) * batch if n > 1 else 0.0
    return flops / 2 if kind in ("_fft_r2c", "_fft_c2r") else flops


def _fft_dims(name: str, x: torch.Tensor, args, kwargs) -> tuple:
    if name.startswith("_fft_"):
        return tuple(args[1])
    dims = kwargs.get("dim", args[2] if len(args) > 2 else None)
    if dims is None:
        return (-2, -1) if name.endswith("2") else tuple(range(x.ndim))
    return tuple(dims) if isinstance(dims, (list, tuple)) else (dims,)


def _moved_bytes(name: str, args, kwargs, out) -> int:
    tensors = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
    outputs = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
    if name in GATHERS:
        indices = sum(_stored_bytes(t) for t in tensors[1:] if not t.is_floating_point() and not t.is_complex())
        return 2 * sum(_stored_bytes(t) for t in outputs) + indices
    if name in SCATTERS:
        target, rest = tensors[0], tensors[1:]
        values = [t for t in rest if t.is_floating_point() or t.is_complex()]
        touched = sum(t.numel() for t in values) * target.element_size()
        copy = 0 if name.endswith("_") else 2 * _stored_bytes(target)  # the out-of-place form copies its target first
        return sum(_stored_bytes(t) for t in rest) + 2 * touched + copy
    return sum(_stored_bytes(t) for t in tensors) + sum(_stored_bytes(t) for t in outputs)


class WorkCounter(TorchDispatchMode):
    """Per aten operator: calls, bytes read and written, FFT transforms and FLOPs; convolutions kept apart."""

    def __init__(self):
        super().__init__()
        self.bytes = Counter()  # operator -> bytes of non-view operators
        self.calls = Counter()
        self.fft_flops = 0.0
        self.fft_transforms = 0
        self.section = "physics"
        self.by_section = Counter()  # section -> bytes of its non-conv, non-view operators

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = func.overloadpacket.__name__
        if getattr(func, "is_view", False):  # no data moved
            return out
        moved = _moved_bytes(name, args, kwargs or {}, out)
        self.calls[name] += 1
        if name in FFT_OPS:
            dims = _fft_dims(name, args[0], args, kwargs or {})
            self.fft_flops += fft_flops(args[0].shape, dims, name)
            self.fft_transforms += math.prod(int(s) for s in args[0].shape) // math.prod(int(args[0].shape[d]) for d in dims)
            self.bytes["fft:" + name] += moved
            return out
        if name in CONV_OPS:
            self.bytes["conv:" + name] += moved
            return out
        self.bytes[name] += moved
        self.by_section[self.section] += moved
        return out

    def other_bytes(self) -> int:
        return sum(v for k, v in self.bytes.items() if not k.startswith(("conv:", "fft:")))


def unet_flops(generator: torch.nn.Module, batch: int = 8) -> dict:
    """FLOPs per group of the generator, forward (eval) and forward+backward (train, weights' and activations' gradients)."""
    x = torch.randn(batch, IN_CHANNELS, N, N).contiguous(memory_format=torch.channels_last)
    generator.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        generator(x)
    forward = counter.get_total_flops() / batch
    generator.train()
    with FlopCounterMode(display=False) as counter:
        amplitude, phase = generator(x)
        (amplitude.sum() + phase.sum()).backward()
    generator.zero_grad(set_to_none=True)
    return {"forward_flops": forward, "forward_backward_flops": counter.get_total_flops() / batch}


def conv_layers(generator: torch.nn.Module) -> list[dict]:
    """Every convolution of the generator with its input shape at batch 1 (in the order they run)."""
    found = []
    hooks = [m.register_forward_hook(lambda m, i, o: found.append({"cin": m.in_channels, "cout": m.out_channels, "k": m.kernel_size[0],
                                                                   "H": i[0].shape[-2], "W": i[0].shape[-1]}))
             for m in generator.modules() if isinstance(m, torch.nn.Conv2d)]
    generator.eval()
    with torch.no_grad():
        generator(torch.zeros(1, IN_CHANNELS, N, N))
    for h in hooks:
        h.remove()
    return found


# ---- micro-benchmarks ----------------------------------------------------------------------------

CONV_MODES = {"fp32 NCHW": (torch.float32, torch.contiguous_format), "fp32 channels-last": (torch.float32, torch.channels_last),
              "bf16 channels-last": (torch.bfloat16, torch.channels_last)}


def conv_benchmark(layers: list[dict], repeats: int) -> dict:
    """Per conv mode: the generator's convolutions one by one at the inference batch (forward) and the training
    batches (forward+backward, the first layer without an input gradient): seconds per group and GFLOP/s."""
    shapes = Counter((l["cin"], l["cout"], l["k"], l["H"], l["W"]) for l in layers)
    results = {}
    for mode, (dtype, layout) in CONV_MODES.items():
        per_mode = {"shapes": [], "forward_s_per_group": 0.0}
        for batch_kind, batch in [("forward", INFERENCE_BATCH)] + [("forward_backward", b) for b in TRAINING_BATCHES]:
            total_s = total_flops = 0.0
            for (cin, cout, k, H, W), count in shapes.items():
                conv = torch.nn.Conv2d(cin, cout, k, padding=k // 2, bias=False).to(dtype=dtype, memory_format=layout)
                first = cin == IN_CHANNELS
                x = torch.randn(batch, cin, H, W, dtype=dtype).contiguous(memory_format=layout)
                if batch_kind == "forward":
                    def run(conv=conv, x=x):
                        with torch.no_grad():
                            conv(x)
                    flops = 2 * batch * cout * cin * k * k * H * W
                else:
                    x.requires_grad_(not first)
                    grad = torch.randn(batch, cout, H, W, dtype=dtype).contiguous(memory_format=layout)

                    def run(conv=conv, x=x, grad=grad):
                        conv(x).backward(grad)
                    flops = 2 * batch * cout * cin * k * k * H * W * (2 if first else 3)
                timing = cpu_time(run, repeats, min_s=0.1)
                total_s += count * timing["median_s"]
                total_flops += count * flops
                per_mode["shapes"].append({"kind": batch_kind, "batch": batch, "cin": cin, "cout": cout, "k": k, "H": H, "count": count,
                                           "gflops": flops / timing["median_s"] / 1e9, "s": timing["median_s"]})
            per_mode[f"{batch_kind}_b{batch}"] = {"s_per_group": total_s / batch, "gflops": total_flops / total_s / 1e9}
        results[mode] = per_mode
    return results


def fft_benchmark(repeats: int, batch: int = 256) -> dict:
    x = torch.randn(batch, N, N, dtype=torch.complex64)
    timing = cpu_time(lambda: torch.fft.fft2(x, norm="ortho"), repeats)
    flops = fft_flops(x.shape, (1, 2), "_fft_c2c")
    return {"batch": batch, "median_s": timing["median_s"], "gflops": flops / timing["median_s"] / 1e9,
            "gflops_range": [flops / timing["max_s"] / 1e9, flops / timing["min_s"] / 1e9], "load_1min": timing["load_1min"]}


def bandwidth_benchmark(repeats: int, megabytes: int = 512) -> dict:
    """A large copy (read + write) and, for comparison, a copy of 4 MiB (about one batch's tensor, cache-resident)."""
    out = {}
    for label, size in (("large", megabytes << 20), ("4MiB", 4 << 20)):
        src = torch.ones(size // 4, dtype=torch.float32)
        dst = torch.empty_like(src)
        timing = cpu_time(lambda: dst.copy_(src), repeats)
        out[label] = {"bytes": size, "gb_per_s": 2 * size / timing["median_s"] / 1e9,
                      "gb_per_s_range": [2 * size / timing["max_s"] / 1e9, 2 * size / timing["min_s"] / 1e9]}
    return out


# ---- achieved ------------------------------------------------------------------------------------

def build_dataset(data, model_config, training, data_dir: Path, ground_truth: bool):
    from ptycho_torch.dset_loader_pt_mmap import PtychoDataset

    return PtychoDataset(EMBEDDED, data, model_config, training, data_dir=data_dir, ground_truth=ground_truth, progress=False)


def count_reconstruct(network, dataset, groups: str) -> tuple[WorkCounter, int]:
    """The operators of one ``reconstruct()`` (fp32): the generator's forward counted apart by hooks."""
    from ptycho_torch.model.stitching import reconstruct

    counter = WorkCounter()
    pre = network.generator.register_forward_pre_hook(lambda *a: setattr(counter, "section", "unet"))
    post = network.generator.register_forward_hook(lambda *a: setattr(counter, "section", "physics"))
    done = _count_predicted(network)
    try:
        with counter:
            reconstruct(network, dataset, batch_size=INFERENCE_BATCH, progress=False, groups=groups)
    finally:
        pre.remove()
        post.remove()
    return counter, done()


def _count_predicted(network):
    """Wrap ``network.predict_patches`` to count the groups it predicts; the returned function unwraps and gives the count."""
    total = [0]
    original = network.predict_patches

    def counting(batch, probe, scale, **kw):
        total[0] += int(batch["images"].shape[0])
        return original(batch, probe, scale, **kw)

    network.predict_patches = counting

    def done() -> int:
        del network.predict_patches
        return total[0]

    return done


def time_reconstruct(network, dataset, groups: str, precision: str, repeats: int) -> dict:
    from ptycho_torch.model.stitching import reconstruct

    network.precision = precision
    reconstruct(network, dataset, batch_size=INFERENCE_BATCH, progress=False, groups=groups)  # warm-up
    rounds, load = [], load_average()
    for _ in range(repeats):
        started = time.process_time()
        reconstruct(network, dataset, batch_size=INFERENCE_BATCH, progress=False, groups=groups)
        rounds.append(time.process_time() - started)
    network.precision = "fp32"
    return {"median_s": statistics.median(rounds), "min_s": min(rounds), "max_s": max(rounds), "rounds": rounds, "load_1min": load}


def training_step_fn(module, optimizer, batch):
    def step():
        optimizer.zero_grad(set_to_none=True)
        loss = module.loss_of(batch)
        loss.backward()
        optimizer.step()
    return step


def time_unet_alone(module, batch, rounds: int, steps: int) -> dict:
    """CPU s per group of the U-Net's own forward and backward at ``batch`` (its batch norm, activations, pooling, upsampling,
    concatenations and heads included; the physics input precomputed; no loss, merge, forward model or optimizer): what a
    training step costs before any of the rest."""
    td, probe, scale = batch
    network = module.network
    with torch.no_grad():
        inputs = network.generator_input(td, probe, scale.reshape(-1))

    def step():
        module.zero_grad(set_to_none=True)
        torch.view_as_real(network.generator_output(inputs)).sum().backward()

    return steps_cpu_time(step, rounds, steps, len(inputs))


def steps_cpu_time(step, rounds: int, steps: int, groups_per_step: int) -> dict:
    """CPU s per group of ``step()``: 3 warm-up steps, then ``rounds`` rounds of ``steps`` steps; median and range."""
    for _ in range(3):
        step()
    per_round, load = [], load_average()
    for _ in range(rounds):
        started = time.process_time()
        for _ in range(steps):
            step()
        per_round.append((time.process_time() - started) / (steps * groups_per_step))
    return {"median": statistics.median(per_round), "min": min(per_round), "max": max(per_round), "rounds": per_round, "load_1min": load}


def count_training_step(module, optimizer, batch) -> WorkCounter:
    counter = WorkCounter()
    with counter:
        training_step_fn(module, optimizer, batch)()
    return counter


def command_cpu(args: list[str], env: dict | None = None) -> dict:
    """User+sys CPU s and peak RSS (MiB) of one child process (``os.wait4``)."""
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    stderr = proc.stderr.read().decode(errors="replace")
    proc.stderr.close()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} exited {proc.returncode}: {stderr[-2000:]}")
    return {"cpu_s": usage.ru_utime + usage.ru_stime, "user_s": usage.ru_utime, "sys_s": usage.ru_stime, "max_rss_mib": usage.ru_maxrss / 1024}


# ---- main ----------------------------------------------------------------------------------------

def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5, help="rounds per micro-benchmark (median and range)")
    parser.add_argument("--steps", type=int, default=20, help="training steps per timed round")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds of reconstruct() and of the training steps")
    parser.add_argument("--quick", action="store_true", help="2 rounds, 6 steps, 3 micro-benchmark repeats")
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "figures" / "floor.json")
    parser.add_argument("--workdir", type=Path, default=None, help="memory-map directory (default: a temporary one)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.quick:
        args.repeats, args.steps, args.rounds = 3, 6, 2
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    from ptycho_torch.model import PtychoPINN_Lightning

    record = {"date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), "commit": git_commit(),
              "torch": torch.__version__, "threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(),
              "cpu_capability": torch.backends.cpu.get_cpu_capability(), "load_1min_start": load_average(),
              "preset": PRESET, "N": N, "C": C, "in_channels": IN_CHANNELS}
    data, model_config, training, inference = configs()
    module = PtychoPINN_Lightning(model_config, data, training, inference, seed=0)
    network = module.network

    # 1. work per group
    record["unet"] = unet_flops(network.generator)
    layers = conv_layers(network.generator)
    record["unet"]["conv3x3_layers"] = sum(1 for l in layers if l["k"] == 3)

    # 2. what one core sustains
    record["conv"] = conv_benchmark([l for l in layers if l["k"] == 3], args.repeats)
    record["fft"] = fft_benchmark(args.repeats)
    record["bandwidth"] = bandwidth_benchmark(args.repeats)
    fft_rate = record["fft"]["gflops"] * 1e9
    bandwidth = record["bandwidth"]["large"]["gb_per_s"] * 1e9

    with tempfile.TemporaryDirectory(prefix="bench_floor_") as tmp:
        data_dir = args.workdir or Path(tmp)
        # 3a. reconstruction of the embedded scan
        dataset = build_dataset(data, model_config, training, data_dir, ground_truth=False)
        record["reconstruct"] = {}
        for groups in ("cover", "all"):
            counter, predicted = count_reconstruct(network, dataset, groups)
            physics = {"fft_flops": counter.fft_flops / predicted, "fft_transforms": counter.fft_transforms / predicted,
                       "bytes": counter.by_section["physics"] / predicted, "unet_other_bytes": counter.by_section["unet"] / predicted,
                       "top_ops_bytes": dict(Counter({k: v / predicted for k, v in counter.bytes.items()}).most_common(12))}
            entry = {"groups_predicted": predicted, "per_group_work": physics}
            for precision in ("fp32", "bf16"):
                mode = "fp32 channels-last" if precision == "fp32" else "bf16 channels-last"
                unet_s = record["conv"][mode][f"forward_b{INFERENCE_BATCH}"]["s_per_group"]
                floor = {"unet_conv_s": unet_s, "fft_s": physics["fft_flops"] / fft_rate,
                         "bytes_s": (physics["bytes"] + physics["unet_other_bytes"]) / bandwidth}
                floor["total_s"] = sum(floor.values())
                timing = time_reconstruct(network, dataset, groups, precision, args.rounds)
                entry[precision] = {"floor_per_group": floor, "reconstruct_cpu_s": timing,
                                    "achieved_s_per_group": timing["median_s"] / predicted,
                                    "floor_whole_s": floor["total_s"] * predicted,
                                    "achieved_over_floor": timing["median_s"] / (floor["total_s"] * predicted)}
            record["reconstruct"][groups] = entry
        # the whole command on the embedded scan (start-up, dataset, writing included) minus torch's import
        env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS=str(args.threads))
        torch_import = [command_cpu([sys.executable, "-c", "import torch"], env)["cpu_s"] for _ in range(args.rounds)]
        record["torch_import_cpu_s"] = torch_import
        checkpoint = Path(data_dir) / "floor.ckpt"
        torch.save({"state_dict": {f"network.{k}": v for k, v in network.state_dict().items()}, "hyper_parameters": network.configs()},
                   checkpoint)
        for groups in ("cover", "all"):
            for precision in ("fp32", "bf16"):
                runs = [command_cpu([sys.executable, "-m", "ptycho_torch.cli_reconstruct", str(checkpoint), str(EMBEDDED), "--output",
                                     str(Path(data_dir) / "out.npz"), "--no-png", "--quiet", "--threads", str(args.threads), "--groups", groups,
                                     "--precision", precision, "--data-dir", str(Path(data_dir) / "cmd-memmap")], env)
                        for _ in range(args.rounds)]
                beyond = [r["cpu_s"] - statistics.median(torch_import) for r in runs]
                entry = record["reconstruct"][groups][precision]
                entry["command_cpu_s_beyond_torch_import"] = {"median_s": statistics.median(beyond), "min_s": min(beyond), "max_s": max(beyond),
                                                              "runs": runs, "load_1min": load_average()}
                entry["command_over_floor"] = statistics.median(beyond) / entry["floor_whole_s"]

        # 3b. training step
        train_set = build_dataset(data, model_config, training, data_dir, ground_truth=True)
        record["training"] = {}
        for batch_size in TRAINING_BATCHES:
            batch = train_set.gather(np.arange(batch_size))
            counted = PtychoPINN_Lightning(model_config, data, training, inference, seed=0)
            optimizer = torch.optim.Adam(counted.parameters(), lr=2e-3)
            counter = count_training_step(counted, optimizer, batch)
            work = {"fft_flops": counter.fft_flops / batch_size, "fft_transforms": counter.fft_transforms / batch_size,
                    "bytes": counter.other_bytes() / batch_size,
                    "top_ops_bytes": dict(Counter({k: v / batch_size for k, v in counter.bytes.items()}).most_common(12))}
            entry = {"per_group_work": work}
            for precision in ("fp32", "bf16"):
                mode = "fp32 channels-last" if precision == "fp32" else "bf16 channels-last"
                floor = {"unet_conv_s": record["conv"][mode][f"forward_backward_b{batch_size}"]["s_per_group"],
                         "fft_s": work["fft_flops"] / fft_rate, "bytes_s": work["bytes"] / bandwidth}
                floor["total_s"] = sum(floor.values())
                timed = PtychoPINN_Lightning(model_config, data, training, inference, seed=0)
                timed.network.precision = precision
                timed.train()
                optimizer = torch.optim.Adam(timed.parameters(), lr=2e-3)
                timing = steps_cpu_time(training_step_fn(timed, optimizer, batch), args.rounds, args.steps, batch_size)
                achieved = timing["median"]
                entry[precision] = {"floor_per_group": floor, "s_per_group": timing,
                                    "groups_per_cpu_s": 1 / achieved, "achieved_over_floor": achieved / floor["total_s"],
                                    "unet_alone_s_per_group": time_unet_alone(timed, batch, args.rounds, args.steps)}
            record["training"][f"batch{batch_size}"] = entry
    record["load_1min_end"] = load_average()
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(record, indent=1, default=float) + "\n")
    print(markdown(record))
    print(f"\nwritten {args.json}")
    return 0


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3f}"


def markdown(r: dict) -> str:
    lines = [f"bench_floor: {r['date_utc']}, commit {r['commit']}, torch {r['torch']} ({r['cpu_capability']}), {r['threads']} thread(s), "
             f"load {r['load_1min_start']:.2f} -> {r['load_1min_end']:.2f}", "",
             "| work per group | value |", "|---|---:|",
             f"| U-Net forward FLOPs | {r['unet']['forward_flops'] / 1e6:.1f} M |",
             f"| U-Net forward+backward FLOPs | {r['unet']['forward_backward_flops'] / 1e6:.1f} M |"]
    for groups in ("cover", "all"):
        w = r["reconstruct"][groups]["per_group_work"]
        lines.append(f"| reconstruct ({groups}): physics FFTs / FFT FLOPs / other bytes (physics + U-Net non-conv) | "
                     f"{w['fft_transforms']:.1f} / {w['fft_flops'] / 1e6:.2f} M / {(w['bytes'] + w['unet_other_bytes']) / 1e6:.2f} MB "
                     f"({w['bytes'] / 1e6:.2f} + {w['unet_other_bytes'] / 1e6:.2f}) |")
    for key, entry in r["training"].items():
        w = entry["per_group_work"]
        lines.append(f"| training step {key}: FFTs / FFT FLOPs / non-conv bytes | {w['fft_transforms']:.1f} / {w['fft_flops'] / 1e6:.2f} M / "
                     f"{w['bytes'] / 1e6:.2f} MB |")
    lines += ["", "| one core sustains | rate |", "|---|---:|"]
    for mode, entry in r["conv"].items():
        cells = [f"fwd b{INFERENCE_BATCH}: {entry[f'forward_b{INFERENCE_BATCH}']['gflops']:.1f} GFLOP/s "
                 f"({_ms(entry[f'forward_b{INFERENCE_BATCH}']['s_per_group'])} ms/group)"]
        cells += [f"fwd+bwd b{b}: {entry[f'forward_backward_b{b}']['gflops']:.1f} GFLOP/s ({_ms(entry[f'forward_backward_b{b}']['s_per_group'])} ms/group)"
                  for b in TRAINING_BATCHES]
        lines.append(f"| U-Net 3x3 convolutions, {mode} | {'; '.join(cells)} |")
    f = r["fft"]
    lines.append(f"| fft2 64x64 complex64, batch {f['batch']} | {f['gflops']:.2f} GFLOP/s ({f['gflops_range'][0]:.2f}-{f['gflops_range'][1]:.2f}) |")
    for label, b in r["bandwidth"].items():
        lines.append(f"| copy {label} (read + write) | {b['gb_per_s']:.1f} GB/s ({b['gb_per_s_range'][0]:.1f}-{b['gb_per_s_range'][1]:.1f}) |")
    lines += ["", "| achieved vs floor | floor ms/group (U-Net + FFT + bytes) | achieved ms/group (median, min-max) | achieved / floor |",
              "|---|---:|---:|---:|"]
    for groups in ("cover", "all"):
        e = r["reconstruct"][groups]
        for precision in ("fp32", "bf16"):
            p, fl, t = e[precision], e[precision]["floor_per_group"], e[precision]["reconstruct_cpu_s"]
            n = e["groups_predicted"]
            lines.append(f"| reconstruct() sim_small, {groups} ({n} groups), {precision} | {_ms(fl['total_s'])} ({_ms(fl['unet_conv_s'])} + "
                         f"{_ms(fl['fft_s'])} + {_ms(fl['bytes_s'])}) | {_ms(p['achieved_s_per_group'])} ({_ms(t['min_s'] / n)}-{_ms(t['max_s'] / n)}) | "
                         f"{p['achieved_over_floor']:.2f} |")
    for groups in ("cover", "all"):
        e = r["reconstruct"][groups]
        for precision in ("fp32", "bf16"):
            p = e[precision]
            c = p["command_cpu_s_beyond_torch_import"]
            lines.append(f"| whole command sim_small, {groups}, {precision}, --no-png (CPU s beyond `import torch`) | {p['floor_whole_s']:.3f} s | "
                         f"{c['median_s']:.2f} s ({c['min_s']:.2f}-{c['max_s']:.2f}) | {p['command_over_floor']:.1f} |")
    for key, entry in r["training"].items():
        for precision in ("fp32", "bf16"):
            p, fl, s = entry[precision], entry[precision]["floor_per_group"], entry[precision]["s_per_group"]
            lines.append(f"| training step {key}, {precision} (loss_of + backward + Adam) | {_ms(fl['total_s'])} ({_ms(fl['unet_conv_s'])} + "
                         f"{_ms(fl['fft_s'])} + {_ms(fl['bytes_s'])}) | {_ms(s['median'])} ({_ms(s['min'])}-{_ms(s['max'])}); "
                         f"{p['groups_per_cpu_s']:.1f} groups/CPU s | {p['achieved_over_floor']:.2f} |")
    for key, entry in r["training"].items():
        for precision in ("fp32", "bf16"):
            u = entry[precision].get("unet_alone_s_per_group")
            if u:
                lines.append(f"| the U-Net alone in that step, {key}, {precision} (forward + backward, no physics, loss or Adam) | "
                             f"{_ms(entry[precision]['floor_per_group']['unet_conv_s'])} (its convolutions) | "
                             f"{_ms(u['median'])} ({_ms(u['min'])}-{_ms(u['max'])}) | {u['median'] / entry[precision]['floor_per_group']['unet_conv_s']:.2f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
