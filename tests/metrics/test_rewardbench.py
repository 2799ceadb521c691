import math

import numpy as np
import pytest

from vpt.metrics.rewardbench import accuracy_with_ties, accuracy_without_ties


def test_without_ties_counts_zero_margin_as_wrong_and_skips_ties():
    margins = [1.0, -2.0, 0.0, 3.0, 0.5]
    labels = [1, -1, 1, -1, 0]
    assert accuracy_without_ties(margins, labels) == 0.5  # right, right, zero = wrong, wrong; the tie is left out


def test_without_ties_on_all_tie_data_is_undefined():
    assert math.isnan(accuracy_without_ties([0.3, -0.1], [0, 0]))


def test_with_ties_hand_worked_sweep():
    # sorted by |m|: 0.1 tie, -0.2 tie, 0.5 A, -1.0 A, 2.0 A
    # eps 0: 2/5, 0.1: 3/5, 0.2: 4/5, 0.5: 3/5, 1.0: 3/5, 2.0: 2/5
    assert accuracy_with_ties([0.1, -0.2, 0.5, 2.0, -1.0], [0, 0, 1, 1, 1]) == (0.8, 0.2)


def test_with_ties_exact_zero_margins_are_predicted_ties():
    assert accuracy_with_ties([0.0, 0.0, 1.0], [0, 1, 1]) == (pytest.approx(2 / 3), 0.0)


def test_with_ties_all_tie_and_no_tie_cases():
    assert accuracy_with_ties([0.3, -0.1], [0, 0]) == (1.0, 0.3)
    assert accuracy_with_ties([1.0, -1.0, 2.0], [1, 1, 1]) == (pytest.approx(2 / 3), 0.0)
    assert all(math.isnan(v) for v in accuracy_with_ties([1.0], [-2]))


def brute_force(margins, labels):
    best = 0.0
    for epsilon in [0.0, *np.abs(margins)]:
        predicted = np.where(np.abs(margins) <= epsilon, 0, np.sign(margins))
        best = max(best, float(np.mean(predicted == labels)))
    return best


@pytest.mark.parametrize("seed", range(5))
def test_with_ties_matches_brute_force_on_random_data_with_repeated_margins(seed):
    rng = np.random.default_rng(seed)
    margins = rng.integers(-4, 5, 200).astype(float)  # many equal |m| and exact zeros
    labels = rng.choice([-1, 0, 1], 200)
    accuracy, epsilon = accuracy_with_ties(margins, labels)
    assert accuracy == pytest.approx(brute_force(margins, labels))
    predicted = np.where(np.abs(margins) <= epsilon, 0, np.sign(margins))
    assert np.mean(predicted == labels) == pytest.approx(accuracy)
