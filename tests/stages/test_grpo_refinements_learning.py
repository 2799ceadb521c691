"""GRPO's refinements learn too (CPU, seeded): BPGO, ViPO and the self-paced curriculum each raise the brightness of
fresh deterministic samples measurably more than the random-reward control run (see test_grpo_learning.py;
a module of its own so the two modules' runs share the test workers). Seed 0 by default; seeds 1 and 2 are
marked slow."""

from __future__ import annotations

import pytest
from grpo_learning_world import MARGIN, SEEDS


@pytest.mark.parametrize("variant", ["bpgo", "vipo", "self-paced"])
@pytest.mark.parametrize("seed", SEEDS)
def test_the_refinements_beat_the_control_too(gain, variant, seed):
    assert gain(variant, seed) > max(gain("control", seed), 0.0) + MARGIN
