"""GRPO learns in the toy world (CPU, seeded): after a run on the tiny zoo, the mean brightness of fresh
deterministic samples from fixed noises moves the way the reward asks, measurably more than a control run whose
reward is random (same seeds, same everything else). Seed 0 runs by default; seeds 1 and 2 are marked slow and run
with ``make test-all`` (the same assertions, so the default run covers the behaviour)."""

from __future__ import annotations

import pytest
from grpo_learning_world import MARGIN, SEEDS


@pytest.mark.parametrize("seed", SEEDS)
def test_grpo_raises_the_reward_more_than_a_random_reward_control(gain, seed):
    assert gain("grpo", seed) > max(gain("control", seed), 0.0) + MARGIN


@pytest.mark.parametrize("seed", SEEDS)
def test_grpo_on_the_negated_reward_lowers_it(gain, seed):
    assert gain("negated", seed) < min(gain("control", seed), 0.0) - MARGIN
