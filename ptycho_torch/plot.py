"""The groups plot: scan positions and each group's outline over the object amplitude (needs matplotlib)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from scipy.spatial import ConvexHull

from ptycho.quality import REFERENCE_LABEL
from ptycho_torch.experiment import Experiment

logger = logging.getLogger(__name__)

INSTALL_HINT = "install the plot extra: pip install -e '.[plot]' (or pip install matplotlib)"
DEFAULT_MAX_GROUPS = 200


def write_groups_plot(experiment_or_bridge, path, max_groups: int = DEFAULT_MAX_GROUPS, *, title: str | None = None) -> Path:
    """Draw the groups of an ``Experiment``, a ``MemmapDatasetBridge`` or a ``PtychoDataset`` (its first scan) to a PNG.

    At most ``max_groups`` groups are outlined, evenly spread over the grouping. Returns the path written.
    """
    experiment = _experiment_of(experiment_or_bridge)
    path = Path(path)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"directory {path.parent} for the plot does not exist; create it or choose another output path")
    scan, grouping = experiment.scan, experiment.grouping
    settings = experiment.key.settings
    if title is None:
        title = (
            f"{scan.path.name}: {grouping.n_groups} groups of {grouping.C} "
            f"(gridsize {settings.gridsize}, K {settings.K}, seed {settings.seed})"
        )
    figure = groups_figure(
        scan.xcoords, scan.ycoords, grouping.nn_indices, experiment.object_guess.get(), N=experiment.key.N, max_groups=max_groups, title=title
    )
    figure.savefig(path, format="png", dpi=110)
    logger.info("wrote the groups plot %s", path)
    return path


def groups_figure(xcoords, ycoords, nn_indices, object_guess=None, *, N: int, max_groups: int = DEFAULT_MAX_GROUPS, title: str = ""):
    """A matplotlib ``Figure``: |object| (pixel centres at integer coordinates), scan positions, group outlines.

    Positions are patch centres in object pixels (x = column, y = row); one dashed ``N x N``
    square shows the footprint of a patch, which covers pixels ``[x - N/2, x + N/2)``.
    """
    Figure, PolyCollection, Rectangle = require_matplotlib()
    if max_groups < 0:
        raise ValueError(f"max_groups must be >= 0, got {max_groups}")
    x, y = np.asarray(xcoords, dtype=np.float64), np.asarray(ycoords, dtype=np.float64)
    nn_indices = np.asarray(nn_indices)
    shown = shown_groups(len(nn_indices), max_groups)

    figure = Figure(figsize=(8.0, 7.6), layout="constrained")
    ax = figure.add_subplot()
    if object_guess is not None:
        amplitude = np.abs(np.asarray(object_guess))
        image = ax.imshow(amplitude, cmap="gray", origin="upper", extent=object_extent(amplitude.shape), interpolation="nearest")
        figure.colorbar(image, ax=ax, shrink=0.8, label="|objectGuess|")
    ax.scatter(x, y, s=10, color="#4fc3f7", linewidths=0, label=f"scan positions ({len(x)})", zorder=2)
    colors = [_cycle_color(i) for i in range(len(shown))]
    outlines = [group_outline(x[nn_indices[g]], y[nn_indices[g]]) for g in shown]
    ax.add_collection(
        PolyCollection(outlines, closed=True, facecolors="none", edgecolors=colors, linewidths=1.3, zorder=3,
                       label=f"group outlines ({len(shown)} of {len(nn_indices)})" if nn_indices.shape[1] > 1 else None)
    )
    if len(shown):
        centres = np.array([[x[nn_indices[g]].mean(), y[nn_indices[g]].mean()] for g in shown])
        ax.scatter(centres[:, 0], centres[:, 1], s=10, color=colors, marker="+", linewidths=1.0, zorder=4,
                   label=f"group centres ({len(shown)} of {len(nn_indices)})")
        first = nn_indices[shown[0], 0]
        ax.add_patch(
            Rectangle((x[first] - N / 2 - 0.5, y[first] - N / 2 - 0.5), N, N, fill=False, linestyle="--",
                      edgecolor="#ffb300", linewidth=1.2, zorder=5, label=f"one {N}x{N} patch")
        )
    _set_limits(ax, x, y, N, None if object_guess is None else np.shape(object_guess))
    ax.set_xlabel("x (object pixel column)")
    ax.set_ylabel("y (object pixel row)")
    ax.set_title(title, fontsize=10)
    ax.legend(loc="upper right", fontsize=8, framealpha=0.85)
    return figure


def shown_groups(n_groups: int, max_groups: int) -> np.ndarray:
    """Indices of at most ``max_groups`` groups spread evenly over ``range(n_groups)``."""
    if n_groups <= max_groups:
        return np.arange(n_groups)
    return np.unique(np.linspace(0, n_groups - 1, max_groups).round().astype(np.int64))


def group_outline(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``(k, 2)`` vertices outlining a group: the convex hull of its members, or all of them in angle order if collinear."""
    points = np.column_stack([x, y])
    if len(np.unique(points, axis=0)) >= 3:
        try:
            return points[ConvexHull(points).vertices]
        except RuntimeError:  # QhullError: collinear members have no 2-D hull
            pass
    order = np.argsort(np.arctan2(y - y.mean(), x - x.mean()), kind="stable")
    return points[order]


