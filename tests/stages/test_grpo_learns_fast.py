"""GRPO learns fast in the toy world (issue 18, item 8): with the example loop's settings (``examples/grpo/Makefile``,
:data:`FAST`), 6 iterations lift rewards the settings were not tuned on. After the run, the mean reward of fresh
deterministic samples from fixed noises beats that of a control run on the negated reward (same seeds, same
everything else) by at least one within-group standard deviation of the base generator's samples: a shift that
stands out of the scatter of one prompt's samples. ``benchmarks/table_grpo_speed.py`` prints the measurements behind
the settings. Seed 0 runs by default; seeds 1 and 2 are marked slow."""

from __future__ import annotations

import pytest
from grpo_learning_world import EVAL_SAMPLES, EVAL_SEED, PROMPTS

from vpt.rewards import heuristic
from vpt.stages.grpo import GrpoOptions
from vpt.testing.grpo_loop import LoopSettings, heuristic_reward, run_grpo_loop, within_group_spread

ITERATIONS = 6
SPREAD_SAMPLES, SPREAD_SEED = 8, 2000  # a group's worth of base samples per prompt, noises apart from the eval's
FAST = {"learning_rate": 3e-2, "steps_per_iteration": 1}  # the Makefile's TRAIN: --lr 3e-2 (one step an iteration)
CLIP_RANGE = 1e-2  # and --clip-range 1e-2 (idle with one step: its ratios are all 1)
REWARDS = ["motion", "flicker"]
SEEDS = [0, pytest.param(1, marks=pytest.mark.slow), pytest.param(2, marks=pytest.mark.slow)]


@pytest.fixture(scope="module")
def spread(tiny_zoo):
    """spread(reward): the base generator's within-group standard deviation of the reward (computed once)."""
    done: dict[str, float] = {}

    def measure(name: str) -> float:
        if name not in done:
            done.update(within_group_spread(tiny_zoo, PROMPTS, SPREAD_SAMPLES, SPREAD_SEED,
                                            {name: getattr(heuristic, name)}))
        return done[name]

    return measure


@pytest.fixture(scope="module")
def fast_gain(tiny_zoo, tmp_path_factory):
    """fast_gain(reward, sign, seed): eval reward after minus before a run on ``sign`` × reward."""

    def run(name: str, sign: float, seed: int) -> float:
        options = GrpoOptions(reward={name: 1.0}, clip_range=CLIP_RANGE, seed=seed)
        result = run_grpo_loop(tiny_zoo, PROMPTS, heuristic_reward(name, sign), options, ITERATIONS,
                               tmp_path_factory.mktemp(f"{name}-{sign:+.0f}-{seed}"), LoopSettings(**FAST, seed=seed),
                               evaluation=(PROMPTS, EVAL_SAMPLES, EVAL_SEED, getattr(heuristic, name)))
        print(f"{name} × {sign:+.0f} seed {seed}: eval {result.before:.5f} -> {result.after:.5f}")
        return result.after - result.before

    return run


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("reward", REWARDS)
def test_six_iterations_beat_a_negated_reward_control_by_one_within_group_std(fast_gain, spread, reward, seed):
    margin = fast_gain(reward, 1.0, seed) - fast_gain(reward, -1.0, seed)
    assert margin >= spread(reward), f"margin {margin:.5f} < within-group std {spread(reward):.5f}"
