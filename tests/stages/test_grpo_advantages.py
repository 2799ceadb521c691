"""grpo-step's reward handling, hand-checked: rewards from scores tables, advantages with BPGO / CRT / self-paced,
state carried between iterations, and the seeded timestep subsets."""

from __future__ import annotations

import math

import pytest
import torch

from vpt.errors import VptError
from vpt.stages.grpo import GrpoOptions, GrpoState, compute_advantages, prior_means, rollout_rewards, trained_blocks

GROUPS = ["g0", "g0", "g1", "g1"]
PROMPTS = ["p0", "p0", "p1", "p1"]


def options(**changes) -> GrpoOptions:
    return GrpoOptions(**{"reward": {"r": 1.0}, **changes})


def rewards(values) -> dict[str, torch.Tensor]:
    return {"r": torch.tensor(values, dtype=torch.float64)}


def test_plain_grpo_advantages_are_per_group_z_scores():
    out = compute_advantages(rewards([1.0, 3.0, 5.0, 5.0]), GROUPS, PROMPTS, options(), GrpoState())
    # group g0: mean 2, population std 1 -> (-1, 1) / (1 + 1e-4); group g1 has no variance -> 0
    expected = [-1 / 1.0001, 1 / 1.0001, 0.0, 0.0]
    assert out.advantages.tolist() == pytest.approx(expected, abs=1e-12)
    assert out.auxiliary is None
    assert out.metrics["groups/zero_advantage"] == 1.0
    assert out.metrics["reward/r/mean"] == pytest.approx(3.5)


def test_bpgo_ras_scales_each_group_by_its_prior_gap():
    state = GrpoState()
    priors = {"p0": {"r": 1.0}, "p1": {"r": 4.0}}
    out = compute_advantages(rewards([1.0, 3.0, 4.0, 6.0]), GROUPS, PROMPTS, options(bpgo=True), state, priors)
    # gaps: g0 mean 2 - 1 = 1, g1 mean 5 - 4 = 1 -> w = 1 + 0.5 * (2 sigmoid(1) - 1)
    weight = 1 + 0.5 * (2 / (1 + math.exp(-1)) - 1)
    base = 1 / 1.0001
    assert out.advantages.tolist() == pytest.approx([-base * weight, base * weight, -base * weight, base * weight])
    assert out.metrics["bpgo/weight_mean"] == pytest.approx(weight)
    # the running priors are folded in even when a reference table gave this iteration's prior
    assert state.priors == {"p0": {"r": 2.0}, "p1": {"r": 5.0}}


def test_running_priors_start_neutral_then_follow_an_ema():
    state = GrpoState()
    first = compute_advantages(rewards([1.0, 3.0, 4.0, 6.0]), GROUPS, PROMPTS, options(bpgo=True), state)
    assert first.metrics["bpgo/weight_min"] == first.metrics["bpgo/weight_max"] == 1.0  # own mean: gap 0
    second = compute_advantages(rewards([2.0, 4.0, 4.0, 6.0]), GROUPS, PROMPTS, options(bpgo=True), state)
    # g0: prior 2 (last mean), mean now 3 -> gap 1; g1: prior 5, mean 5 -> gap 0
    expected = sorted([1 + 0.5 * (2 / (1 + math.exp(-1)) - 1), 1.0])
    assert [second.metrics["bpgo/weight_min"], second.metrics["bpgo/weight_max"]] == pytest.approx(expected)
    assert state.priors["p0"]["r"] == pytest.approx(0.9 * 2.0 + 0.1 * 3.0)


