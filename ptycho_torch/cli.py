"""``ptycho-memmap`` (or ``python -m ptycho_torch.cli``): build, list, verify, plot and clean the memory maps and groups caches of scan files."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
import traceback
import warnings
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

PROG = "ptycho-memmap"
EXIT_OK = 0
EXIT_MISMATCH = 1
EXIT_USAGE = 2
EXIT_INTERNAL = 3
DEFAULT_DATA_DIR = "data/memmap"
_COMPARE_CHUNK = 1024

EXIT_CODES = """exit status:
  0  success
  1  verify found a mismatch, a missing cache or an invalid cache
  2  usage or input error (one line on stderr says what and how to fix it)
  3  internal error (a bug: a traceback is printed)"""


class UsageError(Exception):
    """A problem with the command line or its inputs; the message says how to fix it."""


class UsageParser(argparse.ArgumentParser):
    """Usage errors as one line on stderr and exit status 2 (every command of this package)."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}; see {self.prog} --help\n")


USER_ERRORS = (UsageError, ValueError, TypeError, OSError, ImportError)  # bad input: one line, exit 2


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (never raises for bad input)."""
    parser = build_parser()
    args = parse_or_status(parser, argv)
    if isinstance(args, int):
        return args
    if args.command is None:
        print(f"{PROG}: error: choose a command: build, info, verify, plot or clean; see {PROG} --help", file=sys.stderr)
        return EXIT_USAGE
    configure_logging(args.quiet, args.debug)
    return run_reporting_errors(f"{PROG} {args.command}", args.handler, args, args.debug)


def parse_or_status(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace | int:
    """The parsed arguments, or the exit status when ``--help`` or a usage error was already printed."""
    try:
        return parser.parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE


def report_interrupted(label: str, exc: KeyboardInterrupt, default: str = "interrupted") -> int:
    """One line on stderr for Ctrl-C (the interruption's own words, e.g. which training run it stopped, else ``default``);
    returns the exit status 130."""
    print(f"{label}: {str(exc) or default}", file=sys.stderr)
    return 130


def run_reporting_errors(label: str, handler, args, debug: bool = False) -> int:
    """``handler(args)``'s exit status; bad input is one line on stderr and exit 2, a bug a traceback and exit 3."""
    try:
        return handler(args)
    except KeyboardInterrupt as exc:  # Ctrl-C; training says which run it stopped
        return report_interrupted(label, exc)
    except USER_ERRORS as exc:
        if debug:
            traceback.print_exc()
        print(f"{label}: error: {one_line(exc)}", file=sys.stderr)
        return EXIT_USAGE
    except Exception:
        traceback.print_exc()
        print(f"{label}: internal error (please report it with the traceback above)", file=sys.stderr)
        return EXIT_INTERNAL


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every command."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--quiet", action="store_true", help="no progress bars, warnings and results only")
    common.add_argument("--debug", action="store_true", help="debug logging and tracebacks on errors")

    parser = UsageParser(
        prog=PROG,
        description="Memory maps and groups caches of ptychography scan files (NPZ) for the PyTorch data pipeline.",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    def command(name: str, handler, summary: str, description: str):
        sub = commands.add_parser(
            name, parents=[common], help=summary, description=description, epilog=EXIT_CODES,
            formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False,
        )
        sub.set_defaults(handler=handler)
        return sub

    build = command("build", _build, "build the memory map and groups cache of scan files",
                    "Copy the diffraction of each scan NPZ into a memory map and cache its groups; reuses valid ones.")
    _add_scan_arguments(build)
    add_lock_timeout_argument(build)
    build.add_argument("--remake", action="store_true", help="rebuild the memory map and regroup even if valid")

    info = command("info", _info, "list the caches in a data directory",
                   "List every memory map and groups cache with its dataset, parameters, size, age and validity.")
    _add_data_dir_arguments(info)
    info.add_argument("--json", action="store_true", help="print a JSON list instead of a table")

    verify = command("verify", _verify, "regroup in memory and compare with the cache",
                     "Regroup each scan from its NPZ in memory and compare with its groups cache (indices exactly, "
                     "coordinates and normalisation to the bit) and its memory map with the diffraction.")
    _add_scan_arguments(verify)

    plot = command("plot", _plot, "draw the groups over the object (needs matplotlib)",
                   "Draw the scan positions and each group's outline over the object amplitude into a PNG, "
                   "using the groups cache (built if needed).")
    _add_scan_arguments(plot)
    add_lock_timeout_argument(plot)
    plot.add_argument("-o", "--output", type=Path, default=Path("groups.png"), help="PNG to write (default: groups.png)")
    plot.add_argument("--max-groups", type=non_negative_int, default=200, help="outline at most this many groups (default: 200)")

    clean = command("clean", _clean, "remove the files this tool wrote",
                    "Remove the memory maps, groups caches, locks and temporaries written by this tool, judged by their "
                    "contents (a file merely named like one is kept, and so is its directory); leaves no lock file "
                    "behind. Without --yes, only lists what would be removed.")
    _add_data_dir_arguments(clean)
    clean.add_argument("--yes", action="store_true", help="really remove the files")
    add_lock_timeout_argument(clean)
    return parser


GROUPING_DEFAULTS = {"gridsize": 2, "n_groups": None, "K": 6, "seed": None, "N": None, "sequential": False,
                     "oversampling": False, "pool_size": None}  # DataConfig's and ptycho's TrainingConfig's defaults


def _add_scan_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", metavar="PATH", type=Path, help="a scan NPZ or a directory of them")
    parser.add_argument("--config", type=Path, default=None, metavar="FILE",
                        help="torch configs as JSON (or YAML, with PyYAML): {\"data\": {...}, \"model\": {...}, \"training\": {...}} "
                             "(or data_config, model_config, training_config), the file ptycho-train reads; builds exactly the cache a PtychoDataset with these configs reuses "
                             "(instead of the grouping options below)")
    grouping = parser.add_argument_group("grouping (must match the training config to reuse the cache; defaults are DataConfig's)")
    grouping.add_argument("--gridsize", type=positive_int, default=None, help="groups of gridsize**2 patterns (default: 2)")
    grouping.add_argument("--n-groups", type=positive_int, default=None,
                          help="number of groups per scan file (default: 512, as a training config without n_groups)")
    grouping.add_argument("--K", "--neighbor-count", dest="K", type=positive_int, default=None,
                          help="nearest neighbours to draw each group from (default: 6)")
    grouping.add_argument("--seed", type=non_negative_int, default=None,
                          help="subsample seed (default: none, a random draw as in PtychoPINN)")
    grouping.add_argument("--N", type=positive_int, default=None, help="pattern size (default: the file's)")
    grouping.add_argument("--sequential", action="store_true", default=None, help="take the first scan points instead of a random sample")
    grouping.add_argument("--oversampling", action="store_true", default=None, help="allow more groups than scan points")
    grouping.add_argument("--pool-size", type=positive_int, default=None, help="neighbour pool when oversampling (default: K)")
    parser.add_argument("--units", choices=("auto", "amplitude", "counts"), default=None,
                        help="diffraction units; auto: integer dtypes are photon counts (default: data.diffraction_units of "
                             "--config, as ptycho-train reads it, else auto)")
    parser.add_argument("--layout", choices=("auto", "nNN", "NNn"), default="auto",
                        help="diffraction stack layout when n == N makes it ambiguous: nNN, or legacy NNn (default: auto)")
    parser.add_argument("--data-dir", type=Path, default=Path(DEFAULT_DATA_DIR), help=f"where caches live (default: {DEFAULT_DATA_DIR})")


def add_lock_timeout_argument(parser: argparse.ArgumentParser) -> None:
    """``--lock-timeout SECONDS``: how long to wait for another process building the same scan."""
    parser.add_argument("--lock-timeout", type=non_negative_float, default=None, metavar="SECONDS",
                        help="give up after waiting this long for another process building the same scan "
                             "(default: wait for ever, with a warning naming that process every minute)")


def _add_data_dir_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("data_dir", metavar="DATA_DIR", type=Path, nargs="?", default=None,
                        help=f"the data directory (default: {DEFAULT_DATA_DIR})")
    parser.add_argument("--data-dir", dest="data_dir_option", type=Path, default=None, help="same as DATA_DIR")


def _build(args) -> int:
    files = _scan_files(args.path)
    import ptycho_torch.memmap_bridge  # noqa: F401  (imported before timing the first file)

    for path in _progress(files, args, "scan files"):
        started = time.perf_counter()
        experiment = _bridge(path, args, remake=args.remake).experiment
        action = "built" if experiment.regrouped else "reused"
        print(f"{action} {path}: {experiment.n_groups} groups of {experiment.grouping.C}, "
              f"cache {experiment.cache_path} ({time.perf_counter() - started:.1f} s)")
    return EXIT_OK


def _info(args) -> int:
    data_dir = _existing_data_dir(args)
    from ptycho_torch.store.inventory import list_caches

    entries = list_caches(data_dir)
    if args.json:
        print(json.dumps([entry.as_dict() for entry in entries], indent=1))
        return EXIT_OK
    if not entries:
        print(f"no caches in {data_dir}")
        return EXIT_OK
    rows = [("STATUS", "KIND", "DATASET", "PARAMETERS", "SIZE", "AGE", "PATH")]
    rows += [
        ("valid" if e.valid else "stale", e.kind, Path(e.source).name if e.source else "?", _parameters_text(e.kind, e.parameters),
         _size_text(e.size_bytes), _age_text(e.age_seconds), str(e.path))
        for e in entries
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[-1])
    for e in entries:
        if not e.valid:
            print(f"stale: {e.path}: {e.problem}")
    n_stale = sum(not e.valid for e in entries)
    print(f"{len(entries)} cache(s), {n_stale} stale, {_size_text(sum(e.size_bytes for e in entries))} in {data_dir}")
    return EXIT_OK


def _verify(args) -> int:
    results = [_verify_one(path, args) for path in _scan_files(args.path)]
    return EXIT_OK if all(results) else EXIT_MISMATCH


def _plot(args) -> int:
    from ptycho_torch.plot import require_matplotlib, write_groups_plot

    files = _scan_files(args.path)
    if len(files) != 1:
        raise UsageError(f"plot draws one scan file but {args.path} holds {len(files)}; pass one of its NPZ files")
    require_matplotlib()  # fail before any build when matplotlib is missing
    output = args.output
    if not output.parent.is_dir():
        raise UsageError(f"directory {output.parent} for -o does not exist; create it or choose another path")
    _require_replaceable_png(output, files[0])
    bridge = _bridge(files[0], args, remake=False)
    print(write_groups_plot(bridge, output, max_groups=args.max_groups))
    return EXIT_OK


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _require_replaceable_png(output: Path, scan: Path) -> None:
    """``plot -o`` replaces only a PNG: never the scan it draws, a link, a directory or any other file (before any build)."""
    if output.is_symlink():
        raise UsageError(f"-o {output} is a symbolic link; ptycho-memmap never writes through a link; choose another path")
    if output.is_dir():
        raise UsageError(f"-o {output} is a directory; give a file name, e.g. {output / 'groups.png'}")
    if not output.exists():
        return
    if os.path.samefile(output, scan):
        raise UsageError(f"-o {output} is the scan {scan} itself; plot never overwrites its input; choose another path, e.g. groups.png")
    if not output.is_file():
        raise UsageError(f"-o {output} exists and is not a regular file; choose another path")
    if output.stat().st_size == 0:
        return  # an empty file (e.g. from mktemp --suffix .png) holds nothing to lose
    with open(output, "rb") as handle:
        if handle.read(len(PNG_SIGNATURE)) != PNG_SIGNATURE:
            raise UsageError(f"-o {output} exists and is not a PNG; plot replaces only PNG files: move it away or choose another path")


def _clean(args) -> int:
    data_dir = _existing_data_dir(args)
    from ptycho_torch.store.inventory import owned_files, remove_owned
    from ptycho_torch.store.locks import directory_lock

    found = owned_files(data_dir)
    if not found:
        print(f"nothing to remove in {data_dir}")
        return EXIT_OK
    total = sum(files.size_bytes for files in found)
    n_files = sum(len(files.ours) for files in found)
    verb = "removing" if args.yes else "would remove"
    print(f"{verb} {n_files} file(s), {_size_text(total)}, in {len(found)} dataset director{'y' if len(found) == 1 else 'ies'}:")
    for files in found:
        print(f"  {files.directory}/: {', '.join(p.name for p in files.ours)}")
        for other in files.others:
            print(f"    keeping {other} (not provably written by {PROG})")
    if not args.yes:
        print("nothing removed; run again with --yes to remove these files")
        return EXIT_OK
    removed = 0
    for files in found:
        with directory_lock(files.directory, args.lock_timeout):  # waits for a build in progress
            removed += len(remove_owned(files.directory))
    print(f"removed {removed} file(s) from {data_dir}")
    return EXIT_OK


def _verify_one(path: Path, args) -> bool:
    from ptycho.raw_data import RawData
    from ptycho_torch.store.inventory import check_groups_cache
    from ptycho_torch.data_settings import grouping_key
    from ptycho_torch.experiment import dataset_directory
    from ptycho_torch.store.fingerprint import fingerprint_file
    from ptycho_torch.store.groups_cache import cache_path

    n_points, N = _pattern_count_and_size(path, args.layout)
    key = grouping_key(_training_config(path, args, (n_points, N)))
    _check_grouping(path, args, key.settings, n_points)
    if _draw_is_random(key.settings, n_points):
        raise UsageError(f"{path}: groups drawn without --seed are random, so a fresh grouping cannot reproduce them; "
                         "build and verify with the same --seed S")
    raw = RawData.from_file(path, diffraction_units=_units(args), layout=args.layout)
    fresh = raw.grouping(key.N, key.settings)
    fingerprint = fingerprint_file(path, (raw.xcoords, raw.ycoords, raw.xcoords_start, raw.ycoords_start))
    directory = dataset_directory(args.data_dir, path)
    cached_path = cache_path(directory, key)
    store = _valid_memory_map(path, directory, fingerprint, _units(args))
    if store is None:
        problems = [f"memory map in {directory} is missing or not valid for this file, so no groups cache made from it is either"]
    else:
        cached, problem = check_groups_cache(cached_path, fingerprint, key, store.identity)
        problems = [f"groups cache invalid: {problem}"] if cached is None else grouping_differences(cached, fresh)
        problems += _memory_map_problems(store, raw.diff3d)
    if problems:
        print(f"MISMATCH {path}: " + "; ".join(problems) + f" (run {PROG} build --remake with the same options to rebuild)")
        return False
    print(f"OK {path}: {fresh.n_groups} groups in {cached_path} equal a fresh grouping; the memory map equals the diffraction")
    return True


def grouping_differences(cached, fresh) -> list[str]:
    """What differs between two groupings: indices exactly, coordinates and norm bit for bit."""
    problems = []
    for name, expected in fresh.arrays().items():
        got = getattr(cached, name)
        if got.shape != expected.shape or got.dtype != expected.dtype:
            problems.append(f"{name} is {got.dtype}{got.shape}, a fresh grouping gives {expected.dtype}{expected.shape}")
        elif not np.array_equal(got, expected):
            rows = np.flatnonzero((got != expected).reshape(len(got), -1).any(axis=1))
            problems.append(f"{name} differs in {len(rows)} group(s), first group {rows[0]}")
    if cached.norm != fresh.norm:
        problems.append(f"norm is {cached.norm!r}, a fresh grouping gives {fresh.norm!r}")
    return problems


def _valid_memory_map(path: Path, directory: Path, fingerprint, units: str):
    from ptycho.scan_file import ScanFile
    from ptycho_torch.store.memmap import DiffractionMemmap, resolve_counts

    with ScanFile(path) as scan_file:
        counts = resolve_counts(scan_file, units)
    return DiffractionMemmap.open_valid(directory, fingerprint, counts)


def _memory_map_problems(store, diffraction: np.ndarray) -> list[str]:
    """The map's full checksum against its manifest, then every pattern against the scan file's diffraction."""
    from ptycho_torch.store.memmap import DIFFRACTION, sha256_file

    problems = []
    if sha256_file(store.directory / DIFFRACTION) != store.manifest.diffraction_sha256:
        problems.append(f"memory map {DIFFRACTION} does not match the checksum recorded when it was built (edited in place?)")
    stack = store.diffraction
    if stack.shape != diffraction.shape:
        return problems + [f"memory map has shape {stack.shape}, the file's diffraction {diffraction.shape}"]
    for start in range(0, len(stack), _COMPARE_CHUNK):
        stop = min(start + _COMPARE_CHUNK, len(stack))
        expected = np.asarray(diffraction[start:stop], dtype=np.float32)
        if not np.array_equal(stack[start:stop], expected):
            first = start + int(np.flatnonzero((stack[start:stop] != expected).reshape(stop - start, -1).any(axis=1))[0])
            return problems + [f"memory map pattern {first} differs from the file's diffraction"]
    return problems


def _draw_is_random(settings, n_points: int) -> bool:
    """Whether grouping with these settings draws from an unseeded generator."""
    from ptycho.grouping import needs_oversampling

    if settings.seed is not None:
        return False
    if needs_oversampling(n_points, settings):
        return True
    if settings.sequential_sampling:
        return False
    return settings.C > 1 or settings.nsamples < n_points


def _bridge(path: Path, args, remake: bool):
    from ptycho_torch.data_settings import grouping_key
    from ptycho_torch.memmap_bridge import MemmapDatasetBridge

    n_points, N = _pattern_count_and_size(path, args.layout)
    config = _training_config(path, args, (n_points, N))
    _check_grouping(path, args, grouping_key(config).settings, n_points)
    return MemmapDatasetBridge(
        path.resolve(),
        config,
        memmap_dir=args.data_dir,
        diffraction_units=_units(args),
        layout=args.layout,
        remake_map=remake,
        progress=not args.quiet,
        lock_timeout=args.lock_timeout,
    )


def _check_grouping(path: Path, args, settings, n_points: int) -> None:
    """Grouping settings that cannot group the scan's ``n_points``, refused before any work naming the file and, when the
    grouping options (not ``--config``) set them, this command's options."""
    from ptycho.grouping import check_group_request, needs_oversampling

    try:
        check_group_request(n_points, settings)
    except ValueError as exc:
        C = settings.C
        if args.config is not None:
            if needs_oversampling(n_points, settings) and not settings.enable_oversampling:
                raise UsageError(f"{path}: {args.config} asks for {settings.nsamples} groups (training.n_groups), more than its "
                                 f"{n_points} scan points; set n_groups to {n_points} or fewer") from None
            raise UsageError(f"{path}: {exc}") from None
        if needs_oversampling(n_points, settings) and not settings.enable_oversampling:
            default = " (the default)" if getattr(args, "n_groups", None) is None else ""
            problem = (f"--n-groups {settings.nsamples}{default} asks for more groups than its {n_points} scan points; "
                       f"give --n-groups {n_points} or fewer, or pass --oversampling (with --K or --pool-size of at least {C}) "
                       "to draw several groups per point")
        elif needs_oversampling(n_points, settings):
            pool = "--pool-size" if settings.neighbor_pool_size is not None else "--K (or --pool-size)"
            problem = f"--oversampling draws groups of {C} from each point's neighbour pool: give {pool} of at least {C}"
        elif n_points < C:
            problem = f"only {n_points} scan points but --gridsize {settings.gridsize} needs {C} per group; give a smaller --gridsize"
        elif settings.K < C:
            problem = f"--K {settings.K} neighbours cannot fill groups of {C} (--gridsize {settings.gridsize}); give --K {C} or more"
        else:
            problem = str(exc)
        raise UsageError(f"{path}: {problem}") from None


def _training_config(path: Path, args, points_and_size: tuple[int, int]):
    """The ``ptycho`` config whose grouping the command builds: from ``--config`` or from the grouping options;
    ``points_and_size``: the scan's points and pattern side (:func:`_pattern_count_and_size`)."""
    from ptycho.config.config import ModelConfig, TrainingConfig

    given = sorted(name for name in GROUPING_DEFAULTS if getattr(args, name) is not None)
    if args.config is not None:
        if given:
            options = ", ".join("--" + name.replace("_", "-") for name in given)
            raise UsageError(f"{options} cannot be combined with --config: put the setting in the config file, so "
                             "the training run that reads it reuses the cache")
        return _config_file_training_config(path, args.config, points_and_size)
    grouping = {name: getattr(args, name) if name in given else default for name, default in GROUPING_DEFAULTS.items()}
    N = grouping["N"] if grouping["N"] is not None else points_and_size[1]
    return TrainingConfig(
        model=ModelConfig(N=N, gridsize=grouping["gridsize"]),
        train_data_file=path,
        n_groups=grouping["n_groups"],
        neighbor_count=grouping["K"],
        subsample_seed=grouping["seed"],
        sequential_sampling=grouping["sequential"],
        enable_oversampling=grouping["oversampling"],
        neighbor_pool_size=grouping["pool_size"],
    )


def _config_file_training_config(path: Path, config_file: Path, points_and_size: tuple[int, int]):
    """What ``PtychoDataset(path, data, model, training)`` turns the file's configs into, read as ``ptycho-train`` reads the
    file: ``data.N`` left out is the scan's pattern size, ``data.C`` left out follows ``data.grid_size``, and ``training.n_groups`` left out one group per scan point
    (``points_and_size``), so the training run reuses the cache built here."""
    from ptycho_torch.config_resolve import to_ptycho_config

    configs, _, read = _read_config_file(config_file)
    n_points, pattern_size = points_and_size
    given = read.given["data"]
    if "N" not in given:
        configs.data.N = int(pattern_size)
    if "C" not in given:  # C follows grid_size unless the file sets it (ptycho-train's _settle_channels; a C set is checked later)
        configs.data.C = int(configs.data.grid_size[0]) * int(configs.data.grid_size[1])
    if configs.training.n_groups is None:
        configs.training.n_groups = int(n_points)
    return to_ptycho_config(path, configs.data, configs.model, configs.training)


def _read_config_file(config_file: Path):
    """``(TorchConfigs, the data section's diffraction_units, the file as read)`` of ``--config``: the file ``ptycho-train``
    reads, whose ``data`` section may also say the diffraction units (``data.diffraction_units``)."""
    from ptycho_torch.cli_train import DataSection, data_config
    from ptycho_torch.config_file import SECTIONS, TorchConfigs, read_config_file

    read = read_config_file(config_file, {**SECTIONS, "data": DataSection})
    sections = read.configs
    configs = TorchConfigs(data_config(sections["data"]), sections["model"], sections["training"], sections["inference"], sections["datagen"])
    return configs, sections["data"].diffraction_units, read


def _units(args) -> str:
    """``--units``, else ``data.diffraction_units`` of ``--config`` (as ``ptycho-train`` reads the file), else ``auto``; read once
    per command (kept as ``args.units``), however many scans it serves."""
    if args.units is None:
        args.units = _read_config_file(args.config)[1] if args.config is not None else "auto"
    return args.units


def _pattern_count_and_size(path: Path, layout: str = "auto") -> tuple[int, int]:
    from ptycho.scan_file import ScanFile

    with ScanFile(path, layout) as scan_file:
        stack = scan_file.pattern_layout(scan_file.diffraction_key())
    return stack.n, stack.N


def _scan_files(path: Path) -> list[Path]:
    from ptycho.scan_file import scan_files

    try:
        return scan_files(path)
    except FileNotFoundError as exc:
        raise UsageError(str(exc)) from None


def _existing_data_dir(args) -> Path:
    positional, option = args.data_dir, args.data_dir_option
    if positional is not None and option is not None and positional != option:
        raise UsageError(f"DATA_DIR {positional} and --data-dir {option} disagree; pass one of them")
    data_dir = positional or option or Path(DEFAULT_DATA_DIR)
    if not data_dir.is_dir():
        raise UsageError(f"data directory {data_dir} does not exist; pass the --data-dir used with {PROG} build")
    return data_dir


def _progress(items: list, args, description: str):
    if len(items) < 2 or args.quiet:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc=description, unit="file")


