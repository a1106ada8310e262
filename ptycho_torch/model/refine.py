"""Refinement: error-reduction iterations over the whole object from a stitched start, through the model's own physics."""

from __future__ import annotations

import copy
import logging
import math
import numbers
from dataclasses import dataclass, replace

import numpy as np
import torch
from tqdm import tqdm

from ptycho_torch.model import physics
from ptycho_torch.model.forward_model import FarFieldPtychography
from ptycho_torch.model import footprint
from ptycho_torch.model.stitching import COVERAGE_FLOOR, Canvas, Reconstruction, default_canvas
from ptycho_torch.workflow import MAX_SWEEPS

logger = logging.getLogger(__name__)

__all__ = ["Refinement", "RefinementUpdate", "data_misfit", "flat_start", "refine"]

PATTERNS_PER_BATCH = 256  # parallel updates: patterns whose windows and exit waves are held at once (memory, not the result)
PLAN_BYTES = 1 << 30  # window indices and step sizes kept across iterations up to this size; above it, rebuilt per iteration
BYTES_PER_PLANNED_SAMPLE = 8 + 4  # int64 canvas index and float32 step size of each window sample
MAX_REGULARISATION = 1e6  # of the coverage's maximum: far beyond it no step is left (and float32 overflows)
MAX_STEP = 2.0  # the factor on an update: above it the sweeps overshoot (3 lost the embedded scan, 4 diverged)


@dataclass(frozen=True)
class RefinementUpdate:
    """How each refinement iteration updates the object (benchmarks/RESULTS.md has quality against CPU s).

    ``patterns``: the scan points whose corrections make one update, applied before the next batch
    is corrected (ePIE/LSQML-like sweeps; the points are dealt into batches once, in a random order
    drawn from ``order_seed``); ``None`` corrects every point of the scan from the same object and
    applies the sum (parallel error reduction, the only mode before 2026-12-07). ``momentum``: the
    share of the previous iteration's change added before each iteration (0: none). Each update is
    divided by the summed probe weight of its points plus ``regularisation`` times that sum's maximum, and
    multiplied by ``step``, in ``(0, 2]`` (LSQML's least-squares step along this direction came to 1.3-1.9 on training-family
    scans; 1.5 gives the phase sooner and the amplitude later on scans unlike the training data: benchmarks/RESULTS.md).
    ``plateau``: once an iteration lowers the data misfit (:func:`physics.modulus_misfit` of every point,
    summed as the iteration goes) by less than this fraction of the previous iteration's, the remaining
    iterations are parallel updates without momentum (same ``regularisation``, unit step), which average the noise
    of every point where small updates keep following the last ones (low-dose scans); 0 never switches.
    ``plateau_sweeps``: the plateau is looked for in the first this-many iterations only; a misfit that
    falls slowly after them is slow convergence, where the sweeps stay faster (high-dose scans).
    """

    patterns: int | None = 64
    momentum: float = 0.5
    regularisation: float = 0.05
    order_seed: int = 0
    plateau: float = 0.002
    plateau_sweeps: int = 20
    step: float = 1.0

    def __post_init__(self):
        if self.patterns is not None and not (_is_integer(self.patterns) and self.patterns >= 1):
            raise ValueError(f"RefinementUpdate.patterns={self.patterns!r}: scan points per update, an integer >= 1, or None for all at once")
        if not (_is_real(self.momentum) and 0 <= self.momentum < 1):
            raise ValueError(f"RefinementUpdate.momentum={self.momentum!r} must be a number in [0, 1)")
        if not (_is_real(self.regularisation) and 0 < self.regularisation <= MAX_REGULARISATION):
            raise ValueError(f"RefinementUpdate.regularisation={self.regularisation!r} must be a number in (0, {MAX_REGULARISATION:g}]")
        if not (_is_integer(self.order_seed) and self.order_seed >= 0):
            raise ValueError(f"RefinementUpdate.order_seed={self.order_seed!r} must be an integer >= 0 (the batches' fixed order)")
        if not (_is_real(self.plateau) and 0 <= self.plateau < 1):
            raise ValueError(f"RefinementUpdate.plateau={self.plateau!r} must be a number in [0, 1) (0: never switch to the parallel update)")
        if not (_is_integer(self.plateau_sweeps) and self.plateau_sweeps >= 1):
            raise ValueError(f"RefinementUpdate.plateau_sweeps={self.plateau_sweeps!r} must be an integer >= 1 (the iterations in which "
                             "the plateau is looked for)")
        if not (_is_real(self.step) and 0 < self.step <= MAX_STEP):
            raise ValueError(f"RefinementUpdate.step={self.step!r} must be a number in (0, {MAX_STEP:g}] (the factor on each update)")
        object.__setattr__(self, "plateau_sweeps", int(self.plateau_sweeps))
        for name in ("momentum", "regularisation", "plateau", "step"):  # plain floats (a -0 momentum is 0)
            object.__setattr__(self, name, float(getattr(self, name)) + 0.0)


