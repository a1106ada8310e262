"""``ptycho-train``: train PtychoPINN on a scan NPZ (or a directory of them) and print the checkpoint path."""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Literal, NamedTuple

from ptycho.scan_file import ScanFile, read_scan, scan_files
from ptycho.validation import DIFFRACTION_UNITS
from ptycho_torch.cli import (EXIT_OK, positive_float, UsageError, UsageParser, add_lock_timeout_argument, adopt_library_loggers, configure_logging, parse_or_status,
                              positive_int, run_reporting_errors)
from ptycho_torch.config_file import DEFAULT_PRESET, PRESETS, ConfigFile, apply_preset, read_config_file
from ptycho_torch.config_params import DataConfig, InferenceConfig, ModelConfig, TrainingConfig
from ptycho_torch.config_resolve import check_strategy, grid_side, require_supported
from ptycho_torch.store.atomic import removed_if_left_empty, require_writable_directory

logger = logging.getLogger("ptycho_torch.train")

PROG = "ptycho-train"


@dataclass
class DataSection(DataConfig):
    """The config file's ``data`` section: DataConfig's fields and the diffraction units of the scans."""

    diffraction_units: Literal["auto", "amplitude", "counts"] = "auto"


class TrainConfigs(NamedTuple):
    data: DataConfig
    model: ModelConfig
    training: TrainingConfig
    inference: InferenceConfig
    diffraction_units: str


def data_config(section: DataSection) -> DataConfig:
    """The DataConfig of a config file's ``data`` section (its ``diffraction_units`` set apart)."""
    return DataConfig(**{f.name: getattr(section, f.name) for f in fields(DataConfig)})


SECTIONS = {"data": DataSection, "model": ModelConfig, "training": TrainingConfig, "inference": InferenceConfig}  # DatagenConfig drives no training


def build_parser() -> argparse.ArgumentParser:
    parser = UsageParser(prog=PROG, description=__doc__, epilog="exit status: 0 trained, 2 usage or input error (one line on "
                         "stderr), 3 internal error, 130 interrupted")
    parser.add_argument("data", type=Path, help="scan NPZ or a directory of scan NPZ files")
    parser.add_argument("--config", type=Path, help="JSON or YAML file with sections data, model, training, inference (or data_config, model_config, ...; field names of ptycho_torch.config_params)")
    parser.add_argument("--preset", choices=sorted(PRESETS),
                        help=f"starting settings, under the config file and the options (default: {DEFAULT_PRESET}; "
                             "ptychopinn: PtychoPINN's own, every field at its config_params default)")
    parser.add_argument("--init", metavar="MODEL", help="fine-tune: start from the weights of a shipped model (pretrained) or of "
                        "a checkpoint file; the network architecture is the checkpoint's, the training settings come from "
                        "the preset, the config file and the options")
    parser.add_argument("--output-dir", type=Path, default=Path("training_outputs"), help="runs are written to OUTPUT_DIR/run_<UTC time> (default: training_outputs)")
    parser.add_argument("--data-dir", type=Path, help="memory map and groups cache directory (default: OUTPUT_DIR/memmap)")
    parser.add_argument("--epochs", type=positive_int, help="override training.epochs")
    parser.add_argument("--n-groups", type=positive_int, help="override training.n_groups (default when unset: one group per scan point)")
    parser.add_argument("--nphotons", type=positive_float, help="override data.nphotons (photons per pattern of the scan)")
    parser.add_argument("--diffraction-units", choices=DIFFRACTION_UNITS, help="units of the scans' diffraction (default: "
                        "data.diffraction_units, else auto: integer dtypes are photon counts, floats amplitudes)")
    parser.add_argument("--seed", type=int, default=None, help="seed of the network initialisation (default: 0; refused with --init, "
                        "whose weights are the initial model's)")
    parser.add_argument("--precision", choices=("fp32", "bf16", "auto"), default="fp32",
                        help="the U-Net's arithmetic in training (default fp32; bf16 is faster on CPUs with native bfloat16 and was "
                             "used for the shipped model; auto: bf16 where the device computes it natively)")
    parser.add_argument("--threads", type=positive_int, help="torch threads per training process, all it computes with (given, "
                        "no loader workers start; default: OMP_NUM_THREADS when set, else the cores this process may use less its loader workers)")
    add_lock_timeout_argument(parser)
    parser.add_argument("--quiet", action="store_true", help="no progress bar, warnings only")
    parser.add_argument("--debug", action="store_true", help="debug logging and tracebacks on errors")
    return parser


