"""Draw specs/figures/coordinate_conventions.png: where each channel's Y patch is cut, physical vs baseline."""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from ptycho.raw_data import RawData  # noqa: E402
from ptycho.patches import extract_patches  # noqa: E402

OUT = Path(__file__).with_suffix(".png")
GROUP = 0
COLOURS = ("tab:red", "tab:blue", "tab:green", "tab:orange")


def far_field_amplitude(probe: np.ndarray, patch: np.ndarray) -> np.ndarray:
    return np.abs(np.fft.fftshift(np.fft.fft2(probe * patch, norm="ortho")))


def main() -> None:
    raw = RawData.from_file(ROOT / "datasets" / "sim_small.npz")
    N = raw.diff3d.shape[1]
    grouped = raw.generate_grouped_data(N, K=7, nsamples=200, seed=42, gridsize=2)
    nn = grouped["nn_indices"][GROUP]
    centre = grouped["coords_offsets"][GROUP, 0, :, 0]
    member = grouped["coords_nn"][GROUP, 0]  # (2, C): where each channel's pattern was measured
    baseline = centre[:, None] + grouped["coords_relative"][GROUP, 0]  # PtychoPINN's Y position: 2 * centre - member

    fig = plt.figure(figsize=(13, 6.2), layout="constrained")
    grid = fig.add_gridspec(2, 4, width_ratios=(2.2, 1, 1, 1))
    ax = fig.add_subplot(grid[:, 0])
    pad = N // 2
    ax.imshow(np.abs(np.pad(raw.objectGuess, pad)), cmap="gray", origin="upper")
    for c in range(len(nn)):
        x, y = member[:, c]
        bx, by = baseline[:, c]
        if c == 0:  # one channel's N x N windows; the others are drawn as points only
            ax.add_patch(Rectangle((x, y), N, N, fill=False, lw=1.6, ec=COLOURS[c]))
            ax.add_patch(Rectangle((bx, by), N, N, fill=False, lw=1.2, ls="--", ec=COLOURS[c]))
        ax.plot(x + pad, y + pad, "o", color=COLOURS[c], ms=6)
        ax.plot(bx + pad, by + pad, "x", color=COLOURS[c], ms=8, mew=2)
        ax.annotate("", xy=(bx + pad, by + pad), xytext=(x + pad, y + pad), arrowprops=dict(arrowstyle="->", color=COLOURS[c], lw=1))
    ax.plot(centre[0] + pad, centre[1] + pad, "+", color="white", ms=14, mew=2)
    lo = np.minimum(member.min(axis=1), baseline.min(axis=1)) - 6
    hi = np.maximum(member.max(axis=1), baseline.max(axis=1)) + N + 6
    ax.set_xlim(lo[0], hi[0])
    ax.set_ylim(hi[1], lo[1])
    ax.set_title("group 0 of the embedded scan on |objectGuess| (padded by N/2); o: where channel c's pattern was\n"
                 "measured (physical Y), x: baseline Y, reflected through the centre +; boxes: channel 0's windows", fontsize=8)
    ax.set_xlabel("x (padded object pixels)")
    ax.set_ylabel("y (padded object pixels)")

    c = 0
    physical_patch = extract_patches(raw.objectGuess, member[0, c:c + 1], member[1, c:c + 1], N)[0]
    baseline_patch = grouped["Y"][GROUP, :, :, c]
    measured = raw.diff3d[nn[c]]
    panels = [
        (np.abs(physical_patch), "|Y| physical (channel 0)", "gray"),
        (np.abs(baseline_patch), "|Y| baseline (channel 0)", "gray"),
        (np.log1p(measured), "measured pattern nn[0] (log)", "viridis"),
        (np.log1p(far_field_amplitude(raw.probeGuess, physical_patch)), "|F(probe * Y physical)| (log)", "viridis"),
        (np.log1p(far_field_amplitude(raw.probeGuess, baseline_patch)), "|F(probe * Y baseline)| (log)", "viridis"),
    ]
    cells = [grid[0, 1], grid[0, 2], grid[1, 1], grid[1, 2], grid[1, 3]]
    for cell, (image, title, cmap) in zip(cells, panels):
        axis = fig.add_subplot(cell)
        axis.imshow(image, cmap=cmap)
        axis.set_title(title, fontsize=9)
        axis.set_xticks([])
        axis.set_yticks([])
    note = fig.add_subplot(grid[0, 3])
    note.axis("off")
    error = lambda patch: np.abs(far_field_amplitude(raw.probeGuess, patch) - measured).max() / measured.max()  # noqa: E731
    note.text(0, 0.5, f"max |model - measured| / max:\n  physical Y: {error(physical_patch):.3f}\n  baseline Y: {error(baseline_patch):.3f}\n"
              "(embedded scan, Poisson noise;\n gridsize 2, K 7, seed 42)", fontsize=9, va="center", family="monospace")
    fig.savefig(OUT, dpi=110)


if __name__ == "__main__":
    main()
