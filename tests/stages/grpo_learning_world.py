"""The toy-world GRPO runs the learning tests share: the prompts, the rewards (brightness, its negation, a random
control, brightness with flicker), the variants and the settings of the runs (the ``gain`` fixture of this folder's conftest.py runs them)."""

from __future__ import annotations

import numpy as np
import pytest

from vpt.rewards.heuristic import brightness, flicker
from vpt.rollouts.sampling import derived_seed
from vpt.toyworld import TOY_PROMPTS

ITERATIONS = 30
MARGIN = 0.03  # brightness in [0, 1]; the fixed-noise samples start near 0.55
PROMPTS = list(TOY_PROMPTS)
EVAL_SAMPLES, EVAL_SEED = 2, 1000  # two ODE samples per prompt from fixed initial noises
SEEDS = [0, pytest.param(1, marks=pytest.mark.slow), pytest.param(2, marks=pytest.mark.slow)]


def _brightness(rows, videos):
    return {"brightness": np.array([brightness(video) for video in videos])}


def _negated(rows, videos):
    return {"brightness": -_brightness(rows, videos)["brightness"]}


def _random(rows, videos):
    return {"brightness": np.array([np.random.default_rng(derived_seed("control", row["id"], row["seed"])).random()
                                    for row in rows])}


def _brightness_and_flicker(rows, videos):
    return {**_brightness(rows, videos), "flicker": np.array([flicker(video) for video in videos])}


VARIANTS = {
    "grpo": (_brightness, {}),
    "control": (_random, {}),
    "negated": (_negated, {}),
    "bpgo": (_brightness, {"bpgo": True}),
    "vipo": (_brightness, {"vipo": True}),
    # visual first: brightness, then flicker (steadiness); the curriculum weights them by competence
    "self-paced": (_brightness_and_flicker, {"reward": {"brightness": 1.0, "flicker": 1.0},
                                             "self_paced": "softmax"}),
}
