"""Evaluation report arithmetic (no simulator): Wilson intervals and the per-subtask aggregate."""

from __future__ import annotations

import pytest

from sgvla.eval.report import aggregate, markdown_table, wilson_interval


def test_wilson_interval_known_values():
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson_interval(10, 10) == pytest.approx((0.7225, 1.0), abs=1e-4)
    assert wilson_interval(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_aggregate_and_table_name_the_split_and_seeds():
    eps = [{"subtask": "open", "seed": 1_000_000 + i, "success": i < 3, "steps": 100} for i in range(4)]
    agg = aggregate(eps)
    per = agg["per_subtask"]["open"]
    assert (per["successes"], per["episodes"], per["success_rate"]) == (3, 4, 0.75)
    assert per["wilson95"] == pytest.approx(wilson_interval(3, 4))
    res = {"model": "m", "task": "mini_kitchen", "mode": "tokens", "split": "val",
           "seeds": [e["seed"] for e in eps], "aggregate": agg}
    assert "val episodes (reset seeds 1000000..1000003)" in markdown_table(res)


def test_effect_rate_counts_partial_progress_and_skips_envs_without_it():
    eps = [{"subtask": "pick", "seed": i, "success": i == 0, "steps": 50, "effect_once": i < 2} for i in range(4)]
    eps += [{"subtask": "open", "seed": 0, "success": False, "steps": 200, "effect_once": None}]
    per = aggregate(eps)["per_subtask"]
    assert per["pick"]["effect_rate"] == 0.5 and "effect_rate" not in per["open"]
    res = {"model": "m", "task": "mini_kitchen", "mode": "tokens", "split": "val", "seeds": [0],
           "aggregate": aggregate(eps)}
    assert "effect reached at some step (rest or not): pick 0.50." in markdown_table(res)


def test_mshab_results_use_the_papers_six_columns():
    """Open and close split by articulation (fridge / drawer), Avg. over the six, as Tables 2-5."""
    def ep(sub, target, ok):
        return {"subtask": sub, "seed": 0, "success": ok, "steps": 200, "target": target}

    eps = [ep("pick", "024_bowl", True), ep("pick", "013_apple", False), ep("place", "024_bowl", True),
           ep("open", "fridge", True), ep("open", "kitchen_counter", False), ep("open", "kitchen_counter", False),
           ep("close", "fridge", False), ep("close", "kitchen_counter", True)]
    agg = aggregate(eps)
    cols = agg["paper_layout"]["columns"]
    assert [cols[c]["success_rate"] for c in ("Pick", "Place", "Open Fridge", "Open Drawer", "Close Fridge",
                                               "Close Drawer")] == [0.5, 1.0, 1.0, 0.0, 0.0, 1.0]
    assert agg["paper_layout"]["average_success_rate"] == pytest.approx(3.5 / 6)
    res = {"model": "m", "task": "set_table", "mode": "tokens", "split": "val", "seeds": [0], "aggregate": agg}
    table = markdown_table(res)
    assert "| Pick | Place | Open Fridge | Open Drawer | Close Fridge | Close Drawer | Avg. |" in table
    assert "| 0.50 | 1.00 | 1.00 | 0.00 | 0.00 | 1.00 | 0.58 |" in table
    assert "paper_layout" not in aggregate([ep("open", "drawer", True)])  # the built-in scene: four columns