def parse_args(argv=None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def build_configs(args: argparse.Namespace, first_scan: Path, files: list[Path] | None = None, sizes: dict | None = None):
    """The four configs from ``--preset``, ``--config`` and the options (later ones win), checked against the first scan before any work
    (and, for the default of one group per scan point, against the point counts of every scan of ``files``; ``sizes``: the
    scans' sizes read so far, :func:`_scan_size`'s memo, filled here)."""
    read = read_config_file(args.config, SECTIONS) if args.config else ConfigFile.defaults(SECTIONS)
    preset = args.preset or DEFAULT_PRESET
    apply_preset(preset, read.configs, read.given)
    section, model, training, inference = read.configs.values()
    data = data_config(section)
    prefix = f"{args.config}: " if args.config else ""
    spelled = {"DataConfig": read.spelled["data"], **{type(config).__name__: read.spelled[name] for name, config in read.configs.items() if name != "data"}}
    require_supported(data, model, training, inference, where={name: prefix + section_name for name, section_name in spelled.items()})
    check_strategy(training.strategy, f"{prefix}{read.spelled['training']}.strategy")  # as the file spells the section
    with ScanFile(first_scan) as scan_file:
        layout = scan_file.pattern_layout(scan_file.diffraction_key())
        n_points = len(scan_file.load("xcoords"))
    where = f"{args.config}: {read.spelled['data']}" if args.config else "data"
    if "N" in read.given["data"] and data.N != layout.N:
        raise UsageError(f"{where}.N={data.N} contradicts the {layout.N} x {layout.N} diffraction patterns of {first_scan}; "
                         f"set data.N to {layout.N} or leave it out (it defaults to the pattern size)")
    data.N = layout.N
    init = getattr(args, "init", None)
    if init and getattr(args, "seed", None) is not None:
        raise UsageError(f"--seed {args.seed} seeds the network's random initialisation, which --init {init} replaces by its weights "
                         "(the run would be the same with any seed); leave --seed out, or train from random weights without --init")
    if init:
        model, data = _adopt_initial_architecture(init, model, data, read, args)
    _settle_channels(data, read.given["data"], where)
    if args.nphotons is not None:
        data.nphotons = args.nphotons
    if args.epochs is not None:
        training.epochs = args.epochs
    if args.n_groups is not None:
        training.n_groups = args.n_groups
    elif training.n_groups is None:
        training.n_groups = n_points
        _require_one_count(first_scan, n_points, {path: _scan_size(path, sizes)[0] for path in files or []})
    _require_paths_of_the_command(args, read.given["training"], training, [args.data, first_scan, *(files or [])],
                                  f"{prefix}{read.spelled['training']}")
    training.train_data_file = training.test_data_file = str(first_scan)
    training.output_dir = str(args.output_dir)
    return TrainConfigs(data, model, training, inference, args.diffraction_units or section.diffraction_units)


def _require_paths_of_the_command(args: argparse.Namespace, given: frozenset[str], training, scans: list[Path], where: str) -> None:
    """``ptycho-train`` takes its scans as arguments and writes into ``--output-dir``; the file's ``train_data_file``,
    ``test_data_file`` or ``output_dir`` naming other paths would be recorded in the run's configs and not used: refused.
    ``scans``: the command's argument (a scan or a directory of them) and the scan files it trains on."""
    def same(a, b) -> bool:
        return Path(a).expanduser().resolve() == Path(b).expanduser().resolve()

    for name in ("train_data_file", "test_data_file"):  # None (PtychoPINN's files spell it out as null) names no path
        if name in given and getattr(training, name) is not None and not any(same(getattr(training, name), scan) for scan in scans):
            raise UsageError(f"{where}.{name}={getattr(training, name)!r} is not a scan this run trains on: ptycho-train trains on the "
                             f"scans given as its argument and validates on a strip of their groups; remove {name} from the file, "
                             "or give that scan as the argument")
    if "output_dir" in given and not same(training.output_dir, args.output_dir):
        raise UsageError(f"{where}.output_dir={training.output_dir!r} is not where this run writes (--output-dir {args.output_dir}): "
                         f"give --output-dir {training.output_dir}, or remove output_dir from the file")


def _scan_size(path: Path, known: dict | None = None) -> tuple[int, int]:
    """``(points, pattern side)`` of a scan, its arrays checked against the NPZ contract (a malformed file is refused
    naming its key); neither the diffraction nor the object is read. ``known``: sizes read before (and kept), so one
    command reads each scan once."""
    if known is not None and path in known:
        return known[path]
    scan = read_scan(path, load_diffraction=False, load_object=False)
    size = len(scan.xcoords), scan.N
    if known is not None:
        known[path] = size
    return size


def _require_one_count(first_scan: Path, n_points: int, counts: dict[Path, int]) -> None:
    """One group per scan point is one ``n_groups`` for every file only when the scans (``counts``: points per file) hold as many
    points: refused otherwise (the first scan's count was used for all, so a longer scan lost points and a shorter one failed
    after the memory maps)."""
    others = {path: count for path, count in counts.items() if count != n_points}
    if others:
        fewest = min([n_points, *others.values()])
        listed = ", ".join(f"{path.name} {count}" for path, count in [(first_scan, n_points), *others.items()][:6])
        raise UsageError(f"the scans hold different numbers of points ({listed}), and training draws one number of groups per scan "
                         f"file (by default the first scan's {n_points}); pass --n-groups G (groups per scan file, at most {fewest}), "
                         "or train on scans of one length")


def check_scans(files: list[Path], data: DataConfig, training: TrainingConfig, sizes: dict | None = None) -> None:
    """Every scan has the first one's pattern size and, for groups of several patterns, at least ``training.n_groups`` points
    (``ptycho-train`` does not oversample; groups of one pattern are capped at the points, as in PtychoPINN): refused naming
    the file, before any memory map is written. ``sizes``: :func:`_scan_size`'s memo."""
    C = int(data.grid_size[0]) * int(data.grid_size[1])
    for path in files:
        n_points, N = _scan_size(path, sizes)
        if N != data.N:
            raise UsageError(f"{path}: its patterns are {N} x {N} but the other scans' (and data.N) are {data.N} x {data.N}; "
                             "train on scans of one pattern size (move the others out of the directory)")
        if C > 1 and n_points < int(training.n_groups):
            raise UsageError(f"{path}: holds {n_points} scan points, fewer than the {training.n_groups} groups per scan file asked "
                             f"for (training.n_groups, --n-groups); ptycho-train draws at most one group of {C} per point: pass "
                             f"--n-groups {n_points} or fewer")


def _adopt_initial_architecture(init: str, model: ModelConfig, data: DataConfig, read: ConfigFile, args):
    """``(model, data)`` with the architecture of the ``--init`` network; a config file or an explicit ``--preset``
    that sets an architecture field to another value is refused, naming the field, both values and the fix."""
    from ptycho_torch.model.fine_tuning import adopt_architecture, architecture_differences, load_initial_network

    path, network = load_initial_network(init, data.N)
    sections = ("data", "model")
    setters = []  # (what sets the fields, {section: field names}, how to stop it)
    if args.config:
        setters.append((lambda section: f"{args.config}: {read.spelled[section]}", {s: read.given[s] for s in sections},
                        "remove it from the config file"))
    if args.preset:
        chosen = PRESETS[args.preset].sections
        setters.append((lambda section: f"--preset {args.preset}: {section}", {s: frozenset(chosen.get(s, {})) for s in sections},
                        "drop --preset"))
    for origin, fields, fix in setters:
        for name, ours, theirs in architecture_differences(network, model, data, fields):
            section, field = name.split(".")
            raise UsageError(
                f"{origin(section)}.{field}={ours!r} differs from the network of --init {init} ({path}), which has {field}={theirs!r}; "
                f"the architecture comes from the initial model: {fix}, or train from random weights without --init"
            )
    logger.info("fine-tuning from %s (%s): its network architecture, the training settings of the preset, config file and options", init, path)
    return adopt_architecture(network, model, data)


def _settle_channels(data: DataConfig, given: frozenset, where: str) -> None:
    """``C`` follows ``grid_size`` unless the file set it; groups must be square (:func:`grid_side`) and ``K`` must fill them."""
    side = grid_side(data.grid_size, data.C if "C" in given else None, where=where, square_fix="use e.g. [2, 2]",
                     channels_fix="set C to {size} or leave it out")
    data.C = side * side
    if data.K < data.C:
        raise UsageError(f"{where}.K={data.K} neighbours cannot fill groups of grid_size {side} x {side} = {data.C} patterns; "
                         f"set K to at least {data.C}")


def check_memory(files: list[Path], data: DataConfig, training: TrainingConfig) -> None:
    """Refuse scans in the wrong units (positions within a pixel, group regions beyond memory), before any work."""
    from ptycho.scan_file import read_scan
    from ptycho.scan_geometry import check_scan_geometry
    from ptycho_torch.model import footprint

    for path in files:
        scan = read_scan(path, load_diffraction=False, load_object=False)
        check_scan_geometry(str(path), scan.xcoords, scan.ycoords, scan.probeGuess, scan.N)
        reach = footprint.group_reach_bound(scan.xcoords, scan.ycoords, data.K) if data.C > 1 else 0.0
        footprint.check_region(footprint.region_side(data.N, reach), int(training.batch_size) * data.C, str(path))


def set_torch_threads(requested: int | None, training: TrainingConfig) -> int:
    """Compute with the threads :func:`choose_threads` picks for this process and return the loader workers it may
    start: none beside ``--threads N`` (N is all the process computes with), else at most the cores its threads
    (``OMP_NUM_THREADS`` when set, else one) leave free.
    Each choice is logged once (INFO)."""
    import os

    import torch

    from ptycho_torch.threads import choose_threads, environment_threads, spare_loader_workers

    processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    asked = int(training.num_workers)
    omp = environment_threads()
    if requested is not None:
        workers, why = 0, f"as --threads {requested} is all this process computes with"
    elif omp is not None:
        workers, why = spare_loader_workers(asked, processes, threads=omp), f"the cores OMP_NUM_THREADS={omp} leaves free"
    else:
        workers, why = spare_loader_workers(asked, processes), "the cores this machine has to spare"
    choice = choose_threads(requested, workers, processes)
    torch.set_num_threads(choice.threads)
    logger.info("torch computes with %d thread(s) (%s); --threads N to change", torch.get_num_threads(), choice.reason)
    if workers < asked:
        logger.info("TrainingConfig.num_workers=%d: using %d loader worker(s), %s", asked, workers, why)
    return workers


def data_module(diffraction_units: str):
    """PtychoDataModule building its dataset (on each process's ``setup``) with these diffraction units."""
    from ptycho_torch.dset_loader_pt_mmap import PtychoDataset
    from ptycho_torch.model.training import PtychoDataModule, needs_ground_truth

    class DataModule(PtychoDataModule):
        def setup(self, stage=None):
            if self.dataset is None:
                self.dataset = PtychoDataset(self.source, self.data_config, self.model_config, self.training_config,
                                             data_dir=self.data_dir, ground_truth=needs_ground_truth(self.model_config),
                                             progress=self.progress, lock_timeout=self.lock_timeout, diffraction_units=diffraction_units)
            super().setup(stage)

    return DataModule


def main(argv=None) -> int:
    args = parse_or_status(build_parser(), argv)
    if isinstance(args, int):
        return args
    configure_logging(args.quiet, args.debug)
    return run_reporting_errors(PROG, train, args, args.debug)


def train(args: argparse.Namespace) -> int:
    """Check everything that can be checked, then train; prints the best checkpoint of the new run directory."""
    files = scan_files(args.data)
    sizes = {}  # each scan's size, read once for both checks
    configs = build_configs(args, files[0], files, sizes)
    check_scans(files, configs.data, configs.training, sizes)
    check_memory(files, configs.data, configs.training)
    data_dir = args.data_dir or args.output_dir / "memmap"
    with removed_if_left_empty(data_dir, args.output_dir):  # e.g. a scan refused while its memory map was built
        require_writable_directory(data_dir, None if args.data_dir else  # the default, under --output-dir: that option is the one to change
                                   f"choose another --output-dir (the memory maps go to its memmap/ unless --data-dir is given)")
        return _train_with(args, configs, data_dir)


def _train_with(args: argparse.Namespace, configs: TrainConfigs, data_dir: Path) -> int:
    """Train into a new run directory of ``args.output_dir``, the memory maps in ``data_dir``."""
    data, model_config, training, inference, units = configs
    workers = set_torch_threads(args.threads, training)

    from lightning.pytorch.utilities import rank_zero_only

    from ptycho_torch.model import PtychoPINN_Lightning
    from ptycho_torch.model.training import build_trainer
    from ptycho_torch.run_dirs import discard_failed_run, new_run_dir
    from ptycho_torch.workflow import train_model

    adopt_library_loggers()  # lightning added its own console handler when imported just now

    # Rank 0 creates the run directory; Lightning gives its checkpoint directory to every other DDP rank.
    run_dir = new_run_dir(args.output_dir) if rank_zero_only.rank == 0 else args.output_dir / "run_of_rank_0"
    try:
        module = data_module(units)(args.data, data, model_config, training, data_dir=data_dir, progress=not args.quiet,
                                    lock_timeout=args.lock_timeout, max_loader_workers=workers)
        model = PtychoPINN_Lightning(model_config, data, training, inference, seed=args.seed or 0)
        from ptycho_torch.model.pinn import choose_precision
        from ptycho_torch.model.training import choose_accelerator

        model.network.precision = choose_precision(args.precision, "cuda" if choose_accelerator(training)[0] == "gpu" else "cpu")
        if args.init:
            from ptycho_torch.model.fine_tuning import load_initial_network, start_from

            start_from(model, load_initial_network(args.init, data.N)[1])
        trainer = build_trainer(training, run_dir, progress=not args.quiet)
    except BaseException:
        if rank_zero_only.rank == 0:
            discard_failed_run(run_dir)
        raise
    best = train_model(model, module, trainer, run_dir, discard_on_failure=rank_zero_only.rank == 0)
    if trainer.is_global_zero:
        print(best)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
