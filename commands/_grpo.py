"""The algorithm options of ``grpo-step``, declared once as an option group, and ``--preset``, which sets every one
of them the command line leaves alone to a published recipe's values."""

from __future__ import annotations

from typing import Any, Mapping, Optional

import typer

from vpt.commands import _options
from vpt.commands._lists import comma_floats

# option -> (default, help)
ALGORITHM: dict[str, tuple[Any, str]] = {
    "--aggregation": ("sum-then-normalise", "Several reward columns: sum-then-normalise, normalise-then-sum or "
                                            "min-norm (per sample, the min-norm point of the per-reward advantages: "
                                            "0 where they disagree in sign)."),
    "--std": ("group", "Advantage std: group (population), group-unbiased (Bessel, as TeleBoost) or global."),
    "--advantage-eps": (1e-4, "eps of A = (r - mean) / (std + eps)."),
    "--advantage-clip": (5.0, "Clip advantages to +-this."),
    "--clip-after-transforms": (False, "Clip after BPGO's scale and ViPO's map (as TeleBoost), not right after the "
                                       "z-score."),
    "--clip-range": (1e-3, "PPO clip range c of the ratio."),
    "--kl-beta": (0.0, "Weight of the KL to the reference (LoRA disabled)."),
    "--timestep-fraction": (1.0, "Train this share of each rollout's recorded steps (seeded)."),
    "--timestep-weight": ("none", "none, or tempflow: weigh each step's loss by its noise std over the schedule's "
                                  "mean (TempFlow-GRPO)."),
    "--grad-reweight": ("none", "GRPO-Guard: multiply each step's loss by 1/dt (flow-grpo) or (1 + a^2 (1 - t) / "
                                "(2t)) / dt (dancegrpo); pair it with a small --clip-range (README)."),
    "--ratio-norm": (False, "GRPO-Guard: take the mean shift's bias out of each step's log-ratio before clipping "
                            "(needs rollouts sampled with --record-means)."),
    "--trust-region": ("clip", "clip (PPO's ratio clip), or kl: Flow-DPPO, drop a sample's gradient where the exact "
                               "KL of its step exceeds --kl-max and the update moves away (needs --record-means)."),
    "--kl-max": (1e-3, "Flow-DPPO's KL bound per step (--trust-region kl)."),
    "--bpgo": (False, "BPGO: scale each group by its reliability weight (RAS)."),
    "--prior": (None, "BPGO prior: scores of the reference policy's samples (default: a running mean per prompt)."),
    "--prior-column": (None, "BPGO prior: this column of the rollouts (carried from the prompts table), one value "
                             "per prompt in the combined reward's units."),
    "--ras": ("sigmoid", "RAS form: sigmoid, bayesian (the batch's reward std) or bayes-group (each group's Bessel "
                         "variance, as TeleBoost)."),
    "--ras-alpha": (0.5, "RAS alpha: sigmoid weights in [1-a, 1+a]; bayes-group scale 1 + a(w - 1)."),
    "--ras-prior-std": (1.0, "Std of the Normal prior on a group's mean reward (bayesian, bayes-group)."),
    "--ras-weight-range": ("0.5,1.5", "bayes-group: MIN,MAX of the weight w."),
    "--crt": ("off", "BPGO's contrastive reward: off, replace or auxiliary (paper form), or rerange (TeleBoost's "
                     "form, which replaces the rewards; not monotone in the reward, see README)."),
    "--crt-weight": (0.5, "Weight of the auxiliary CRT term."),
    "--crt-a": (50.0, "rerange: slope a of [a(R - p) + 1{R > p}]."),
    "--crt-temperature": (5.0, "rerange: temperature of the gate sigmoid(R / t)."),
    "--crt-clamp": (30.0, "rerange: clamp of the gate's exponent."),
    "--vipo": (False, "ViPO: dense advantages weighted by DINOv2 maps."),
    "--vipo-model": (None, "DINOv2 directory (default: the zoo's, when the generator is a zoo's)."),
    "--vipo-blur": (1.0, "Gaussian blur sigma of the ViPO map (patches)."),
    "--vipo-pca": ("video", "ViPO map: one PCA over the video, or per-frame (as TeleBoost)."),
    "--vipo-orient": ("border", "ViPO map sign: border (the border scores low) or svd (whatever the SVD returns, as "
                                "TeleBoost: arbitrary)."),
    "--vipo-blur-mode": ("replicate", "ViPO blur borders: replicate (radius 3 sigma) or reflect (scipy's, radius "
                                      "4 sigma, as TeleBoost)."),
    "--vipo-normalise": ("global", "ViPO min-max: global, or per-frame+global (as TeleBoost)."),
    "--vipo-time": ("ends", "ViPO time resampling: ends (first and last frames aligned) or half-pixel (as "
                            "TeleBoost)."),
    "--vipo-grid": ("round", "DINOv2 patch grid: round (frames resized to it) or floor (cropped, as TeleBoost)."),
    "--self-paced": (False, "Self-paced curriculum over the reward columns."),
    "--curriculum": ("softmax", "Self-paced form: softmax (published) or gated (3 columns, EMA state)."),
    "--curriculum-thresholds": (None, "Competence threshold per column (default 0.75 each)."),
    "--preset": ("none", "none, teleboost, teleboost-guard or teleboost-tempflow: every option above (and --lr, "
                         "--weight-decay, --max-grad-norm) not given takes the TeleBoost release's value for its "
                         "base, GRPO-Guard or TempFlow recipe (README: GRPO presets)."),
}

