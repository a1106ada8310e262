"""The groups plot: scan positions and each group's outline over the object amplitude (needs matplotlib)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

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
        from scipy.spatial import ConvexHull  # here, not at import: the reconstruction PNG needs no scipy

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




RECONSTRUCTION_PARTS = (("amplitude", np.abs), ("phase (rad)", np.angle))


def reconstruction_panels(obj: np.ndarray, reference: np.ndarray | None) -> list[list[tuple[str, np.ndarray]]]:
    """The picture's panels, rows (amplitude, phase) of columns (reconstruction, the scan's objectGuess when given):
    ``(title, real image)`` each, what :func:`reconstruction_figure` and :func:`write_reconstruction_png` draw."""
    columns = [("reconstruction", obj)] + ([] if reference is None else [(REFERENCE_LABEL, reference)])
    return [[(f"{title}:\n{name}", part(image)) for title, image in columns] for name, part in RECONSTRUCTION_PARTS]


def reconstruction_figure(obj: np.ndarray, reference: np.ndarray | None):
    """Amplitude and phase of the reconstruction, beside the scan's objectGuess on the same canvas when it has one
    (a matplotlib figure; :func:`write_reconstruction_png` draws the same panels without matplotlib)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = reconstruction_panels(obj, reference)
    fig, axes = plt.subplots(2, len(panels[0]), figsize=(4.6 * len(panels[0]), 7), squeeze=False)
    for row, cells in enumerate(panels):
        for col, (title, image) in enumerate(cells):
            shown = axes[row, col].imshow(image, cmap="gray")
            axes[row, col].set_title(title, fontsize=9)
            axes[row, col].axis("off")
            fig.colorbar(shown, ax=axes[row, col], fraction=0.046)
    fig.tight_layout()
    return fig


PANEL_PX = 280  # the longer side of each image in the PNG
PNG_INFO_KEY = "Panels"  # PNG text chunk naming the panels, row by row, ' | ' between them