def test_crt_replaces_or_adds_an_auxiliary_term():
    priors = {"p0": {"r": 2.0}, "p1": {"r": 5.0}}
    values = [1.0, 3.0, 4.0, 6.0]
    replaced = compute_advantages(rewards(values), GROUPS, PROMPTS, options(bpgo=True, crt="replace"), GrpoState(),
                                  priors)
    auxiliary = compute_advantages(rewards(values), GROUPS, PROMPTS, options(bpgo=True, crt="auxiliary"),
                                   GrpoState(), priors)
    # independent float64: z-scale on the batch (mean 3.5, std sqrt(3.25)), CRT, then group z-scores
    mean, std = 3.5, math.sqrt(3.25)
    z = [(v - mean) / std for v in values]
    p = [(2 - mean) / std] * 2 + [(5 - mean) / std] * 2
    crt = [(r - q + (1.0 if r > q else 0.0)) * math.exp(min(r, 5.0)) for r, q in zip(z, p)]
    expected = []
    for pair in (crt[:2], crt[2:]):
        centre, spread = sum(pair) / 2, abs(pair[1] - pair[0]) / 2
        expected += [(value - centre) / (spread + 1e-4) for value in pair]
    assert replaced.advantages.tolist() == pytest.approx(expected, rel=1e-9)  # gaps 0: RAS weights are 1
    assert auxiliary.auxiliary.tolist() == pytest.approx(expected, rel=1e-9)
    assert auxiliary.advantages.tolist() == pytest.approx([-1 / 1.0001, 1 / 1.0001] * 2)


def test_self_paced_gated_weights_persist_in_the_state():
    columns = {"vq": 1.0, "mq": 1.0, "ta": 1.0}
    state = GrpoState()
    values = {name: torch.tensor([0.9, 0.8, 0.9, 0.7], dtype=torch.float64) for name in columns}
    opts = options(reward=columns, self_paced="gated")
    out = compute_advantages(values, GROUPS, PROMPTS, opts, state)
    weights = [out.metrics[f"curriculum/{name}"] for name in columns]
    assert sum(weights) == pytest.approx(1.0)
    assert state.curriculum["ema"] == pytest.approx([0.825] * 3)
    again = GrpoState()
    again.load_state_dict(state.state_dict())
    compute_advantages(values, GROUPS, PROMPTS, opts, again)
    assert again.curriculum["ema"] == pytest.approx([0.825] * 3)  # EMA of equal means stays put


def test_rewards_come_from_the_one_table_that_has_each_column():
    rows = [{"id": "a"}, {"id": "b"}]
    tables = [("s1.parquet", [{"id": "b", "score": 1.0, "r": 2.0}, {"id": "a", "score": 0.0, "r": 1.0}]),
              ("s2.parquet", [{"id": "a", "score": 5.0, "q": 7.0}, {"id": "b", "score": 5.0, "q": 8.0}])]
    got = rollout_rewards(rows, tables, ["r", "q"], "r0")
    assert got["r"].tolist() == [1.0, 2.0] and got["q"].tolist() == [7.0, 8.0]
    with pytest.raises(VptError) as error:
        rollout_rewards(rows, tables, ["score"], "r0")
    assert str(error.value) == ("column 'score' is in both s1.parquet and s2.parquet; name columns that only one "
                                "scores table has (e.g. the dimension columns)")


@pytest.mark.parametrize("table, message", [
    ([{"id": "a", "r": 1.0}], "s.parquet: no score for rollout 'b' (1 of 2 rollouts of r0 unscored); score every "
                              "video of the rollouts"),
    ([{"id": "a", "r": 1.0}, {"id": "b", "r": float("nan")}],
     "s.parquet: row 2: column 'r' of rollout 'b' is not a finite number (nan); score it again or drop the "
     "rollout's group"),
    ([{"id": "a", "r": 1.0}, {"id": "b", "r": None, "error": "unreadable video"}],
     "s.parquet: row 2: column 'r' of rollout 'b' is not a finite number (unreadable video); score it again or "
     "drop the rollout's group"),
    ([{"id": "a", "q": 1.0}], "no scores table has a column 'r' for --reward; tables: s.parquet"),
])
def test_bad_scores_name_the_file_row_and_column(table, message):
    with pytest.raises(VptError) as error:
        rollout_rewards([{"id": "a"}, {"id": "b"}], [("s.parquet", table)], ["r"], "r0")
    assert str(error.value) == message


def test_prior_means_are_per_prompt():
    table = [{"prompt_id": "p0", "r": 1.0}, {"prompt_id": "p0", "r": 3.0}, {"prompt_id": "p1", "r": None},
             {"prompt_id": "p1", "r": 4.0}]
    assert prior_means(table, ["r"], "prior.parquet") == {"p0": {"r": 2.0}, "p1": {"r": 4.0}}


