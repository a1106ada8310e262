"""``ptycho-reconstruct``: stitch a scan's object with a trained checkpoint into an NPZ (and a PNG)."""

from __future__ import annotations

import argparse
import gc
import logging
import os
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

from ptycho.quality import REFERENCE_LABEL, reconstruction_quality, resample_onto_canvas
from ptycho.scan_file import RECONSTRUCTION_MARKER
from ptycho.validation import DIFFRACTION_UNITS
from ptycho_torch.workflow import MAX_SWEEPS, STARTS  # torch-free
from ptycho_torch.cli import (EXIT_OK, UsageError, UsageParser, add_lock_timeout_argument, configure_logging, non_negative_int, parse_or_status,
                              positive_int, run_reporting_errors)

logger = logging.getLogger("ptycho_torch.reconstruct")

PROG = "ptycho-reconstruct"
DEVICE_CHOICES = "auto, cpu, cuda or cuda:<index>"
GROUP_SELECTIONS = ("cover", "all")  # ptycho_torch.model.stitching.GROUP_SELECTIONS, without importing torch to parse
DEFAULT_GROUPS = "cover"
DEFAULT_BATCH_SIZE = 64  # groups per inference batch
REFINE_POINTS, REFINE_MOMENTUM, REFINE_PLATEAU = 64, 0.5, 0.002  # refine.RefinementUpdate's defaults, without importing torch to parse
DEFAULT_DATA_DIR = Path("data/memmap")  # ptycho-memmap's default: caches shared with it and with PtychoDataset's examples
DIRECTORY_FIX = {"scan": "pass one of its .npz files (reconstruct each scan separately)",
                 "checkpoint": "pass the .ckpt file, e.g. RUN_DIR/checkpoints/best-checkpoint.ckpt"}


def build_parser() -> argparse.ArgumentParser:
    parser = UsageParser(prog=PROG, description=__doc__, epilog="exit status: 0 written, 2 usage or input error (one line on "
                         "stderr), 3 internal error, 130 interrupted")
    parser.add_argument("checkpoint", help="a .ckpt written by ptycho-train, or the name of a shipped model ('pretrained': "
                        "64 x 64 patterns)")
    parser.add_argument("scan", type=Path, help="scan NPZ to reconstruct")
    parser.add_argument("--output", type=Path, help="output NPZ, written exactly there (default: <scan stem>_reconstruction.npz "
                        "beside the scan; scan discovery skips reconstructions by their contents)")
    parser.add_argument("--canvas", choices=["scan", "object"], default="scan",
                        help="'scan': ceil(scan span + N) centred on the scan's bounding box (Ptychodus's rule, default); "
                             "'object': the grid of the scan's objectGuess (positions are its pixels)")
    parser.add_argument("--batch-size", type=positive_int, default=None, help=f"groups per inference batch (default: {DEFAULT_BATCH_SIZE})")
    parser.add_argument("--n-groups", type=positive_int, help="groups to build (default: one per scan point)")
    parser.add_argument("--groups", choices=GROUP_SELECTIONS, default=None,
                        help="'cover': predict only the fewest groups that hold every pattern (default, about a third of them); "
                             "'all': every group built (slower; benchmarks/RESULTS.md has both)")
    add_method_arguments(parser)
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR,
                        help=f"memory map and groups cache directory (default: {DEFAULT_DATA_DIR}, relative to the working directory)")
    parser.add_argument("--diffraction-units", choices=DIFFRACTION_UNITS, default="auto",
                        help="units of the scan's diffraction (default: auto: integer dtypes are photon counts, floats amplitudes)")
    parser.add_argument("--threads", type=positive_int, help="torch threads (default: OMP_NUM_THREADS when set, else the cores "
                        "this process may use)")
    parser.add_argument("--device", default="auto", help=f"{DEVICE_CHOICES} (default: auto, the GPU when torch sees one)")
    add_lock_timeout_argument(parser)
    parser.add_argument("--no-png", action="store_true", help="do not write the amplitude/phase PNG")
    parser.add_argument("--quiet", action="store_true", help="no progress bar, warnings only")
    parser.add_argument("--debug", action="store_true", help="debug logging and tracebacks on errors")
    return parser