def is_reconstruction_png(path) -> bool:
    """Whether ``path`` is a PNG that :func:`write_reconstruction_png` drew (it holds the ``Panels`` text chunk)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as picture:
            return picture.format == "PNG" and PNG_INFO_KEY in getattr(picture, "text", {})
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError):
        return False


def write_reconstruction_png(obj: np.ndarray, reference: np.ndarray | None, path) -> Path:
    """The panels of :func:`reconstruction_panels` drawn into a PNG written atomically at ``path``; ``reference``
    on the reconstruction's canvas (``ptycho.quality.resample_onto_canvas(scan.objectGuess, obj.shape,
    result.canvas.origin_px)``), or None.

    Drawn with Pillow (no matplotlib: its import and layout cost ``ptycho-reconstruct`` most of a CPU
    second): each panel is the image in grey levels over its own range, with its title and a grey bar
    with ticks; pixels that are not finite (the objectGuess outside its grid) are white. The panels'
    titles are also in the PNG's text chunk ``Panels``.
    """
    from ptycho_torch.store.atomic import atomic_path

    picture, titles = reconstruction_picture(obj, reference)
    Image, _, _ = _require_pillow()
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text(PNG_INFO_KEY, " | ".join(" ".join(title.split("\n")) for title in titles))
    path = Path(path)
    with atomic_path(path) as tmp:
        Image.fromarray(picture).save(tmp, format="PNG", pnginfo=info, compress_level=6)
    return path


def reconstruction_picture(obj: np.ndarray, reference: np.ndarray | None) -> tuple[np.ndarray, list[str]]:
    """The picture of :func:`write_reconstruction_png` as ``(H, W)`` uint8 grey levels, and the panels' titles row by row."""
    Image, ImageDraw, ImageFont = _require_pillow()
    font = _font(ImageFont, 11)
    panels = reconstruction_panels(obj, reference)
    scales = [[_bar_scale(image) for _, image in cells] for cells in panels]  # each image's range and ticks, once
    height, width = np.shape(obj)[:2]
    zoom = PANEL_PX / max(height, width, 1)
    shown = (max(1, round(width * zoom)), max(1, round(height * zoom)))  # (w, h) of each image in the picture
    line = _text_size(font, "Ag")[1] + 3
    title_h, bar_w, tick, margin = 2 * line + 6, 14, 4, 14
    label_w = max((_text_size(font, label)[0] for row in scales for _, (_, labels) in row for label in labels), default=0) + 4  # uniform images: no ticks
    cell_w = max(shown[0] + 10 + bar_w + tick + 2 + label_w,
                 max(_text_size(font, part)[0] for cells in panels for title, _ in cells for part in title.split("\n"))) + 2 * margin
    cell_h = title_h + shown[1] + margin
    canvas = Image.new("L", (cell_w * len(panels[0]), cell_h * len(panels) + margin), 255)
    draw = ImageDraw.Draw(canvas)
    for row, cells in enumerate(panels):
        for col, (title, image) in enumerate(cells):
            left, top = col * cell_w + margin, row * cell_h + margin
            x0 = left + (cell_w - 2 * margin - (shown[0] + 10 + bar_w + tick + 2 + label_w)) // 2
            for k, part in enumerate(title.split("\n")):
                draw.text((col * cell_w + cell_w // 2, top + k * line), part, fill=0, font=font, anchor="ma")
            y0 = top + title_h
            (low, high), (tick_values, tick_labels) = scales[row][col]
            grey = Image.fromarray(grey_levels(image, low, high))
            resample = Image.Resampling.BOX if zoom < 1 else Image.Resampling.NEAREST
            canvas.paste(grey.resize(shown, resample), (x0, y0))
            bar_x = x0 + shown[0] + 10
            ramp = np.linspace(255, 0, shown[1]).round().astype(np.uint8)  # top: the largest value
            canvas.paste(Image.fromarray(np.repeat(ramp[:, None], bar_w, axis=1)), (bar_x, y0))
            draw.rectangle((bar_x - 1, y0 - 1, bar_x + bar_w, y0 + shown[1]), outline=0)
            for value, label in zip(tick_values, tick_labels):
                y = y0 + (shown[1] - 1) * (1 - (value - low) / (high - low))
                draw.line((bar_x + bar_w, round(y), bar_x + bar_w + tick, round(y)), fill=0)
                draw.text((bar_x + bar_w + tick + 2, round(y)), label, fill=0, font=font, anchor="lm")
    return np.asarray(canvas), [title for cells in panels for title, _ in cells]


def grey_levels(image: np.ndarray, low: float, high: float) -> np.ndarray:
    """``image`` as uint8 grey levels as matplotlib's ``gray`` colour map shows it between ``low`` and ``high``:
    level ``floor(256 (v - low) / (high - low))`` clipped to 0..255 (0 where ``high == low``); not finite: 255 (white)."""
    values = np.asarray(image, dtype=np.float64)
    finite = np.isfinite(values)
    span = high - low
    scaled = np.floor((np.where(finite, values, low) - low) * (256.0 / span)) if span > 0 else np.zeros(values.shape)
    levels = np.clip(scaled, 0, 255).astype(np.uint8)
    levels[~finite] = 255
    return levels


def _finite_range(image: np.ndarray) -> tuple[float, float]:
    finite = np.asarray(image)[np.isfinite(image)]
    return (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)


def _bar_scale(image: np.ndarray) -> tuple[tuple[float, float], tuple[list[float], list[str]]]:
    """An image's finite range and the ticks of its bar."""
    value_range = _finite_range(image)
    return value_range, _tick_labels(image, value_range)


def _tick_labels(image: np.ndarray, value_range: tuple[float, float] | None = None) -> tuple[list[float], list[str]]:
    """Ticks on the bar: multiples of a round step (1, 2, 2.5 or 5 times a power of ten) within the image's range
    (``value_range``, when the caller has it)."""
    low, high = value_range if value_range is not None else _finite_range(image)
    if not high > low:
        return [], []
    raw = (high - low) / 6
    power = 10.0 ** np.floor(np.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw * (1 - 1e-9))
    decimals = max(0, int(-np.floor(np.log10(step) + 1e-9)) + (1 if round(step / power, 6) == 2.5 else 0))
    values = [k * step for k in range(int(np.ceil(low / step - 1e-9)), int(np.floor(high / step + 1e-9)) + 1)]
    labels = [f"{value:.{decimals}f}" for value in values]
    return values, [label.lstrip("-") if float(label) == 0 else label for label in labels]


def _font(ImageFont, size: int):
    try:
        return ImageFont.load_default(size=size)  # Pillow's scalable font (needs FreeType)
    except (TypeError, ValueError, ImportError, OSError):
        return ImageFont.load_default()


def _text_size(font, text: str) -> tuple[int, int]:
    left, top, right, bottom = font.getbbox(text)
    return int(right - left), int(bottom - top)


def _require_pillow():
    try:
        from PIL import Image, ImageDraw, ImageFont
    except ImportError as exc:
        raise ImportError(f"the reconstruction PNG needs Pillow, which is not installed; {INSTALL_HINT}") from exc
    return Image, ImageDraw, ImageFont
