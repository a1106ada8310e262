"""benchmarks/bench_train.py's tree specs: every accepted form means what it says; anything else is refused."""

from __future__ import annotations

import pytest

from benchmarks import bench_train


def test_a_tree_names_its_path_precision_and_cache(tmp_path):
    assert bench_train.parse_tree(f"a={tmp_path}") == {"label": "a", "path": str(tmp_path), "precision": "fp32", "input_cache": "default"}
    tree = bench_train.parse_tree(f"b={tmp_path}:bf16:nocache")
    assert (tree["precision"], tree["input_cache"]) == ("bf16", "off") and bench_train.tree_key(tree) == "b:bf16:nocache"
    assert bench_train.parse_tree(f"c={tmp_path}:nocache")["precision"] == "fp32"


@pytest.mark.parametrize("suffix", [":fp16", ":NOCACHE", ":nocache:bf16", ":bf16:cache", "/missing"])
def test_a_tree_spec_that_is_not_one_is_refused_not_run_as_another_tree(tmp_path, suffix):
    with pytest.raises(ValueError, match=r"LABEL=PATH\[:fp32\|bf16\]\[:nocache\]"):
        bench_train.parse_tree(f"x={tmp_path}{suffix}")
    with pytest.raises(ValueError):
        bench_train.parse_tree(str(tmp_path))  # no label


def test_two_trees_whose_runs_would_merge_are_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        bench_train.main(["--tree", f"a={tmp_path}:bf16", "--tree", f"a={tmp_path}:bf16", "--json", str(tmp_path / "t.json")])
    assert exit_.value.code == 2 and "share a label" in capsys.readouterr().err