LIBRARY_LOGGERS = ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning")
"""Third-party loggers that install their own console handler and level; the commands route them through the root handler."""


def configure_logging(quiet: bool, debug: bool = False) -> None:
    """INFO (WARNING with ``quiet``, DEBUG with ``debug``) records of every logger on stderr, each once.

    Third-party loggers print through the same handler at the same level (:func:`adopt_library_loggers`,
    called again once lightning is imported); their tips and warnings about their own internals are
    dropped.
    """
    level = logging.DEBUG if debug else logging.WARNING if quiet else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    for handler in logging.getLogger().handlers:
        handler.addFilter(_drop_third_party_tips)
    logging.captureWarnings(True)  # warnings (e.g. a lock wait) as log lines like the rest
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"lightning\.")  # its own use of torch internals
    warnings.filterwarnings("ignore", message=r".*is smaller than the logging interval", module=r"lightning\.")
    adopt_library_loggers()


def adopt_library_loggers() -> None:
    """Make ``LIBRARY_LOGGERS`` print only through the root handler, at its level (lightning adds its own at import)."""
    for name in LIBRARY_LOGGERS:
        library = logging.getLogger(name)
        for handler in list(library.handlers):
            library.removeHandler(handler)
        library.setLevel(logging.NOTSET)
        library.propagate = True