def test_blocks_are_the_sampling_batches_at_each_step_with_a_seeded_step_subset_per_group():
    rows = [{"id": f"s{i}", "group_id": f"g{i // 3}", "sample_index": i % 3, "sampling_batch": 2,
             "recorded_steps": list(range(6))} for i in range(6)]
    rows = rows[::-1]  # row order does not matter: samples are taken in sample order
    # row r holds sample 5 - r: group g1 = rows 0..2 (samples 2, 1, 0), group g0 = rows 3..5
    every = trained_blocks(rows, 1.0, 0, 1)
    assert every[:4] == [((2, 1), 0), ((0,), 0), ((2, 1), 1), ((0,), 1)]
    assert len(every) == 2 * 6 * 2
    half = trained_blocks(rows, 0.5, 0, 1)
    assert len(half) == 2 * 3 * 2
    steps = {rows[members[0]]["group_id"]: set() for members, _ in half}
    for members, k in half:
        steps[rows[members[0]]["group_id"]].add(k)
    assert all(len(chosen) == 3 for chosen in steps.values())
    assert half == trained_blocks(rows, 0.5, 0, 1)
    assert half != trained_blocks(rows, 0.5, 0, 2)  # a new draw every iteration
    assert len(trained_blocks(rows, 0.01, 0, 1)) == 2 * 1 * 2  # at least one step per group
    whole = [dict(row, sampling_batch=None) for row in rows]
    assert trained_blocks(whole, 1.0, 0, 1)[0] == ((2, 1, 0), 0)


def test_options_are_checked():
    with pytest.raises(VptError, match="--crt needs --bpgo"):
        options(crt="replace").check()
    with pytest.raises(VptError, match="--self-paced gated needs exactly three reward columns"):
        options(reward={"a": 1.0, "b": 1.0}, self_paced="gated").check()
    with pytest.raises(VptError, match=r"--timestep-fraction must lie in \(0, 1\]"):
        options(timestep_fraction=0.0).check()


def released_advantages(values, groups, priors, clip=5.0, a=50.0, tau=5.0, prior_var=1.0, low=0.5, high=1.5,
                        alpha=1.0):
    """The TeleBoost release's order in plain float64 Python (fact sheet, items a and b): rerange the rewards, z-score
    them per group with the Bessel std + 1e-4, scale each group by its Bayesian reliability weight, then clip."""
    tilde = [(a * (r - p) + (1.0 if r > p else 0.0)) * r / (1 + math.exp(min(max(-r / tau, -30.0), 30.0)))
             for r, p in zip(values, priors)]
    out = []
    for i, group in enumerate(groups):
        members = [tilde[j] for j, other in enumerate(groups) if other == group]
        n = len(members)
        mean = sum(members) / n
        bessel = math.sqrt(sum((m - mean) ** 2 for m in members) / (n - 1)) if n > 1 else 0.0
        z = (tilde[i] - mean) / (bessel + 1e-4) if bessel > 0 else 0.0
        variance = bessel**2 + 1e-8 if n > 1 else 1.0
        v = 1 / (n / variance + 1 / prior_var)
        m = v * (n * mean / variance + priors[i] / prior_var)
        probability = 0.5 * (1 + math.erf((m - priors[i]) / math.sqrt(v) / math.sqrt(2)))
        weight = low + (high - low) * probability
        scale = min(max(1 + alpha * (weight - 1), 0.01), 10.0)
        out.append(max(-clip, min(clip, z * scale)))
    return out


@pytest.mark.parametrize("values, priors", [
    ([0.2, 0.9, 0.4, 0.45, 0.5, 0.1], [0.5, 0.5, 0.3, 0.3, 0.3, 0.3]),
    ([1.0, -1.0, 0.5, 2.0, 2.5, 3.0], [0.0, 0.0, 2.0, 2.0, 2.0, 2.0]),
])
def test_the_released_bpgo_order_matches_a_float64_reference(values, priors):
    groups = ["g0", "g0", "g1", "g1", "g1", "g1"]
    released = options(bpgo=True, std="group-unbiased", crt="rerange", ras="bayes-group", ras_alpha=1.0,
                       clip_after_transforms=True)
    out = compute_advantages(rewards(values), groups, [g.replace("g", "p") for g in groups], released, GrpoState(),
                             row_priors=torch.tensor(priors, dtype=torch.float64))
    assert out.advantages.tolist() == pytest.approx(released_advantages(values, groups, priors), rel=1e-9,
                                                    abs=1e-12)