METHOD_OPTIONS = ("--start", "--refine", "--refine-points", "--refine-momentum", "--refine-plateau", "--object-network", "--precision")


def add_method_arguments(parser: argparse.ArgumentParser) -> None:
    """The options that say how the object is reconstructed (:data:`METHOD_OPTIONS`), shared with :func:`method_settings`."""
    parser.add_argument("--start", choices=STARTS, default="network",
                        help="'network': the network's single pass (default); 'physics': its physics input alone, without "
                             "the U-Net (0.35-0.42 CPU s less per 512 points); 'flat': a unit object, neither (needs --refine); "
                             "benchmarks/RESULTS.md compares them")
    parser.add_argument("--refine", type=sweep_count, default=0, metavar="ITERATIONS",
                        help="error-reduction sweeps over the whole object after the network's pass (or the physics input, "
                             "--start physics), with the known probe (default 0; benchmarks/RESULTS.md has quality against CPU s)")
    parser.add_argument("--refine-points", type=points_per_update, default=None, metavar="K|all",
                        help=f"with --refine: scan points per object update, in a fixed random order (default {REFINE_POINTS}); "
                             "'all': every point from the same object, the sum applied once per sweep (with --refine-momentum 0: "
                             "the parallel update, the only one before 2026-12-07; slower to converge)")
    parser.add_argument("--refine-momentum", type=fraction, default=None, metavar="M",
                        help=f"with --refine: share of the previous sweep's change added before each sweep, in [0, 1) (default {REFINE_MOMENTUM})")
    parser.add_argument("--refine-plateau", type=fraction, default=None, metavar="F",
                        help=f"with --refine (3 or more): once one of the first 20 sweeps lowers the data misfit by less than this "
                             f"fraction of the previous sweep's, the remaining sweeps correct every point from the same object, without momentum: "
                             f"they average the noise of low-dose scans; in [0, 1) (default {REFINE_PLATEAU}; 0: never)")
    parser.add_argument("--object-network", type=sweep_number, default=None, metavar="SWEEP",
                        help="with --start flat and --refine N: after sweep SWEEP (below N) the shipped whole-object network "
                             "corrects the object; the remaining sweeps run from its correction and from the object without it, "
                             "and the one that fits the measured patterns better is kept (those sweeps cost twice; "
                             "benchmarks/RESULTS.md has where it helps)")
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16"), default=None,
                        help="the network's arithmetic: 'auto' (default) is bf16 where the CPU or GPU computes it natively, else fp32")


