"""Per-scan lines while an experiment runs, then its JSON record and the kind means."""

from __future__ import annotations

import json
from pathlib import Path


def print_scan(stem: str, kind: str, ways: dict) -> None:
    print(stem, kind, {way: (round(v["amplitude_r"], 3), round(v["phase_r"], 3), round(v["cpu_s"], 2)) for way, v in ways.items()}, flush=True)


def write_record(per_scan: dict, path: str | Path) -> None:
    """``per_scan`` (scan -> {kind, ways}) written to ``path`` and its kind means printed (amp r / phase r, CPU s)."""
    from benchmarks.bench_starts import kind_means

    Path(path).write_text(json.dumps(per_scan, indent=1))
    for kind, ways in kind_means(per_scan).items():
        for way, mean in ways.items():
            print(f"{kind:11s} {way:28s} {mean['amplitude_r']:.3f} / {mean['phase_r']:.3f}  {mean['cpu_s']:.2f} s")