def test_clip_after_transforms_lets_bpgo_scale_past_the_clip_first():
    # each group [0, 2]: z = +-1/(sqrt(2) + 1e-4) (Bessel std sqrt(2)); g0 lies far above its prior (weight 1.5),
    # g1 far below (0.5). Clipped at 0.6 before the scale: 0.9 and 0.3; after: 0.6 and z/2
    values, priors = [0.0, 2.0, 0.0, 2.0], [-100.0, -100.0, 100.0, 100.0]
    z = 1 / (math.sqrt(2) + 1e-4)
    common = dict(bpgo=True, std="group-unbiased", ras="bayes-group", ras_alpha=1.0, advantage_clip=0.6)
    before = compute_advantages(rewards(values), GROUPS, PROMPTS, options(**common), GrpoState(),
                                row_priors=torch.tensor(priors, dtype=torch.float64))
    after = compute_advantages(rewards(values), GROUPS, PROMPTS, options(**common, clip_after_transforms=True),
                               GrpoState(), row_priors=torch.tensor(priors, dtype=torch.float64))
    assert before.advantages.tolist() == pytest.approx([-0.9, 0.9, -0.3, 0.3], rel=1e-6)
    assert after.advantages.tolist() == pytest.approx([-0.6, 0.6, -z / 2, z / 2], rel=1e-6)


def test_min_norm_aggregation_zeroes_disagreeing_samples_and_logs_each_reward():
    both = {"a": torch.tensor([0.0, 1.0, 0.0, 1.0], dtype=torch.float64),
            "b": torch.tensor([0.0, 1.0, 1.0, 0.0], dtype=torch.float64)}
    out = compute_advantages(both, GROUPS, PROMPTS, GrpoOptions(reward={"a": 1.0, "b": 1.0}, aggregation="min-norm"),
                             GrpoState())
    # per reward and group [0, 1]: +-0.5 / (0.5 + 1e-4); g0 agrees (both rise): that value; g1 disagrees: 0
    z = 0.5 / 0.5001
    assert out.advantages.tolist() == pytest.approx([-z, z, 0.0, 0.0])
    assert out.metrics["advantage/a/abs_mean"] == pytest.approx(z)


@pytest.mark.parametrize("changes, message", [
    ({"std": "bessel"}, "--std bessel: choose one of group, group-unbiased, global"),
    ({"crt": "rerange"}, "--crt needs --bpgo"),
    ({"prior_column": "prior"}, "--prior-column is BPGO's prior; add --bpgo"),
    ({"bpgo": True, "ras_weight_range": (1.5, 0.5)}, "--ras-weight-range 1.5,0.5: give MIN,MAX with 0 <= MIN <= MAX"),
    ({"vipo_orient": "up"}, "--vipo-orient up: choose one of border, svd"),
    ({"advantage_eps": 0.0}, "--advantage-eps must be > 0"),
])
def test_released_mode_options_are_checked(changes, message):
    with pytest.raises(VptError, match=message.replace("(", r"\(").replace("+", r"\+")):
        options(**changes)


def test_a_prior_column_is_one_finite_value_per_group():
    from vpt.stages.grpo import prior_column

    rows = [{"group_id": "g0", "prior": 0.5}, {"group_id": "g0", "prior": 0.5}, {"group_id": "g1", "prior": 2}]
    assert prior_column(rows, "prior", "r/").tolist() == [0.5, 0.5, 2.0]
    with pytest.raises(VptError, match="r/: has no column 'p' for --prior-column"):
        prior_column(rows, "p", "r/")
    with pytest.raises(VptError, match="r/: row 2: column 'prior' differs within group 'g0'"):
        prior_column([rows[0], {"group_id": "g0", "prior": 0.7}], "prior", "r/")
    with pytest.raises(VptError, match="r/: row 1: column 'prior' is None, not a finite number"):
        prior_column([{"group_id": "g0", "prior": None}], "prior", "r/")
