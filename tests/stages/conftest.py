"""The ``gain`` fixture of the GRPO learning tests (test_grpo_learning.py, test_grpo_refinements_learning.py)."""

from __future__ import annotations

import pytest
from grpo_learning_world import EVAL_SAMPLES, EVAL_SEED, ITERATIONS, PROMPTS, VARIANTS

from vpt.rewards.heuristic import brightness
from vpt.stages.grpo import GrpoOptions
from vpt.testing.grpo_loop import LoopSettings, run_grpo_loop


@pytest.fixture(scope="module")
def gain(tiny_zoo, tmp_path_factory):
    """gain(variant, seed): eval brightness after minus before a run (runs are cached per test module)."""
    done: dict[tuple[str, int], float] = {}

    def run(variant: str, seed: int) -> float:
        if (variant, seed) not in done:
            reward_fn, changes = VARIANTS[variant]
            options = GrpoOptions(**{"reward": {"brightness": 1.0}, "seed": seed, **changes})
            result = run_grpo_loop(tiny_zoo, PROMPTS, reward_fn, options, ITERATIONS,
                                   tmp_path_factory.mktemp(f"{variant}-{seed}"), LoopSettings(seed=seed),
                                   evaluation=(PROMPTS, EVAL_SAMPLES, EVAL_SEED, brightness))
            done[(variant, seed)] = result.after - result.before
            print(f"{variant} seed {seed}: eval brightness {result.before:.4f} -> {result.after:.4f}")
        return done[(variant, seed)]

    return run
