"""benchmarks/bench_pretrained.py: LSQML's CPU seconds to a given quality and issue 26's target verdict (no reconstruction)."""

import math

import pytest

pytest.importorskip("torch")

from benchmarks.bench_pretrained import lsqml_cpu_to_reach, target_verdict, time_to_quality  # noqa: E402

CURVE = [  # epochs, CPU s, amplitude r, phase r (out of order on purpose)
    {"epochs": 3, "cpu_s": 3.0, "amplitude_r": 0.90, "phase_r": 0.70},
    {"epochs": 1, "cpu_s": 1.0, "amplitude_r": 0.80, "phase_r": 0.50},
    {"epochs": 10, "cpu_s": 10.0, "amplitude_r": 0.95, "phase_r": 0.90},
]


def test_interpolates_the_later_crossing_in_cpu_seconds():
    # amplitude 0.85 is crossed half-way from 1 to 3 epochs (2.0 s), phase 0.80 half-way from 3 to 10 (6.5 s)
    reach = lsqml_cpu_to_reach(CURVE, 0.85, 0.80)
    assert reach["status"] == "interpolated" and reach["epochs"] == [3, 10]
    assert math.isclose(reach["cpu_s"], 6.5)
    reach = lsqml_cpu_to_reach(CURVE, 0.85, 0.60)
    assert reach["epochs"] == [1, 3] and math.isclose(reach["cpu_s"], 2.0)


def test_bounds_when_first_epoch_already_reaches_or_none_does():
    assert lsqml_cpu_to_reach(CURVE, 0.5, 0.5) == {"status": "at most first", "cpu_s": 1.0, "epochs": [1]}
    reach = lsqml_cpu_to_reach(CURVE, 0.99, 0.5)
    assert reach["status"] == "not reached" and reach["cpu_s"] is None and reach["lower_bound_cpu_s"] == 10.0


def test_target_verdict_needs_quality_and_half_the_cpu_time():
    good = {"amplitude_r": 0.92, "phase_r": 0.88, "cpu_s": 1.0}
    good["lsqml_to_reach"] = time_to_quality(good, CURVE)  # LSQML: 3 -> 10 epochs, amplitude 0.92 at 5.8 s, phase 0.88 at 9.3 s
    assert math.isclose(good["lsqml_to_reach"]["cpu_s"], 9.3) and math.isclose(good["lsqml_to_reach"]["ratio"], 1 / 9.3)
    assert target_verdict(good) == {"quality": True, "fast": True, "met": True}
    slow = dict(good, cpu_s=6.0)
    slow["lsqml_to_reach"] = time_to_quality(slow, CURVE)
    assert target_verdict(slow)["met"] is False and target_verdict(slow)["fast"] is False
    poor = {"amplitude_r": 0.85, "phase_r": 0.60, "cpu_s": 0.1}
    poor["lsqml_to_reach"] = time_to_quality(poor, CURVE)
    assert target_verdict(poor) == {"quality": False, "fast": True, "met": False}
    # reached by LSQML's first epoch already: a small ratio is only a lower bound, so speed is undecided
    early = {"amplitude_r": 0.5, "phase_r": 0.5, "cpu_s": 0.1}
    early["lsqml_to_reach"] = time_to_quality(early, CURVE)
    assert early["lsqml_to_reach"]["ratio_bound"] == "at least" and target_verdict(early)["fast"] is None
    # LSQML never reaches it in its epochs: the ratio is an upper bound, so only a ratio <= 0.5 decides
    beyond = {"amplitude_r": 0.99, "phase_r": 0.95, "cpu_s": 4.0}
    beyond["lsqml_to_reach"] = time_to_quality(beyond, CURVE)
    assert beyond["lsqml_to_reach"]["ratio_bound"] == "at most" and math.isclose(beyond["lsqml_to_reach"]["ratio"], 0.4)
    assert target_verdict(beyond) == {"quality": True, "fast": True, "met": True}
    assert target_verdict(dict(beyond, lsqml_to_reach=time_to_quality(dict(beyond, cpu_s=8.0), CURVE)))["fast"] is None
