"""The TeleBoost release's modes end to end on the tiny zoo: sample-rollouts --sde-form (recorded; grpo-step
recomputes with it, so the first ratios stay exactly 1), --preset teleboost on both commands (given options win), a
prior carried from the prompts table, and the min-norm joint reward."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from vpt.io.tables import read_table, write_table

SMALL = ["--frames", "9", "--height", "32", "--width", "32", "--steps", "4", "--guidance", "3", "-q"]


@pytest.fixture(scope="module")
def prompts(tmp_path_factory):
    root = tmp_path_factory.mktemp("released")
    table = pa.table({"prompt": ["a red ball bouncing", "a white ring on a dark floor"], "prompt_id": ["ball", "ring"],
                      "prior": [0.3, 0.6]})
    write_table(table, root / "prompts.parquet", "prompts")
    return root


def sample(run_vpt, zoo, root, name, *extra):
    result = run_vpt(["sample-rollouts", "-m", zoo, "--prompts", root / "prompts.parquet", "-o", root / name, "-g",
                      "3", "--seed", "3", *SMALL, *extra])
    assert result.exit_code == 0, result.stderr
    result = run_vpt(["score", root / name / "rollouts.parquet", "-m", "brightness,flicker", "-o",
                      root / f"{name}.scores.parquet", "-q"])
    assert result.exit_code == 0, result.stderr
    return read_table(root / name / "rollouts.parquet", "rollouts").to_pylist()


def step(run_vpt, zoo, root, name, out, *extra):
    result = run_vpt(["grpo-step", "--init", zoo, "--rollouts", root / name, "--scores",
                      root / f"{name}.scores.parquet", "-o", root / out, "--lr", "1e-2", "-q", *extra])
    assert result.exit_code == 0, result.stderr
    rows = pq.read_table(root / out / "metrics.parquet").to_pylist()
    record = json.loads((root / out / "policy.json").read_text())
    return {(row["step"], row["name"]): row["value"] for row in rows}, record


@pytest.mark.parametrize("form, noise", [("dancegrpo", "0.25"), ("cps", "0.7")])
def test_the_sde_form_is_recorded_and_the_first_ratios_are_exactly_one(run_vpt, tiny_zoo, prompts, form, noise):
    rows = sample(run_vpt, tiny_zoo, prompts, form, "--sde-form", form, "--noise-level", noise)
    assert {row["sde_form"] for row in rows} == {form}
    assert pq.read_metadata(prompts / form / "rollouts.parquet").metadata[b"vpt.schema_version"] == b"2"
    metrics, _ = step(run_vpt, tiny_zoo, prompts, form, f"{form}-p1", "--reward", "brightness")
    assert metrics[(None, "ratio_min")] == 1.0 and metrics[(None, "ratio_max")] == 1.0
    assert metrics[(1, "grad_norm")] > 0


def test_the_prompts_extra_columns_ride_along(run_vpt, tiny_zoo, prompts):
    rows = sample(run_vpt, tiny_zoo, prompts, "plain")
    assert {(row["prompt_id"], row["prior"]) for row in rows} == {("ball", 0.3), ("ring", 0.6)}
    assert {row["sde_form"] for row in rows} == {"flow-grpo"}


def test_preset_teleboost_sets_the_release_defaults_and_given_options_win(run_vpt, tiny_zoo, prompts):
    rows = sample(run_vpt, tiny_zoo, prompts, "teleboost", "--preset", "teleboost")
    # the preset's sampling, but --steps 4 was given: it stays
    assert {(row["sde_form"], row["noise_level"], len(row["sigmas"])) for row in rows} == {("dancegrpo", 0.25, 5)}
    assert len({row["seed"] for row in rows if row["prompt_id"] == "ball"}) == 1  # one noise per group
    metrics, record = step(run_vpt, tiny_zoo, prompts, "teleboost", "teleboost-p1", "--preset", "teleboost",
                           "--bpgo", "--prior-column", "prior", "--reward", "brightness", "--clip-range", "1e-2")
    chosen = record["grpo"]
    assert (chosen["std"], chosen["crt"], chosen["ras"], chosen["ras_alpha"], chosen["clip_after_transforms"],
            chosen["timestep_fraction"], chosen["vipo_orient"], chosen["prior_column"]) == (
        "group-unbiased", "rerange", "bayes-group", 1.0, True, 0.6, "svd", "prior")
    assert chosen["clip_range"] == 1e-2  # given, so not the preset's 1e-4
    assert metrics[(None, "ratio_min")] == 1.0 and metrics[(None, "ratio_max")] == 1.0
    assert metrics[(None, "items")] == 6 * 2  # round(0.6 * 3) = 2 of the 3 recorded steps


def test_min_norm_joint_reward_logs_each_reward(run_vpt, tiny_zoo, prompts):
    sample(run_vpt, tiny_zoo, prompts, "joint")
    metrics, record = step(run_vpt, tiny_zoo, prompts, "joint", "joint-p1", "--reward", "brightness,flicker",
                           "--aggregation", "min-norm")
    assert record["grpo"]["aggregation"] == "min-norm"
    assert {(None, "advantage/brightness/abs_mean"), (None, "advantage/flicker/abs_mean")} <= set(metrics)


@pytest.mark.parametrize("extra, message", [
    (["--preset", "dancegrpo"], "--preset dancegrpo: choose none or teleboost, teleboost-guard, teleboost-tempflow"),
    (["--std", "bessel"], "--std bessel: choose one of group, group-unbiased, global"),
    (["--prior-column", "prior"], "--prior-column is BPGO's prior; add --bpgo"),
    (["--bpgo", "--prior-column", "nothing"], "has no column 'nothing' for --prior-column"),
    (["--bpgo", "--ras", "bayes-group", "--ras-weight-range", "0.5"], "--ras-weight-range 0.5: give MIN,MAX"),
    (["--bpgo", "--ras-weight-range", "a,b"], "--ras-weight-range a,b: expected comma-separated numbers"),
])
def test_bad_released_mode_options_get_one_line(run_vpt, tiny_zoo, prompts, extra, message):
    if not (prompts / "plain").is_dir():
        sample(run_vpt, tiny_zoo, prompts, "plain")
    result = run_vpt(["grpo-step", "--init", tiny_zoo, "--rollouts", prompts / "plain", "--scores",
                      prompts / "plain.scores.parquet", "-o", prompts / "bad", "--reward", "brightness", "-q", *extra])
    assert result.exit_code == 2 and message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (prompts / "bad").exists()


def flow_grpo_step_std(sigmas, k, noise):
    """s_k = a·sqrt(σ/(1−σ))·sqrt(σ − σ'), the σ = 1 denominator taken at the first step's σ_1 (float64)."""
    sigma, after = sigmas[k], sigmas[k + 1]
    denominator = 1 - sigmas[1] if sigma >= 1 else 1 - sigma
    return noise * (sigma / denominator) ** 0.5 * (sigma - after) ** 0.5


@pytest.mark.parametrize("extra", [["--timestep-weight", "tempflow"], ["--grad-reweight", "flow-grpo"]])
def test_step_weights_are_the_tempflow_and_guard_formulas(run_vpt, tiny_zoo, prompts, extra):
    rows = sample(run_vpt, tiny_zoo, prompts, "weights") if not (prompts / "weights").is_dir() else \
        read_table(prompts / "weights" / "rollouts.parquet", "rollouts").to_pylist()
    metrics, record = step(run_vpt, tiny_zoo, prompts, "weights", f"weights-{extra[1]}", "--reward", "brightness",
                           *extra)
    sigmas, steps, noise = rows[0]["sigmas"], rows[0]["recorded_steps"], rows[0]["noise_level"]
    if extra[1] == "tempflow":
        stds = [flow_grpo_step_std(sigmas, k, noise) for k in range(len(sigmas) - 1)]
        weights = [stds[k] / (sum(stds) / len(stds) + 1e-8) for k in steps]
    else:
        weights = [1 / (sigmas[k] - sigmas[k + 1] + 1e-6) for k in steps]
    # every block is one recorded step of 3 samples: the step's mean weight is the mean over the recorded steps
    assert metrics[(1, "step_weight_mean")] == pytest.approx(sum(weights) / len(weights), rel=1e-5)
    assert metrics[(None, "ratio_min")] == 1.0 and metrics[(None, "ratio_max")] == 1.0
    assert record["grpo"][extra[0].lstrip("-").replace("-", "_")] == extra[1]


def test_ratio_norm_and_the_kl_trust_region_start_at_ratio_one_and_then_act(run_vpt, tiny_zoo, prompts):
    rows = sample(run_vpt, tiny_zoo, prompts, "means", "--record-means")
    from vpt.rollouts.store import load_rollouts

    stored = load_rollouts(prompts / "means")
    assert stored.means(rows[0]).shape[0] == len(rows[0]["recorded_steps"])
    normed, _ = step(run_vpt, tiny_zoo, prompts, "means", "means-norm", "--reward", "brightness", "--ratio-norm",
                     "--steps-per-iteration", "3")
    # step 1 sees the sampling policy: no mean shift, so the normalised ratio is exactly 1
    assert normed[(1, "ratio_mean")] == 1.0 and normed[(1, "clip_fraction")] == 0.0
    assert normed[(3, "ratio_mean")] != 1.0
    region, record = step(run_vpt, tiny_zoo, prompts, "means", "means-kl", "--reward", "brightness",
                          "--trust-region", "kl", "--kl-max", "1e-12", "--steps-per-iteration", "3")
    assert region[(1, "trust_region/kl")] == 0.0 and region[(1, "trust_region/masked_fraction")] == 0.0
    # with a bound of ~0 every moved sample whose ratio went the advantage's way is masked
    assert region[(3, "trust_region/kl")] > 0 and region[(3, "trust_region/masked_fraction")] > 0
    assert record["grpo"]["trust_region"] == "kl"


def test_ratio_norm_needs_recorded_means(run_vpt, tiny_zoo, prompts):
    if not (prompts / "plain").is_dir():
        sample(run_vpt, tiny_zoo, prompts, "plain")
    result = run_vpt(["grpo-step", "--init", tiny_zoo, "--rollouts", prompts / "plain", "--scores",
                      prompts / "plain.scores.parquet", "-o", prompts / "bad", "--reward", "brightness", "-q",
                      "--ratio-norm"])
    assert result.exit_code == 2
    assert result.stderr.strip() == (f"vpt: error: {prompts / 'plain'}: row 1: no recorded step means, which "
                                     "--ratio-norm and --trust-region kl need; sample the rollouts with --record-means")


def test_cfg_free_rollouts_train_on_the_conditional_branch_alone(run_vpt, tiny_zoo, prompts):
    rows = sample(run_vpt, tiny_zoo, prompts, "cfg-free", "--guidance", "1")
    assert {(row["guidance"], row["negative_embeds_key"]) for row in rows} == {(1.0, None)}
    metrics, _ = step(run_vpt, tiny_zoo, prompts, "cfg-free", "cfg-free-p1", "--reward", "brightness")
    assert metrics[(None, "ratio_min")] == 1.0 and metrics[(None, "ratio_max")] == 1.0
    assert metrics[(1, "grad_norm")] > 0


@pytest.mark.parametrize("extra", [[], ["--preset", "teleboost"], ["--preset", "teleboost", "--vipo-orient", "border"]])
def test_vipo_with_vpts_or_the_released_map_starts_at_ratio_one(run_vpt, tiny_zoo, prompts, extra):
    if not (prompts / "plain").is_dir():
        sample(run_vpt, tiny_zoo, prompts, "plain")
    name = "vipo-" + "-".join(part.strip("-") for part in extra)
    metrics, record = step(run_vpt, tiny_zoo, prompts, "plain", name, "--reward", "brightness", "--vipo", *extra)
    assert metrics[(None, "ratio_min")] == 1.0 and metrics[(None, "ratio_max")] == 1.0
    chosen = record["grpo"]
    released = bool(extra)
    assert (chosen["vipo_pca"], chosen["vipo_blur_mode"], chosen["vipo_grid"]) == (
        ("per-frame", "reflect", "floor") if released else ("video", "replicate", "round"))
    assert chosen["vipo_orient"] == ("svd" if extra[-1:] == ["teleboost"] else "border")


def test_tempflow_branches_group_by_branch_point_and_train_with_ratio_one(run_vpt, tiny_zoo, prompts):
    rows = sample(run_vpt, tiny_zoo, prompts, "branched", "--branch", "2:2", "-g", "2")
    # 2 prompts x 2 initial noises x 2 branch points x 2 draws, each recording its branch point only
    assert len(rows) == 16
    by_group: dict[str, list[dict]] = {}
    for row in rows:
        by_group.setdefault(row["group_id"], []).append(row)
    assert len(by_group) == 8 and all(len(members) == 2 for members in by_group.values())
    for members in by_group.values():
        point = members[0]["branch_point"]
        assert {row["branch_point"] for row in members} == {point} and members[0]["recorded_steps"] == [point]
        assert len({row["branch_root"] for row in members}) == 1 and len({row["seed"] for row in members}) == 1
        assert members[0]["step_seed"] != members[1]["step_seed"]
    assert {row["branch_point"] for row in rows} == {0, 1}
    from vpt.rollouts.store import load_rollouts

    stored = load_rollouts(prompts / "branched")
    # the draws of one root share the deterministic trajectory up to their branch point
    same_root = [row for row in rows if row["prompt_id"] == "ball" and row["branch_root"] == 0]
    starts = {row["branch_point"]: stored.states(row)[0] for row in same_root}
    for row in same_root:
        assert stored.states(row)[0].equal(starts[row["branch_point"]])
    metrics, _ = step(run_vpt, tiny_zoo, prompts, "branched", "branched-p1", "--reward", "brightness",
                      "--timestep-weight", "tempflow")
    assert metrics[(None, "ratio_min")] == 1.0 and metrics[(None, "ratio_max")] == 1.0
    assert metrics[(None, "items")] == 16


@pytest.mark.parametrize("preset", ["teleboost-guard", "teleboost-tempflow"])
def test_the_release_recipe_presets(run_vpt, tiny_zoo, prompts, preset):
    rows = sample(run_vpt, tiny_zoo, prompts, preset, "--preset", preset, "-g", "2")
    metrics, record = step(run_vpt, tiny_zoo, prompts, preset, f"{preset}-p1", "--preset", preset, "--reward",
                           "brightness")
    chosen = record["grpo"]
    assert (chosen["clip_range"], chosen["timestep_fraction"]) == (1e-4, 0.6)
    if preset == "teleboost-guard":
        assert (chosen["std"], chosen["advantage_eps"]) == ("group-unbiased", 1e-4)
        assert {row["sde_form"] for row in rows} == {"dancegrpo"} and all(row["means_key"] for row in rows)
        assert (chosen["ratio_norm"], chosen["grad_reweight"], chosen["timestep_weight"]) == (True, "dancegrpo",
                                                                                               "none")
    else:
        # 2 prompts x 2 noises x branch points 0 and 1 x 2 draws, sampled with the flow-grpo form
        assert len(rows) == 16 and {row["branch_point"] for row in rows} == {0, 1}
        assert {row["sde_form"] for row in rows} == {"flow-grpo"} and not any(row["means_key"] for row in rows)
        assert (chosen["ratio_norm"], chosen["grad_reweight"], chosen["timestep_weight"]) == (False, "none",
                                                                                               "tempflow")
        # the release's branch z-score: population std, eps 1e-8, so each pair of draws gets -1 and +1
        assert (chosen["std"], chosen["advantage_eps"]) == ("group", 1e-8)
        assert metrics[(None, "advantage/abs_mean")] == pytest.approx(1.0, rel=1e-4)  # Bessel: 0.71
    assert metrics[(None, "ratio_min")] == 1.0 and metrics[(None, "ratio_max")] == 1.0
