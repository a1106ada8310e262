"""benchmarks/bench_starts.py refuses ways it cannot name or run, before any scan is generated."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")

from benchmarks import bench_starts  # noqa: E402


@pytest.mark.parametrize("argv, message", [
    (["--steps", "0"], "RefinementUpdate.step"), (["--steps", "nan"], "RefinementUpdate.step"), (["--steps", "2.5"], "RefinementUpdate.step"),
    (["--plateaus", "nan"], "RefinementUpdate.plateau"),
    (["--object-network", "0"], "--object-network 0"), (["--sweeps", "3", "5", "--object-network", "5"], "below one of --sweeps"),
    (["--steps", "1.5", "1.5000001"], "same way twice"), (["--plateaus", "0.002", "0.0020000001"], "same way twice"),
])
def test_bad_or_unnameable_ways_are_refused_before_any_work(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        bench_starts.parse_args(argv)
    assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_ways_are_named_by_what_differs_from_the_default():
    assert bench_starts.parse_args(["--steps", "1", "1.0", "1.5"]).steps == [1.0, 1.5]
    assert bench_starts.way_name("flat", 5, 0.002) == "flat + 5"
    assert bench_starts.way_name("flat", 5, 0.0, 1.5) == "flat + 5 (plateau 0, step 1.5)"
