"""Hard negatives from scored groups: best vs worst, --min-gap, top-k x bottom-k, agreement of reward models."""

from __future__ import annotations

import pytest

from vpt.errors import VptError
from vpt.prefs.from_scores import group_column, pairs_from_scores, rewards_by_id
from vpt.rewards.expression import parse_reward

VIDEOS = [
    {"id": "v1", "prompt": "cat", "group_id": "g1"}, {"id": "v2", "prompt": "cat", "group_id": "g1"},
    {"id": "v3", "prompt": "cat", "group_id": "g1"}, {"id": "v4", "prompt": "cat", "group_id": "g1"},
    {"id": "v5", "prompt": "dog", "group_id": "g2"}, {"id": "v6", "prompt": "dog", "group_id": "g2"},
    {"id": "v7", "prompt": "owl", "group_id": "g3"}, {"id": "v8", "prompt": "dog", "group_id": "g2"},
    {"id": "v9", "prompt": "eel", "group_id": None},
]
PATHS = [f"/data/{row['id']}.mp4" for row in VIDEOS]
PRIMARY = {"v1": 0.9, "v2": 0.1, "v3": 0.5, "v4": 0.2, "v5": 0.4, "v6": 0.45, "v7": 0.3, "v9": 0.1}


def pairs(rewards=(PRIMARY,), **options):
    return pairs_from_scores(VIDEOS, PATHS, list(rewards), ["score"], **options)


def summary(built):
    return [(row["id_a"], row["id_b"], round(row["gap"], 6)) for row in built.rows]


def test_best_against_worst_in_each_group():
    built = pairs()
    assert summary(built) == [("v1", "v2", 0.8), ("v6", "v5", 0.05)]
    assert built.groups == 3 and built.group_by == "group_id"
    assert built.skipped == {"no group": 1, "unscored video": 1, "group of one": 1}
    first = built.rows[0]
    assert {k: first[k] for k in ("path_a", "path_b", "prompt", "vq", "mq", "ta", "overall", "source", "group")} == {
        "path_a": "/data/v1.mp4", "path_b": "/data/v2.mp4", "prompt": "cat", "vq": "invalid", "mq": "invalid",
        "ta": "invalid", "overall": "a", "source": "scores", "group": "g1"}


def test_min_gap_and_top_k():
    assert summary(pairs(min_gap=0.1)) == [("v1", "v2", 0.8)]
    assert pairs(min_gap=0.1).skipped["gap below --min-gap"] == 1
    assert summary(pairs(top_k=2)) == [("v1", "v2", 0.8), ("v1", "v4", 0.7), ("v3", "v2", 0.4), ("v3", "v4", 0.3),
                                       ("v6", "v5", 0.05)]  # g2 has 2 scored samples: k = 1 there


def test_every_reward_model_must_agree_on_the_order():
    other = {"v1": 5.0, "v2": 1.0, "v3": 2.0, "v4": 3.0, "v5": 0.0, "v6": 1.0}  # v3 < v4 here; v7 unscored
    built = pairs(rewards=(PRIMARY, other), top_k=2)
    assert summary(built) == [("v1", "v2", 0.8), ("v1", "v4", 0.7), ("v3", "v2", 0.4), ("v6", "v5", 0.05)]
    assert built.skipped["reward models disagree"] == 1
    assert summary(pairs(rewards=(PRIMARY, {"v1": 1.0}))) == []  # a pair the other model did not score: no pair


def test_equal_rewards_make_no_pair():
    flat = {key: 0.5 for key in PRIMARY}
    assert pairs(rewards=(flat,)).rows == []


def test_a_single_dimension_reward_labels_that_dimension():
    built = pairs_from_scores(VIDEOS, PATHS, [PRIMARY], ["ta"])
    assert [(row["vq"], row["mq"], row["ta"], row["overall"]) for row in built.rows] == [("invalid", "invalid", "a",
                                                                                          "a")] * 2


def test_weighted_rewards_from_a_scores_table():
    weights = parse_reward("vq=1, ta=2")
    assert weights == {"vq": 1.0, "ta": 2.0} and parse_reward("overall") == {"overall": 1.0}
    rows = [{"id": "a", "vq": 1.0, "ta": 0.5, "error": None}, {"id": "b", "vq": None, "ta": 1.0, "error": "bad"},
            {"id": "c", "vq": -1.0, "ta": 0.25, "error": None}]
    assert rewards_by_id(rows, weights, "s.parquet") == {"a": 2.0, "c": -0.5}
    with pytest.raises(VptError, match=r"^s.parquet: has no column 'mq' for --reward; its score columns: vq, ta$"):
        rewards_by_id(rows, {"mq": 1.0}, "s.parquet")
    with pytest.raises(VptError, match=r"^s.parquet: row 2: video id 'a' is scored twice"):
        rewards_by_id([rows[0], rows[0]], weights, "s.parquet")


@pytest.mark.parametrize("spec", ["vq=x", "vq=1,vq=2", "=2", "vq=inf"])
def test_bad_reward_specs(spec):
    with pytest.raises(VptError, match=rf"^--reward {spec}: expected COLUMN or COLUMN=WEIGHT"):
        parse_reward(spec)


def test_grouping_column_falls_back_and_is_checked():
    assert group_column([{"id": "a", "group_id": None, "prompt_id": "p", "prompt": "x"}], None, "v") == "prompt_id"
    assert group_column([{"id": "a", "prompt": "x"}], None, "v") == "prompt"
    with pytest.raises(VptError, match=r"^v: has no column 'seed' to group by; its columns: id, prompt$"):
        group_column([{"id": "a", "prompt": "x"}], "seed", "v")
    with pytest.raises(VptError, match=r"^v: row 3: video id 'v1' is already used by row 1; give every video its "
                                       r"own id$"):
        pairs_from_scores(VIDEOS[:2] + VIDEOS[:1], PATHS[:3], [PRIMARY], ["score"], source="v")
    with pytest.raises(VptError, match=r"^--top-k must be at least 1, got 0$"):
        pairs(top_k=0)