def _drop_third_party_tips(record: logging.LogRecord) -> bool:
    return not (record.name.startswith(LIBRARY_LOGGERS) and "Tip:" in record.getMessage())


def one_line(exc: BaseException) -> str:
    """An exception as one line (an OSError as ``filename: reason``)."""
    if isinstance(exc, OSError) and exc.strerror and len(exc.args) >= 2:
        text = exc.strerror if exc.filename is None else f"{exc.filename}: {exc.strerror}"
    else:
        text = str(exc) or type(exc).__name__
    return " ".join(text.split())


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def non_negative_int(text: str) -> int:
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text!r}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text!r}")
    return value


def non_negative_float(text: str) -> float:
    """argparse type: a finite number of seconds >= 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of seconds, got {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number of seconds >= 0, got {text!r}")
    return value


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None


def _parameters_text(kind: str, parameters: dict) -> str:
    if not parameters:
        return "?"
    if kind != "groups":
        units = "counts->amplitude" if parameters.get("counts_to_amplitude") else "amplitude"
        return f"{parameters['n']}x{parameters['N']}x{parameters['N']} {units}"
    text = (f"N={parameters['N']} gridsize={parameters['gridsize']} K={parameters['K']} "
            f"n_groups={parameters['nsamples']} seed={parameters['seed']}")
    if parameters.get("sequential_sampling"):
        text += " sequential"
    if parameters.get("enable_oversampling"):
        text += f" oversampling pool={parameters.get('neighbor_pool_size')}"
    return text


def _size_text(n_bytes: int) -> str:
    for unit, scale in (("GB", 2**30), ("MB", 2**20), ("kB", 2**10)):
        if n_bytes >= scale:
            return f"{n_bytes / scale:.1f} {unit}"
    return f"{n_bytes} B"


def _age_text(seconds: float) -> str:
    for unit, scale in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= scale:
            return f"{seconds / scale:.0f} {unit}"
    return f"{seconds:.0f} s"


if __name__ == "__main__":
    sys.exit(main())