def parse_args(argv=None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def main(argv=None) -> int:
    args = parse_or_status(build_parser(), argv)
    if isinstance(args, int):
        return args
    configure_logging(args.quiet, args.debug)
    return run_reporting_errors(PROG, reconstruct_command, args, args.debug)


def reconstruct_command(args: argparse.Namespace) -> int:
    """Check the inputs, the outputs and the sizes, then predict, stitch and write atomically."""
    from ptycho_torch.pretrained import UnknownModelError, resolve_checkpoint

    try:
        checkpoint = resolve_checkpoint(args.checkpoint)
    except UnknownModelError as exc:
        raise UsageError(str(exc)) from None
    for path, what in ((checkpoint, "checkpoint"), (args.scan, "scan")):
        _require_input_file(path, what)
    from ptycho.scan_file import scan_files

    check_start_options(args)
    check_refine_options(args)
    scan_files(args.scan)  # refuses a reconstruction given as the scan
    output = args.output or args.scan.with_name(f"{args.scan.stem}_reconstruction.npz")
    from ptycho_torch.store.atomic import removed_if_left_empty

    with removed_if_left_empty(output.parent):  # made for the output by the checks below: removed again if the scan is refused
        return _reconstruct(args, checkpoint, output)


def _reconstruct(args: argparse.Namespace, checkpoint: Path, output: Path) -> int:
    """:func:`reconstruct_command` once its options, checkpoint and scan file are known good."""
    from ptycho.scan_file import read_scan
    from ptycho.scan_geometry import check_scan_geometry
    from ptycho_torch.pretrained import UnknownModelError, model_for_pattern_size

    png = None if args.no_png else output.with_suffix(".png")
    if png == output:
        raise UsageError(f"--output {output} ends in .png, where the amplitude/phase picture goes; give the NPZ another "
                         "name (e.g. .npz) or pass --no-png")
    from ptycho.scan_file import is_reconstruction
    from ptycho_torch.plot import is_reconstruction_png

    outputs = [(path, option, ours) for path, option, ours in ((output, "--output", is_reconstruction),
                                                               (png, "the PNG (--no-png to skip it)", is_reconstruction_png)) if path is not None]
    for path, option, ours in outputs:
        check_output_path(path, option, inputs=(checkpoint, args.scan), replaceable=ours)
    scan = read_scan(args.scan, load_diffraction=False)
    check_scan_geometry(str(args.scan), scan.xcoords, scan.ycoords, scan.probeGuess, scan.N)
    _check_plateau_against_the_points(args, len(scan.xcoords))
    runs_a_network = args.start != "flat"  # a flat start runs no per-group network: any pattern size (the object network checks its own)
    if runs_a_network:
        try:
            model_for_pattern_size(args.checkpoint, scan.N)
        except UnknownModelError as exc:
            raise UsageError(f"{args.scan}: {exc}; or refine from a unit object, which needs no network: --start flat --refine 20") from None
    object_network = None
    if args.object_network:
        from ptycho_torch.pretrained import load_object_network, object_network_for_pattern_size

        try:
            object_network = load_object_network()  # missing, unreadable or another network's weights: refused before the memory map
        except UnknownModelError as exc:
            raise UsageError(f"--object-network: {exc}") from None
        try:
            object_network_for_pattern_size(scan.N)
        except UnknownModelError as exc:
            raise UsageError(f"{args.scan}: --object-network: {exc}") from None
    canvas = _canvas(args, scan)
    device = choose_device(args.device)

    set_torch_threads(args.threads)
    from ptycho_torch.dset_loader_pt_mmap import PtychoDataset
    from ptycho_torch.model.checkpoints import load_network
    from ptycho_torch.workflow import ReconstructionSettings, reconstruct_scan

    gc.freeze()  # the imports' objects (torch's above all) live to the end: the collector's full passes skip them (about 0.05 CPU s)
    model = load_network(checkpoint, map_location=device)
    if runs_a_network:
        _require_pattern_size(model, checkpoint, scan)
        if len(scan.xcoords) < int(model.C):
            raise UsageError(f"{args.scan}: only {len(scan.xcoords)} scan point(s), but the network of {checkpoint} reconstructs groups "
                             f"of {int(model.C)} neighbouring points; refine from a unit object, which forms no groups: --start flat --refine 20")
    if args.n_groups is not None and args.n_groups > len(scan.xcoords) and model.C > 1:  # groups of one are capped at the points
        raise UsageError(f"{args.scan}: --n-groups {args.n_groups} asks for more groups than its {len(scan.xcoords)} scan points; "
                         f"give at most {len(scan.xcoords)}, or leave it out (one group per scan point)")
    if args.start == "physics" and model.model_config.generator_input != "object_estimate":
        raise UsageError(f"--start physics: the network of {checkpoint} reads the diffraction itself "
                         f"(generator_input={model.model_config.generator_input!r}), it has no physics input; use --start network")
    training = replace(model.training_config, n_groups=args.n_groups or len(scan.xcoords), train_data_file=str(args.scan),
                       test_data_file=str(args.scan))
    data_config = replace(model.data_config, N=scan.N)  # the scan's size (the model's, where a network runs)
    if not runs_a_network:  # a flat start refines every scan point, from no group: groups of one (no neighbour search; any point count)
        data_config = replace(data_config, grid_size=(1, 1), C=1)
    dataset = PtychoDataset(args.scan, data_config, model.model_config, training, progress=not args.quiet,
                            data_dir=args.data_dir, lock_timeout=args.lock_timeout, diffraction_units=args.diffraction_units)
    settings = ReconstructionSettings(device=str(device), precision=args.precision or "auto", batch_size=args.batch_size or DEFAULT_BATCH_SIZE,
                                      groups=args.groups or DEFAULT_GROUPS,
                                      whole_scan=args.n_groups is None, refine_iterations=args.refine, progress=not args.quiet,
                                      refine_update=refine_update(args) if args.refine else None, start=args.start,
                                      object_network_after=args.object_network or 0)
    result = reconstruct_scan(model, dataset, settings, canvas=canvas, object_network=object_network)
    for path, option, ours in outputs:  # again: another program may have put a file there while this one computed
        refuse_foreign_output(path, option, ours)
    from ptycho_torch.store.atomic import make_directory

    make_directory(output.parent, "output directory", "choose another --output")  # a refused run beside this one may have removed it
    write_reconstruction(output, result)
    print(output)
    reference = None
    if scan.objectGuess is not None:
        reference = resample_onto_canvas(scan.objectGuess, result.object.shape, result.canvas.origin_px)
        log_scores(result.object, reference, result.coverage, args.scan)
    if png is not None:
        print(write_png(result.object, reference, png))
    return EXIT_OK


def sweep_count(text: str) -> int:
    """argparse type of ``--refine``: an integer from 0 to :data:`~ptycho_torch.workflow.MAX_SWEEPS`."""
    return _at_most_max_sweeps(non_negative_int(text), text)


def sweep_number(text: str) -> int:
    """argparse type of ``--object-network``: a sweep from 1 to :data:`~ptycho_torch.workflow.MAX_SWEEPS`."""
    return _at_most_max_sweeps(positive_int(text), text)


def _at_most_max_sweeps(value: int, text: str) -> int:
    if value > MAX_SWEEPS:
        raise argparse.ArgumentTypeError(f"at most {MAX_SWEEPS:,} sweeps, got {text!r}")
    return value


def points_per_update(text: str) -> int | str:
    """argparse type of ``--refine-points``: an integer >= 1, or ``'all'``."""
    return "all" if text.strip().lower() == "all" else positive_int(text)


def fraction(text: str) -> float:
    """argparse type of ``--refine-momentum`` and ``--refine-plateau``: a number in [0, 1)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number in [0, 1), got {text!r}") from None
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be a number in [0, 1), got {text!r}")
    return value


def check_start_options(args: argparse.Namespace) -> None:
    """Options of a network that ``--start`` does not run would do nothing: refused (``--start physics`` runs no U-Net,
    ``--start flat`` no network at all)."""
    unused = {"flat": ("--batch-size", "--n-groups", "--groups") + (() if args.object_network else ("--precision",)),
              "physics": ("--precision",)}.get(args.start, ())
    given = [option for option in unused if getattr(args, option[2:].replace("-", "_")) is not None]
    if given:
        runs = "runs no network" if args.start == "flat" else "does not run the U-Net, whose arithmetic --precision sets"
        raise UsageError(f"{' and '.join(given)} {'does' if len(given) == 1 else 'do'} nothing with --start {args.start}, which {runs}; "
                         "leave it out")


def check_refine_options(args: argparse.Namespace) -> None:
    """``--refine-points``/``--refine-momentum``/``--refine-plateau`` without ``--refine`` would do nothing: refused."""
    given = [option for option, value in (("--refine-points", args.refine_points), ("--refine-momentum", args.refine_momentum),
                                          ("--refine-plateau", args.refine_plateau)) if value is not None]
    if args.start == "flat" and args.refine == 0:
        raise UsageError("--start flat is a unit object: give --refine ITERATIONS (e.g. 10) to reconstruct from it")
    if args.object_network is not None:
        if args.start != "flat":
            raise UsageError(f"--object-network corrects an object refined from a unit object, as it was trained: give --start flat "
                             f"(got --start {args.start})")
        if args.refine <= args.object_network:
            raise UsageError(f"--object-network {args.object_network} runs after that sweep and the sweeps after it decide whether its "
                             f"correction is kept: give --refine above {args.object_network} (got {args.refine})")
    if given and args.refine == 0:
        raise UsageError(f"{' and '.join(given)} set{'s' if len(given) == 1 else ''} how --refine updates the object; "
                         "give --refine ITERATIONS too, or leave it out")
    if args.refine_plateau:
        if args.refine < 3:
            raise UsageError(f"--refine-plateau compares a sweep's misfit with the previous one's and switches for the sweeps left: "
                             f"it needs --refine 3 or more (got {args.refine}); leave it out")
        if args.refine_points == "all" and args.refine_momentum == 0:
            raise UsageError("--refine-plateau switches to parallel updates without momentum, which --refine-points all "
                             "--refine-momentum 0 already are; leave it out")


def _check_plateau_against_the_points(args: argparse.Namespace, n_points: int) -> None:
    """``--refine-points`` of at least the scan's points with ``--refine-momentum 0`` already are parallel updates without
    momentum, which ``--refine-plateau`` would switch to: refused as :func:`check_refine_options` refuses the ``all`` spelling."""
    if args.refine_plateau and args.refine_momentum == 0 and isinstance(args.refine_points, int) and args.refine_points >= n_points:
        raise UsageError(f"{args.scan}: --refine-points {args.refine_points} (at least its {n_points} scan points) with --refine-momentum 0 "
                         "already are parallel updates without momentum, which --refine-plateau switches to; leave it out")


def refine_update(args: argparse.Namespace):
    """The :class:`~ptycho_torch.model.refine.RefinementUpdate` of the command line (imports torch)."""
    from ptycho_torch.model.refine import RefinementUpdate

    points = REFINE_POINTS if args.refine_points is None else None if args.refine_points == "all" else args.refine_points
    return RefinementUpdate(patterns=points, momentum=REFINE_MOMENTUM if args.refine_momentum is None else args.refine_momentum,
                            plateau=REFINE_PLATEAU if args.refine_plateau is None else args.refine_plateau)


class _MethodParser(argparse.ArgumentParser):
    def error(self, message: str):
        raise UsageError(message)


def method_settings(text: str, source: str) -> dict:
    """:class:`~ptycho_torch.workflow.ReconstructionSettings` fields from ``ptycho-reconstruct``'s method options written as
    one string (``source`` names where it came from, e.g. an environment variable), checked as the command checks them;
    anything else is refused (UsageError naming ``source``, the option and the fix). Imports torch only for ``--refine``."""
    import shlex

    parser = _MethodParser(prog=source, add_help=False, allow_abbrev=False)
    add_method_arguments(parser)
    fix = f"it takes ptycho-reconstruct's options {', '.join(METHOD_OPTIONS)} (e.g. '--start flat --refine 7 --object-network 5')"
    try:
        args = parser.parse_args(shlex.split(text))
        args.batch_size = args.n_groups = args.groups = None  # not method options: never set here
        check_start_options(args)
        check_refine_options(args)
    except (UsageError, ValueError) as exc:  # shlex: unbalanced quotes
        raise UsageError(f"{source}={text!r}: {exc}; {fix}") from None
    return {"start": args.start, "refine_iterations": args.refine, "refine_update": refine_update(args) if args.refine else None,
            "object_network_after": args.object_network or 0, **({"precision": args.precision} if args.precision else {})}


def set_torch_threads(requested: int | None) -> None:
    """Compute with the threads :func:`choose_threads` picks (no loader workers here); logged once (INFO)."""
    import torch

    from ptycho_torch.threads import choose_threads

    choice = choose_threads(requested)
    torch.set_num_threads(choice.threads)
    logger.info("torch computes with %d thread(s) (%s); --threads N to change", torch.get_num_threads(), choice.reason)


def _require_input_file(path: Path, what: str) -> None:
    if path.is_symlink() and not path.exists():
        raise UsageError(f"{what} {path} is a symbolic link to {os.readlink(path)}, which does not exist; fix the link or pass the file")
    if path.is_dir():
        raise UsageError(f"{what} {path} is a directory; {PROG} takes one {what} file: {DIRECTORY_FIX[what]}")
    if not path.is_file():
        raise UsageError(f"{what} {path}: no such file" if not path.exists() else f"{what} {path} is not a regular file")


def check_output_path(path: Path, option: str, inputs: tuple[Path, ...], replaceable=None) -> None:
    """Refuse an output that is an input, a link, a directory or (with ``replaceable``, a test of an existing file) a file
    this command did not write, or whose directory cannot be written, before any work."""
    from ptycho_torch.store.atomic import make_directory, require_writable_directory

    if path.is_symlink():
        raise UsageError(f"{option} {path} is a symbolic link (to {os.readlink(path)}); {PROG} never writes through a link; "
                         "remove the link or choose another path")
    for source in inputs:
        if path.exists() and source.exists() and os.path.samefile(path, source):
            raise UsageError(f"{option} {path} is the input {source}; {PROG} never overwrites an input; choose another path")
    if path.is_dir():
        raise UsageError(f"{option} {path} is a directory; give a file name, e.g. {path / 'reconstruction.npz'}")
    refuse_foreign_output(path, option, replaceable)
    fix = f"choose another {option} in a directory you can write"
    make_directory(path.parent, "output directory", fix)
    require_writable_directory(path.parent, fix)


def refuse_foreign_output(path: Path, option: str, replaceable=None) -> None:
    """Refuse an existing ``path`` that is not a regular file (a FIFO or a device is never opened) or that
    ``replaceable`` does not recognise as this command's own earlier output."""
    if not path.exists():
        return
    if not path.is_file():
        raise UsageError(f"{option} {path} exists and is not a regular file; choose another path")
    if replaceable is not None and not replaceable(path):
        raise UsageError(f"{option} {path} exists and is not recognisably an output of {PROG} (an NPZ with its "
                         f"'{RECONSTRUCTION_MARKER}' member, or a PNG with its panel titles), and {PROG} replaces only those; "
                         "move it away or choose another path")


def choose_device(requested: str, cuda_available: bool | None = None):
    """``auto`` is the GPU when torch sees one, else the CPU; ``cuda`` without CUDA is a usage error."""
    import torch

    cuda_available = torch.cuda.is_available() if cuda_available is None else cuda_available
    wanted = str(requested).strip().lower()
    if wanted == "auto":
        return torch.device("cuda" if cuda_available else "cpu")
    try:
        device = torch.device(wanted)
    except RuntimeError:
        raise UsageError(f"--device {requested!r} is not a device; use {DEVICE_CHOICES}") from None
    if device.type not in ("cpu", "cuda"):
        raise UsageError(f"--device {requested!r} is not supported; use {DEVICE_CHOICES}")
    if device.type == "cpu":  # torch.load cannot map to 'cpu:0' (nor 'cpu:1'): one CPU device, named without an index
        if device.index not in (None, 0):
            raise UsageError(f"--device {requested}: there is one CPU device; use --device cpu")
        return torch.device("cpu")
    if device.type == "cuda" and not cuda_available:
        raise UsageError(f"--device {requested}: torch sees no CUDA device here; use --device cpu (or auto)")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise UsageError(f"--device {requested}: torch sees {torch.cuda.device_count()} CUDA device(s); use cuda:0 to "
                         f"cuda:{torch.cuda.device_count() - 1}")
    return device


def _canvas(args: argparse.Namespace, scan):
    """The output grid, checked to fit in memory before any work."""
    from ptycho_torch.model import footprint
    from ptycho_torch.model.stitching import Canvas, default_canvas

    if args.canvas == "object":
        if scan.objectGuess is None:
            raise UsageError(f"{args.scan}: --canvas object needs an objectGuess in the scan")
        canvas = Canvas(scan.objectGuess.shape, (0.0, 0.0))
        _warn_positions_off_the_object(args.scan, scan, canvas.shape_px)
    else:
        canvas = default_canvas(scan.xcoords, scan.ycoords, scan.N)
    footprint.check_canvas(canvas.shape_px, str(args.scan))
    return canvas


def _warn_positions_off_the_object(path: Path, scan, shape_px: tuple[int, int]) -> None:
    """``--canvas object`` crops to the objectGuess grid: say so when scan positions (patch centres) lie off it."""
    H, W = shape_px
    x, y = np.asarray(scan.xcoords, np.float64), np.asarray(scan.ycoords, np.float64)
    off = int(np.count_nonzero((x < 0) | (x > W - 1) | (y < 0) | (y > H - 1)))
    if off == len(x):  # nothing of the scan would be reconstructed on that grid (an empty or unrelated objectGuess)
        raise UsageError(f"{path}: --canvas object: all {len(x)} scan positions lie off the {H} x {W} objectGuess grid (x {x.min():.1f} "
                         f"to {x.max():.1f}, y {y.min():.1f} to {y.max():.1f} pixels), so that grid would hold nothing of the scan; "
                         "use --canvas scan (the default), or store the objectGuess of this scan")
    if off:
        logger.warning("%s: %d of %d scan positions lie off the %d x %d objectGuess grid (x %.1f to %.1f, y %.1f to %.1f pixels): "
                       "--canvas object cuts their patches off; use --canvas scan to keep the whole scan", path, off, len(x), H, W,
                       x.min(), x.max(), y.min(), y.max())


def _require_pattern_size(model, checkpoint: Path, scan) -> None:
    if int(model.N) != scan.N:
        raise UsageError(f"checkpoint {checkpoint} was trained on {model.N} x {model.N} patterns but scan {scan.path} holds "
                         f"{scan.N} x {scan.N} patterns; reconstruct with a model trained on {scan.N} x {scan.N} patterns, or refine "
                         "from a unit object, which needs no network: --start flat --refine 20")


def write_reconstruction(output: Path, result) -> Path:
    """The NPZ of ``result`` written atomically at exactly ``output``, with the marker scan discovery skips."""
    from ptycho_torch.store.atomic import atomic_path

    expected = result.object.nbytes + result.coverage.size * 4
    with atomic_path(output, expected, fix="choose another --output") as tmp, open(tmp, "wb") as handle:
        np.savez(handle, object=result.object, coverage=result.coverage.astype(np.float32),
                 origin_px=np.asarray(result.canvas.origin_px, dtype=np.float64), count_gain=np.float64(result.gain),
                 **{RECONSTRUCTION_MARKER: np.int8(1)})
    return output


COVERED_FRACTION = 1e-3  # as stitching: pixels whose summed probe weight is below this share of its maximum are not reconstructed


def log_scores(obj: np.ndarray, reference: np.ndarray, coverage: np.ndarray, scan: Path) -> None:
    """Log (INFO) the amplitude and phase r of the reconstruction against the scan's objectGuess, where both are known."""
    covered = (coverage >= COVERED_FRACTION * float(coverage.max())) & np.isfinite(reference)
    try:
        quality = reconstruction_quality(obj, np.nan_to_num(reference), covered)
    except ValueError as exc:
        logger.info("%s: not scored against its objectGuess: %s", scan, exc)
        return
    logger.info("%s: against the %s: amplitude r %.4f, phase r %.4f (%d interior pixels, shift %s px)", scan, REFERENCE_LABEL,
                quality.amplitude_r, quality.phase_r, quality.n_pixels, quality.shift_px)


def write_png(obj: np.ndarray, reference: np.ndarray | None, path: Path) -> Path:
    """The amplitude/phase PNG (:func:`ptycho_torch.plot.write_reconstruction_png`, drawn with Pillow, not matplotlib)."""
    from ptycho_torch.plot import write_reconstruction_png

    return write_reconstruction_png(obj, reference, path)


if __name__ == "__main__":
    sys.exit(main())