# The TeleBoost release (Tele-AI/TeleBoost at d4279ac): recipes/wan_grpo_fsdp/run.sh over
# teleboost/config/teleboost_trainer.yaml; CRT's rerange form applies where BPGO is on
PRESETS: dict[str, dict[str, Any]] = {
    "teleboost": {
        "std": "group-unbiased", "advantage_eps": 1e-4, "advantage_clip": 5.0, "clip_after_transforms": True,
        "clip_range": 1e-4, "kl_beta": 0.0, "timestep_fraction": 0.6, "ras": "bayes-group", "ras_alpha": 1.0,
        "ras_prior_std": 1.0, "ras_weight_range": "0.5,1.5", "crt_a": 50.0, "crt_temperature": 5.0,
        "crt_clamp": 30.0, "vipo_blur": 1.0, "vipo_pca": "per-frame", "vipo_orient": "svd",
        "vipo_blur_mode": "reflect", "vipo_normalise": "per-frame+global", "vipo_time": "half-pixel",
        "vipo_grid": "floor", "learning_rate": 2e-6, "weight_decay": 0.1, "max_grad_norm": 1.0,
    },
}
# run.sh's ENABLE_GRPOGUARD turns ratio norm and the reweight on; the yaml names the dancegrpo reweight
PRESETS["teleboost-guard"] = {**PRESETS["teleboost"], "ratio_norm": True, "grad_reweight": "dancegrpo"}
# recipes/wan_tempflow_fsdp/run.sh: the noise-normalised step weights (its branching is sample-rollouts'), and a
# branch point's draws z-scored with the population std and eps 1e-8 (tempflow/trajectory.py)
PRESETS["teleboost-tempflow"] = {**PRESETS["teleboost"], "timestep_weight": "tempflow", "std": "group",
                                 "advantage_eps": 1e-8}
_WITH_BPGO = {name: {"crt": "rerange"} for name in PRESETS}
_NOT_OPTIONS = ("prior", "vipo_model", "preset")  # inputs of the step, not fields of GrpoOptions


def _name(flag: str) -> str:
    return flag.lstrip("-").replace("-", "_")


def algorithm_options(command):
    """Give ``command`` every option of :data:`ALGORITHM` (an option group, as the training options are); the
    command takes them as ``**options`` and passes them to :func:`grpo_options`."""
    return _options.add_options(command, [(_name(flag), typer.Option(default, flag, help=help_text),
                                  Optional[str] if default is None else type(default))
                                 for flag, (default, help_text) in ALGORITHM.items()])


def with_preset(context: typer.Context, values: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` (a command's options) with ``--preset``'s values in place of the defaults the user left."""
    presets = {name: {**chosen, **(_WITH_BPGO.get(name, {}) if values["bpgo"] else {})}
               for name, chosen in PRESETS.items()}
    return _options.with_preset(context, values, values["preset"], presets)


def grpo_options(values: Mapping[str, Any], reward: str):
    """The step's :class:`~vpt.stages.grpo.GrpoOptions` from the option group's values (after :func:`with_preset`)."""
    from vpt.errors import VptError
    from vpt.rewards.expression import parse_reward
    from vpt.stages.grpo import GrpoOptions

    if values["prior"] is not None and not values["bpgo"]:
        raise VptError("--prior is BPGO's prior; add --bpgo")
    if values["curriculum"] not in ("softmax", "gated"):
        raise VptError(f"--curriculum {values['curriculum']}: choose softmax or gated")
    fields = {_name(flag): values[_name(flag)] for flag in ALGORITHM if _name(flag) not in _NOT_OPTIONS}
    thresholds = fields.pop("curriculum_thresholds")
    fields["curriculum_thresholds"] = () if thresholds is None else comma_floats(thresholds, "--curriculum-thresholds",
                                                                                  "0.75,0.75,0.75")
    curriculum = fields.pop("curriculum")
    fields["self_paced"] = curriculum if fields["self_paced"] else "off"
    fields["prior_std"] = fields.pop("ras_prior_std")
    range_values = comma_floats(fields["ras_weight_range"], "--ras-weight-range", "0.5,1.5")
    if len(range_values) != 2:
        raise VptError(f"--ras-weight-range {fields['ras_weight_range']}: give MIN,MAX, e.g. 0.5,1.5")
    fields["ras_weight_range"] = tuple(range_values)
    return GrpoOptions(reward=parse_reward(reward), **fields, seed=values["seed"])
