import math

import numpy as np
import pytest

from vpt.metrics.gsb import (
    bootstrap_interval, clustered_bootstrap_interval, count_judgements, gsb_metrics, gsb_row, parse_judgements,
)


def width(interval):
    low, high = interval
    return high - low


def test_bpgo_example_by_hand():
    # WinRate 34/52, Preference (34 + 24)/100, Margin (34 - 18)/100.
    assert gsb_metrics(34, 48, 18) == {
        "win_rate": pytest.approx(65.38461538461539, rel=1e-12), "preference": 58.0, "margin": 16.0,
    }


def test_no_bad_judgement_wins_every_decisive_one():
    assert gsb_metrics(5, 5, 0) == {"win_rate": 100.0, "preference": 75.0, "margin": 50.0}


def test_only_ties_leave_the_win_rate_undefined():
    metrics = gsb_metrics(0, 4, 0)
    assert math.isnan(metrics["win_rate"]) and (metrics["preference"], metrics["margin"]) == (50.0, 0.0)


def test_no_judgement_leaves_every_metric_undefined():
    assert all(math.isnan(value) for value in gsb_metrics(0, 0, 0).values())
    assert all(math.isnan(v) for interval in bootstrap_interval(0, 0, 0, 100).values() for v in interval)


@pytest.mark.parametrize("counts, message", [
    ((-1, 0, 0), "good is -1; GSB counts must be integers of 0 or more"),
    ((1, 2.5, 0), "same is 2.5; GSB counts must be integers of 0 or more"),
    ((1, 0, True), "bad is True; GSB counts must be integers of 0 or more"),
])
def test_counts_must_be_non_negative_integers(counts, message):
    with pytest.raises(ValueError) as error:
        gsb_metrics(*counts)
    assert str(error.value) == message


def test_bootstrap_is_reproducible_for_a_seed_and_contains_the_point_estimate():
    first = bootstrap_interval(34, 48, 18, 2000, seed=1)
    assert bootstrap_interval(34, 48, 18, 2000, seed=1) == first
    assert bootstrap_interval(34, 48, 18, 2000, seed=2) != first
    point = gsb_metrics(34, 48, 18)
    for metric, (low, high) in first.items():
        assert low < point[metric] < high, metric


def test_preference_interval_matches_the_normal_approximation():
    good, same, bad = 400, 300, 300
    n = good + same + bad
    # Per-judgement preference score is 1, 1/2 or 0; its mean is the Preference.
    scores = np.repeat(np.array([1.0, 0.5, 0.0]), [good, same, bad])
    half_width = 100 * 1.959963984540054 * math.sqrt(scores.var() / n)
    low, high = bootstrap_interval(good, same, bad, 10_000, seed=0)["preference"]
    assert (high - low) / 2 == pytest.approx(half_width, rel=0.1)
    assert (low + high) / 2 == pytest.approx(55.0, abs=0.3)


def test_win_rate_interval_leaves_undefined_replicates_out():
    # With 1 G in 30 judgements some replicates hold no decisive judgement; they must not poison the interval.
    low, high = bootstrap_interval(1, 29, 0, 2000, seed=0)["win_rate"]
    assert (low, high) == (100.0, 100.0)
    assert all(math.isnan(v) for v in bootstrap_interval(0, 30, 0, 100)["win_rate"])


def test_one_judgement_per_cluster_matches_the_independent_bootstrap():
    codes = np.repeat([0, 1, 2], [34, 48, 18])
    per_cluster = count_judgements(codes, clusters=range(len(codes)))
    assert per_cluster.shape == (100, 3)
    clustered = clustered_bootstrap_interval(per_cluster, 4000, seed=0)
    independent = bootstrap_interval(34, 48, 18, 4000, seed=0)
    for metric in independent:
        assert width(clustered[metric]) == pytest.approx(width(independent[metric]), rel=0.15), metric


def test_correlated_clusters_widen_the_interval():
    # 6 prompts judged all-G and 4 all-B, 10 judgements each: effectively 10 judgements, not 100.
    per_cluster = np.array([[10, 0, 0]] * 6 + [[0, 0, 10]] * 4)
    clustered = clustered_bootstrap_interval(per_cluster, 4000, seed=0)
    independent = bootstrap_interval(60, 0, 40, 4000, seed=0)
    for metric in independent:
        assert width(clustered[metric]) > 2 * width(independent[metric]), metric


def test_clustered_bootstrap_gives_the_same_interval_in_any_chunk_size(monkeypatch):
    import vpt.metrics.gsb as gsb

    per_cluster = np.array([[3, 1, 0], [0, 2, 2], [1, 1, 1]])
    whole = clustered_bootstrap_interval(per_cluster, 500, seed=3)
    monkeypatch.setattr(gsb, "_WEIGHT_CELLS", 3 * 7)  # 7 replicates per chunk, the last one short
    assert clustered_bootstrap_interval(per_cluster, 500, seed=3) == whole


def test_bootstrap_arguments_are_checked():
    with pytest.raises(ValueError, match="the bootstrap needs at least 1"):
        bootstrap_interval(1, 1, 1, 0)
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        bootstrap_interval(1, 1, 1, 10, confidence=1.0)
    with pytest.raises(ValueError, match=r"expected \[K, 3\]"):
        clustered_bootstrap_interval(np.ones((4, 2), np.int64))


def test_labels_of_either_spelling_in_any_case():
    codes = parse_judgements(["G", " good", "S", "Same ", "b", "BAD"])
    assert codes.tolist() == [0, 0, 1, 1, 2, 2]
    assert count_judgements(codes).tolist() == [2, 2, 2]
    assert count_judgements(codes, clusters=["p1", "p2", "p1", "p1", "p3", "p2"]).tolist() == [
        [1, 2, 0], [1, 0, 1], [0, 0, 1],
    ]


@pytest.mark.parametrize("labels, message", [
    (["G", "meh"], "row 2: unknown judgement 'meh'; accepted labels: G, S, B, good, same, bad (any case)"),
    ([">"], "row 1: unknown judgement '>'; accepted labels: G, S, B, good, same, bad (any case)"),
    (["S", "S", None], "row 3: unknown judgement None; accepted labels: G, S, B, good, same, bad (any case)"),
])
def test_unknown_labels_name_the_row_and_value(labels, message):
    with pytest.raises(ValueError) as error:
        parse_judgements(labels)
    assert str(error.value) == message


def test_row_holds_counts_metrics_and_intervals():
    row = gsb_row("motion", np.array([[2, 0, 1], [0, 3, 0]]), 200, 0.9, 0)
    assert (row["aspect"], row["good"], row["same"], row["bad"], row["total"]) == ("motion", 2, 3, 1, 6)
    assert (row["bootstrap"], row["confidence"], row["clusters"]) == (200, 0.9, 2)
    assert row["preference"] == pytest.approx(100 * 3.5 / 6)
    assert row["preference_low"] <= row["preference"] <= row["preference_high"]
    undefined = gsb_row("overall", [0, 2, 0], 50, 0.95, 0)
    assert undefined["win_rate"] is None and undefined["win_rate_low"] is None and undefined["clusters"] is None