def object_extent(shape: tuple[int, ...]) -> tuple[float, float, float, float]:
    """``imshow`` extent putting the centre of pixel (row r, column c) at the data point (x=c, y=r)."""
    height, width = shape[:2]
    return (-0.5, width - 0.5, height - 0.5, -0.5)


def _set_limits(ax, x: np.ndarray, y: np.ndarray, N: int, object_shape) -> None:
    low_x, high_x = x.min() - N / 2 - 0.5, x.max() + N / 2 - 0.5
    low_y, high_y = y.min() - N / 2 - 0.5, y.max() + N / 2 - 0.5
    if object_shape is not None:
        left, right, bottom, top = object_extent(object_shape)
        low_x, high_x = min(low_x, left), max(high_x, right)
        low_y, high_y = min(low_y, top), max(high_y, bottom)
    ax.set_xlim(low_x, high_x)
    ax.set_ylim(high_y, low_y)  # rows grow downwards, as in the object image
    ax.set_aspect("equal")


def _cycle_color(i: int) -> str:
    palette = ("#e6194b", "#3cb44b", "#ffe119", "#f58231", "#911eb4", "#46f0f0", "#f032e6", "#bcf60c", "#fabebe", "#008080")
    return palette[i % len(palette)]


def _experiment_of(value) -> Experiment:
    if isinstance(value, Experiment):
        return value
    experiment = getattr(value, "experiment", None)
    if isinstance(experiment, Experiment):
        return experiment
    experiments = getattr(value, "experiments", None)
    if experiments and isinstance(experiments[0], Experiment):
        return experiments[0]
    raise TypeError(
        "write_groups_plot needs an Experiment, a MemmapDatasetBridge (.experiment) or a PtychoDataset "
        f"(.experiments, the first is drawn), got {type(value).__name__}"
    )


def require_matplotlib():
    try:
        from matplotlib.collections import PolyCollection
        from matplotlib.figure import Figure
        from matplotlib.patches import Rectangle
    except ImportError as exc:
        raise ImportError(f"the groups plot needs matplotlib, which is not installed; {INSTALL_HINT}") from exc
    return Figure, PolyCollection, Rectangle




def reconstruction_figure(obj: np.ndarray, reference: np.ndarray | None):
    """Amplitude and phase of the reconstruction, beside the scan's objectGuess on the same canvas when it has one."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = [("reconstruction", obj)] + ([] if reference is None else [(REFERENCE_LABEL, reference)])
    fig, axes = plt.subplots(2, len(columns), figsize=(4.6 * len(columns), 7), squeeze=False)
    for col, (title, image) in enumerate(columns):
        for row, (name, part) in enumerate((("amplitude", np.abs), ("phase (rad)", np.angle))):
            shown = axes[row, col].imshow(part(image), cmap="gray")
            axes[row, col].set_title(f"{title}:\n{name}", fontsize=9)
            axes[row, col].axis("off")
            fig.colorbar(shown, ax=axes[row, col], fraction=0.046)
    fig.tight_layout()
    return fig


def write_reconstruction_png(obj: np.ndarray, reference: np.ndarray | None, path) -> Path:
    """:func:`reconstruction_figure` written atomically at ``path``; ``reference`` on the reconstruction's canvas
    (``ptycho.quality.resample_onto_canvas(scan.objectGuess, obj.shape, result.canvas.origin_px)``), or None."""
    import matplotlib.pyplot as plt

    from ptycho_torch.store.atomic import atomic_path

    fig = reconstruction_figure(obj, reference)
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=80, format="png")
    plt.close(fig)
    return path
