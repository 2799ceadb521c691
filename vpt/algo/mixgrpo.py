"""MixGRPO's mixed ODE-SDE sampling (arXiv 2507.21802): a window of SDE steps that slides with the iteration, and
("Flash") fewer deterministic steps after the window.

Only the steps in the window are stochastic, recorded and trained; every other step is a deterministic ODE step,
whose solver :func:`vpt.algo.flow_sde.sample_flow` chooses (``ode_solver``). Pure functions over step indices and
sigma schedules; the caller keeps the iteration count (a GRPO policy checkpoint records it).
"""

from __future__ import annotations

import math

import numpy as np
import torch

WINDOW_STRATEGIES = ("progressive", "random")


def window_starts(steps: int, size: int) -> int:
    """How many window positions a schedule of ``steps`` steps has: windows ``[start, start + size)`` of stochastic
    steps, every one before the last step (which is never stochastic)."""
    return steps - size


def sliding_window(strategy: str, iteration: int, steps: int, size: int, stride: int = 1, every: int = 1,
                   seed: int = 0) -> tuple[int, int]:
    """The SDE window ``(start, start + size)`` of the ``iteration``-th sampling (0: the first, with the base
    policy) over ``steps`` sampler steps.

    - ``progressive``: the window starts at step 0 and moves ``stride`` steps on every ``every`` iterations; past
      the last position it rolls back to 0 — MixGRPO release, fastvideo/utils/grpo_states.py:
      GRPOTrainingStates.update_iteration (``sample_strategy="progressive"``, ``prog_overlap``, ``roll_back``):
      ``start = stride * (iteration // every mod (last // stride + 1))`` with ``last = steps - 1 - size``.
    - ``random``: the start is drawn uniformly from ``0..last`` with a generator seeded by ``(seed, iteration)``
      (the release draws it from ``np.random.default_rng(seed)`` the same way).

    Unlike the release, a window never shrinks at the end of the schedule: every position holds ``size`` steps (the
    release cuts the window at the last trainable step, and its last position is empty).
    """
    if strategy not in WINDOW_STRATEGIES:
        raise ValueError(f"window strategy must be one of {', '.join(WINDOW_STRATEGIES)}, got {strategy!r}")
    if size < 1 or stride < 1 or every < 1 or iteration < 0:
        raise ValueError(f"need size, stride, every >= 1 and iteration >= 0, got {size}, {stride}, {every}, "
                         f"{iteration}")
    positions = window_starts(steps, size)
    if positions < 1:
        raise ValueError(f"a window of {size} steps does not fit before the last of {steps} steps")
    last = positions - 1
    if strategy == "progressive":
        start = stride * ((iteration // every) % (last // stride + 1))
    else:
        start = int(np.random.default_rng([seed, iteration]).integers(0, last + 1))
    return start, start + size


def tail_steps(count: int, ratio: float) -> int:
    """How many steps replace the ``count`` deterministic steps after the window at ``ratio`` in (0, 1]:
    ``max(1, floor(ratio * count))``, as MixGRPO-Flash compresses the post-window ODE segment (release,
    fastvideo/utils/sampling_utils.py, ``compress_ratio``)."""
    if not 0 < ratio <= 1:
        raise ValueError(f"the tail ratio must lie in (0, 1], got {ratio}")
    return max(1, math.floor(ratio * count))


def compressed_tail(sigmas: torch.Tensor, end: int, ratio: float, shift: float) -> torch.Tensor:
    """``sigmas`` [N + 1] (1 -> 0) with the steps after index ``end`` (the window's last state) replaced by
    :func:`tail_steps` steps down to 0, spaced as the time-shifted schedule spaces them: uniform in the unshifted
    time ``t`` and mapped by ``σ = shift·t / (1 + (shift − 1)·t)`` (diffusers' ``FlowMatchEulerDiscreteScheduler``
    shift). MixGRPO-Flash (release, fastvideo/utils/sampling_utils.py, ``dpm_apply_strategy="post"``) compresses the
    segment the same way but spaces it linearly in σ; keeping the schedule's own spacing leaves ``ratio = 1`` the
    identity up to rounding. Returns float32 [end + 1 + tail_steps]."""
    count = len(sigmas) - 1 - end
    if count < 1:
        raise ValueError(f"no step after index {end} of a {len(sigmas) - 1}-step schedule")
    if not (shift > 0 and math.isfinite(shift)):
        raise ValueError(f"the shift must be positive, got {shift}")
    steps = tail_steps(count, ratio)
    if steps == count:
        return sigmas.to(torch.float32)
    sigma_end = float(sigmas[end])
    time_end = sigma_end / (shift - (shift - 1) * sigma_end)
    times = torch.linspace(time_end, 0.0, steps + 1, dtype=torch.float64)[1:]
    tail = shift * times / (1 + (shift - 1) * times)
    return torch.cat([sigmas[: end + 1].to(torch.float32), tail.to(torch.float32)])