def _is_integer(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


PARALLEL = RefinementUpdate(patterns=None, momentum=0.0, plateau=0.0)  # the refinement of 2026-12-06 and before


@torch.inference_mode()
def refine(result: Reconstruction, dataset, iterations: int, *, update: RefinementUpdate | None = None, experiment: int = 0,
           batch_size: int = PATTERNS_PER_BATCH, progress: bool = True) -> Reconstruction:
    """``iterations`` error-reduction sweeps over the whole canvas of ``result``, with the known probe.

    An update extracts its scan points' windows of the object (:class:`physics.GroupWindows` on the
    canvas), imposes the measured modulus on their exit waves (:meth:`FarFieldPtychography.correction`)
    and adds the corrections back divided by their summed probe weight (plus ``update.regularisation``
    of its maximum): the update of :func:`physics.object_estimate` over scan points of the whole scan
    instead of one group. ``update`` says how many points make one update, the momentum, the step and when the
    sweeps turn into parallel updates (:class:`RefinementUpdate`; the misfit's plateau is checked from
    the second iteration on, and a switch needs an iteration left: it can act from ``iterations=3``). The modulus is ``sqrt(counts / kappa)``, ``kappa`` the count scale of
    the experiment (specs/model.md section 3), in which units ``result.object`` (calibrated by the
    stitching's count gain) predicts the counts. ``iterations=0`` returns ``result``; ``update=None``
    the default :class:`RefinementUpdate`. Memory: the canvas, the exit waves of ``batch_size`` patterns
    at a time (an update of more points is corrected in parts of that size, then applied), and each
    point's window indices and step sizes up to ``PLAN_BYTES``.
    """
    if int(iterations) != iterations or not 0 <= iterations <= MAX_SWEEPS:
        raise ValueError(f"refinement iterations must be an integer from 0 to {MAX_SWEEPS:,}, got {iterations!r}")
    if iterations == 0:
        return result
    refinement = Refinement(result, dataset, int(iterations), update=update, experiment=experiment, batch_size=batch_size)
    refinement.run(int(iterations), progress=progress)
    return refinement.result()


class Refinement:
    """The sweeps of :func:`refine` (``iterations`` in all) run in parts: :meth:`run` goes on where the last part stopped,
    as one call of :func:`refine` would (momentum, the misfit's plateau and the switch to parallel updates carry over);
    :meth:`fork` goes on from another object instead (no momentum into it; the sweep count and a switch already made
    carry over). :meth:`result` is the object so far, as :func:`refine` returns it."""

    @torch.inference_mode()
    def __init__(self, result: Reconstruction, dataset, iterations: int, *, update: RefinementUpdate | None = None,
                 experiment: int = 0, batch_size: int = PATTERNS_PER_BATCH):
        update = RefinementUpdate() if update is None else update
        exp = dataset.experiments[experiment]
        self.start, self.update, self.total, self.path = result, update, int(iterations), exp.scan.path
        self.n_points = len(exp.scan.xcoords)
        self.make = _sweep_factory(dataset, result.canvas, experiment, batch_size)
        already_parallel = (update.patterns is None or update.patterns >= self.n_points) and update.momentum == 0
        self.may_switch = update.plateau > 0 and not already_parallel and self.total >= 3 and update.plateau_sweeps >= 2
        self.sweep = self.make(update, track_misfit=self.may_switch)
        self.obj = torch.from_numpy(np.ascontiguousarray(result.object)).to(torch.complex64).reshape(-1)
        self.previous, self.misfit, self.switched, self.done = self.obj, math.inf, None, 0

    @torch.inference_mode()
    def run(self, iterations: int, *, progress: bool = True) -> None:
        """``iterations`` more sweeps (at most the ``iterations`` given at the start, in all)."""
        if self.done + iterations > self.total:
            raise ValueError(f"{iterations} more sweeps after {self.done} exceed the refinement's {self.total}")
        update, first, switched_before = self.update, self.done, self.switched
        for i in tqdm(range(int(iterations)), desc="refining", unit="iteration", disable=not progress):
            iteration = first + i
            start = self.obj + self.sweep.update.momentum * (self.obj - self.previous) if self.sweep.update.momentum else self.obj
            self.previous, self.obj = self.obj, self.sweep(start)
            if (self.may_switch and self.switched is None and iteration < update.plateau_sweeps and iteration + 1 < self.total
                    and self.misfit - self.sweep.misfit < update.plateau * self.misfit):
                self.switched = iteration + 1
                settled = replace(update, patterns=None, momentum=0.0, plateau=0.0, step=1.0)  # the update after the plateau
                self.sweep = None  # its window plans (up to PLAN_BYTES) go before the parallel update's are built (unless a fork holds them)
                self.sweep = self.make(settled, track_misfit=False)
            self.misfit = self.sweep.misfit
        self.done += int(iterations)
        step = "" if update.step == 1 else f", step {update.step:g}"
        if self.switched is None:
            switch = ""
        elif self.switched != switched_before:
            switch = (f"; iteration {self.switched} lowered the data misfit by less than {100 * update.plateau:g} % of the "
                      f"previous one's: parallel updates without momentum{' and a unit step' if step else ''} after it")
        else:  # a later part of a refinement that switched in an earlier one
            switch = f"; parallel updates without momentum since iteration {self.switched}"
        logger.info("refined %s: %d iterations over %d patterns (%s points per update, momentum %g%s%s)", self.path, iterations,
                    self.n_points, "all" if update.patterns is None or update.patterns >= self.n_points else update.patterns,
                    update.momentum, step, switch)

    def fork(self, result: Reconstruction) -> "Refinement":
        """A refinement that goes on from ``result.object`` (same canvas) where this one stands: no momentum into the new
        object and no plateau judged on its first sweep; the sweep count and a switch to parallel updates carry over."""
        fork = copy.copy(self)
        fork.start = result
        fork.obj = torch.from_numpy(np.ascontiguousarray(result.object)).to(torch.complex64).reshape(-1)
        fork.previous, fork.misfit = fork.obj, math.inf
        return fork

    @torch.inference_mode()
    def result(self) -> Reconstruction:
        """The object so far, 0 where the probe weight is below ``COVERAGE_FLOOR`` of its maximum."""
        H, W = self.start.canvas.shape_px
        covered = (self.sweep.coverage > COVERAGE_FLOOR * self.sweep.coverage.max()).numpy()
        refined = np.where(covered, self.obj.reshape(H, W).numpy(), 0).astype(np.complex64)
        return replace(self.start, object=refined)


@torch.inference_mode()
def data_misfit(result: Reconstruction, dataset, *, experiment: int = 0, batch_size: int = PATTERNS_PER_BATCH) -> float:
    """How far ``result.object`` is from the measured patterns: :func:`physics.modulus_misfit` of every scan point from
    this one object (the parallel update's), summed, in the units :func:`refine` works in."""
    sweep = _sweep_factory(dataset, result.canvas, experiment, batch_size)(PARALLEL, track_misfit=True)
    sweep(torch.from_numpy(np.ascontiguousarray(result.object)).to(torch.complex64).reshape(-1))
    return float(sweep.misfit)


def flat_start(dataset, canvas: Canvas | None = None, *, experiment: int = 0, batch_size: int = PATTERNS_PER_BATCH) -> Reconstruction:
    """A unit object over the scan's probe coverage: the start of refinement with neither the network nor its physics input.

    ``canvas`` defaults to :func:`~ptycho_torch.model.stitching.default_canvas` of the scan positions; ``coverage`` is
    the summed probe weight (unit peak) of every scan point; pixels below ``COVERAGE_FLOOR`` of its maximum are 0.
    A unit object predicts the experiment's mean counts, the units :func:`refine` works in (count gain 1).
    """
    exp = dataset.experiments[experiment]
    N = dataset.N
    canvas = canvas or default_canvas(exp.scan.xcoords, exp.scan.ycoords, N)
    footprint.check_canvas(canvas.shape_px, str(exp.scan.path))
    weights = physics.probe_weight(physics.unit_peak(dataset.probes[experiment][None, None]))
    corners = _window_corners(exp.scan.xcoords, exp.scan.ycoords, canvas.origin_px, N)
    windows = (physics.GroupWindows.at(corners[None, start:start + batch_size], N, canvas.shape_px)
               for start in range(0, len(corners), batch_size))
    coverage = _placed_weight(windows, weights).to(torch.float64).numpy()
    obj = (coverage > COVERAGE_FLOOR * coverage.max()).astype(np.complex64)
    return Reconstruction(obj, coverage, canvas, 1.0)


def _sweep_factory(dataset, canvas: Canvas, experiment: int, batch_size: int):
    """``make(update, track_misfit=...)``: a :class:`_Sweep` over the experiment's scan points on ``canvas``, known probe.

    The modulus is ``sqrt(counts / kappa)``, ``kappa`` the mean counts per pattern over what a unit object gives."""
    exp = dataset.experiments[experiment]
    probe = physics.unit_peak(dataset.probes[experiment][None, None])  # (1, 1, P, N, N), peak amplitude 1
    probe_energy = float((probe.real**2 + probe.imag**2).sum())
    kappa = float(np.mean(exp.store.energy)) / probe_energy  # mean counts per pattern / what a unit object gives
    measurement = FarFieldPtychography(probe, torch.tensor([kappa]))
    corners = _window_corners(exp.scan.xcoords, exp.scan.ycoords, canvas.origin_px, dataset.N)

    def make(update: RefinementUpdate, *, track_misfit: bool) -> _Sweep:
        return _Sweep(measurement, corners, exp.store.diffraction, math.sqrt(kappa), canvas.shape_px, update, batch_size,
                      track_misfit=track_misfit)

    return make


class _Sweep:
    """One refinement iteration over every scan point: the batches, their windows and their step sizes, prepared once.

    A batch (the points of one update) is held as parts of at most ``batch_size`` points: the exit waves of one part
    at a time are in memory, whatever ``RefinementUpdate.patterns`` asks."""

    def __init__(self, measurement: FarFieldPtychography, corners: torch.Tensor, diffraction, modulus_scale: float,
                 shape_px: tuple[int, int], update: RefinementUpdate, batch_size: int, *, track_misfit: bool = True):
        self.measurement, self.corners, self.diffraction = measurement, corners, diffraction
        self.modulus_scale, self.shape_px, self.update, self.track_misfit = modulus_scale, shape_px, update, track_misfit
        self.misfit = math.inf  # of the last call, when tracked: each point's, from the object its correction started from
        n = len(corners)
        if update.patterns is None:
            self.batches = [[np.arange(start, min(start + batch_size, n)) for start in range(0, n, batch_size)]]
        else:
            order = np.random.default_rng(update.order_seed).permutation(n)
            batches = [np.sort(order[start:start + update.patterns]) for start in range(0, n, update.patterns)]
            self.batches = [[batch[start:start + batch_size] for start in range(0, len(batch), batch_size)] for batch in batches]
        keep = n * (measurement.N + 1) ** 2 * BYTES_PER_PLANNED_SAMPLE <= PLAN_BYTES  # windows (and steps) kept across sweeps
        if update.patterns is None:
            self.windows = [self._windows(part) for part in self.batches[0]] if keep else None
            self.coverage = _placed_weight(self._parallel_windows(), measurement.weights).reshape(-1)
            self.inverse = self._inverse(self.coverage)
        else:
            self._scratch = torch.zeros(shape_px[0] * shape_px[1])  # one batch's probe weight, zeroed again after use
            self.coverage = torch.zeros(shape_px[0] * shape_px[1])
            self.plans = [self._plan(batch) for batch in self.batches] if keep else None
            for i, batch in enumerate(self.batches):
                for part, (windows, _) in zip(batch, self.plans[i] if keep else self._plan(batch)):
                    self.coverage.index_add_(0, windows.index, _spread(windows, self._weights(part)))
        self.coverage = self.coverage.reshape(shape_px)

    def __call__(self, obj: torch.Tensor) -> torch.Tensor:
        """The object (flat canvas) after one iteration from ``obj``; ``self.misfit`` is summed on the way (when tracked)."""
        self.misfit = 0.0 if self.track_misfit else math.inf
        if self.update.patterns is None:  # every point corrected from the same object, the sum applied once
            total = torch.zeros_like(obj)
            for part, windows in zip(self.batches[0], self._parallel_windows()):
                total += self._place(windows, self._correction(windows, obj, part)).reshape(-1)
            return obj + total * self.inverse
        obj = obj.clone()
        for i, batch in enumerate(self.batches):
            plan = self.plans[i] if self.plans is not None else self._plan(batch)
            if len(batch) == 1:
                (windows, steps), = plan
                obj.index_add_(0, windows.index, _spread(windows, self._correction(windows, obj, batch[0])) * steps)
                continue
            change = torch.zeros_like(obj)  # every part corrected from the same object, then applied together
            for part, (windows, steps) in zip(batch, plan):
                change.index_add_(0, windows.index, _spread(windows, self._correction(windows, obj, part)) * steps)
            obj += change
        return obj

    def _parallel_windows(self):
        """The parallel update's windows, part by part: the kept ones, or rebuilt when the scan is too large to keep them."""
        return self.windows if self.windows is not None else (self._windows(part) for part in self.batches[0])

    def _windows(self, part: np.ndarray) -> physics.GroupWindows:
        return physics.GroupWindows.at(self.corners[None, torch.from_numpy(part)], self.measurement.N, self.shape_px)

    def _weights(self, part: np.ndarray) -> torch.Tensor:
        N = self.measurement.N
        return self.measurement.weights.expand(1, len(part), N, N)

    def _place(self, windows: physics.GroupWindows, patches: torch.Tensor) -> torch.Tensor:
        return windows.place(patches)[0]

    def _inverse(self, coverage: torch.Tensor) -> torch.Tensor:
        return self.update.step / (coverage + self.update.regularisation * coverage.max()).clamp_min(torch.finfo(coverage.dtype).tiny)

    def _plan(self, batch: list[np.ndarray]) -> list[tuple[physics.GroupWindows, torch.Tensor]]:
        """Each part's windows and the step size at each of their samples: step / (the batch's summed probe weight + regularisation).

        The summed weight is gathered from one scratch canvas, zeroed again at the batch's samples: no canvas per batch."""
        windows = [self._windows(part) for part in batch]
        for w, part in zip(windows, batch):
            self._scratch.index_add_(0, w.index, _spread(w, self._weights(part)))
        weights = [self._scratch[w.index] for w in windows]
        for w in windows:
            self._scratch[w.index] = 0
        floor = self.update.regularisation * torch.stack([weight.max() for weight in weights]).max()
        return [(w, self.update.step / (weight + floor).clamp_min(torch.finfo(weight.dtype).tiny)) for w, weight in zip(windows, weights)]

    def _correction(self, windows: physics.GroupWindows, obj: torch.Tensor, part: np.ndarray) -> torch.Tensor:
        modulus = torch.from_numpy(np.abs(np.asarray(self.diffraction[part], dtype=np.float32)))[None] / self.modulus_scale
        patches = windows.extract(obj.reshape(1, *self.shape_px))
        if not self.track_misfit:
            return self.measurement.correction(patches, modulus)
        correction, misfit = self.measurement.correction_and_misfit(patches, modulus)
        self.misfit += float(misfit)
        return correction


def _placed_weight(windows, weights: torch.Tensor) -> torch.Tensor:
    """``(H, W)`` float32: the probe weight ``weights (1, 1, N, N)`` placed at every window of ``windows`` (parts in turn) and summed."""
    total = None
    for w in windows:
        placed = w.place(weights.expand(1, w.C, w.N, w.N))[0]
        total = placed if total is None else total + placed
    return total


def _spread(windows: physics.GroupWindows, patches: torch.Tensor) -> torch.Tensor:
    """``patches (1, n, N, N)`` spread onto their windows' samples, flat: what ``windows.place`` adds at ``windows.index``."""
    spread = physics.bilinear_spread(patches, windows.fx, windows.fy)
    return (spread if windows.inside is None else spread * windows.inside).reshape(-1)


def _window_corners(xcoords, ycoords, origin_px: tuple[float, float], N: int) -> torch.Tensor:
    """``(n, 2)`` ``[col, row]`` of each scan point's window corner on the canvas (the stitching's placement)."""
    x, y = np.asarray(xcoords, np.float64), np.asarray(ycoords, np.float64)
    return torch.from_numpy(np.stack([x + origin_px[1] - N // 2, y + origin_px[0] - N // 2], axis=1))
