"""The options every training command shares (``sft``, ``dpo``, ``grpo-step``, ``train-reward``), the one
TrainConfig built from them, and the summary they print."""

from __future__ import annotations

from typing import Any, Mapping, Optional

import typer

from vpt.commands import _outputs as outputs
from vpt.commands import _ui
from vpt.commands._options import add_options
from vpt.commands._lists import comma_list

_SAME = object()
# option -> (default, help) of sft and dpo; grpo-step and train-reward take the ones they share, some with their own
# default or help
OPTIONS: dict[str, tuple[Any, str]] = {
    "--model": (None, "Generator: a Wan pipeline (or zoo) directory (default with --policy: the one the policy "
                      "records)."),
    "--policy": (None, "Policy checkpoint to continue (written by sft, dpo or grpo-step); default: a new LoRA on the "
                       "generator."),
    "--init-lora": (None, "Start the new policy as this LoRA (no policy.json needed): a peft adapter directory or a "
                          "diffusers Wan LoRA (directory or .safetensors file); needs --model."),
    "--out": (..., "Policy checkpoint directory to write (must not exist); checkpoints to resume from go to OUT.run/ "
                   "until the run ends."),
    "--lr": (1e-4, "Learning rate."),
    "--batch-size": (1, "Examples per micro-batch per process."),
    "--grad-accum": (1, "Micro-batches per optimizer step."),
    "--max-steps": (None, "Optimizer steps (with --epochs: whichever ends first)."),
    "--epochs": (None, "Epochs over the examples (default 1 without --max-steps)."),
    "--warmup-steps": (0, "Linear warmup steps."),
    "--lr-schedule": ("constant", "constant, cosine or linear."),
    "--weight-decay": (0.0, "AdamW weight decay."),
    "--max-grad-norm": (1.0, "Gradient clipping (0: off)."),
    "--mixed-precision": ("no", "no or bf16."),
    "--dtype": ("fp32", "Weights dtype of the frozen models (generator, text encoder, VAE; a reward model's frozen "
                        "part): bf16 or fp32; what trains, its optimizer state and the losses stay float32."),
    "--gradient-checkpointing": (False, "Recompute activations in the backward pass (less memory, more compute)."),
    "--context-parallel": (1, "Processes that share each video, each holding 1/N of its tokens (Ulysses; CUDA)."),
    "--save-every": (0, "Checkpoint into OUT.run/ every N steps (0: only at the end)."),
    "--log-every": (10, "Metrics every N steps."),
    "--lora-rank": (8, "LoRA rank (new policy)."),
    "--lora-alpha": (16.0, "LoRA alpha (new policy)."),
    "--lora-targets": (None, "Comma-separated module names (new policy; default: attention, FFN and output "
                             "projection)."),
    "--timesteps": ("uniform", "Noise-level distribution: uniform or logit-normal."),
    "--logit-mean": (0.0, "Mean of logit-normal noise levels."),
    "--logit-std": (1.0, "Std of logit-normal noise levels."),
    "--shift": (1.0, "Flow shift applied to sampled noise levels."),
    "--frames": (None, "Resample every clip to N frames (1 + 4k) before encoding."),
    "--height": (None, "Resize every clip to this height (multiple of 16)."),
    "--width": (None, "Resize every clip to this width (multiple of 16)."),
    "--cache": (None, "Latent and prompt-embedding cache (default: $VPT_CACHE_DIR/encoded or ~/.cache/vpt/encoded)."),
    "--resume": (None, "Continue an interrupted run (OUT.run or one of its checkpoint-N) or train a finished "
                       "checkpoint of this stage further, as if it had not stopped."),
    "--seed": (0, "Seed of the data order, noise, noise levels and LoRA initialisation."),
    "--report-to": ("none", "Experiment tracker that also gets the metrics (and sample videos where the stage "
                            "has them): none, tensorboard or wandb (offline unless WANDB_MODE says otherwise); its "
                            "files go to OUT/logs/."),
    "--quiet": (False, "No progress or summary."),
}
SHORT = {"--model": "-m", "--out": "-o", "--quiet": "-q"}
CALLBACKS = {"--out": outputs.new_directory, "--report-to": outputs.tracker}


def option(name: str, default: Any = _SAME, help: str | None = None):
    """The declaration of the shared training option ``name``; a command whose default or meaning differs gives its
    own, so its help stays true."""
    shared_default, shared_help = OPTIONS[name]
    names = [name, SHORT[name]] if name in SHORT else [name]
    return typer.Option(shared_default if default is _SAME else default, *names, callback=CALLBACKS.get(name),
                        help=shared_help if help is None else help)


FLOW_STAGE = tuple(OPTIONS)  # sft and dpo take every shared option
PARAMETERS = {"--lr": "learning_rate"}  # the rest: the flag's words joined by "_"
INTEGERS = {"--max-steps", "--epochs", "--frames", "--height", "--width"}


def flow_stage_options(command):
    """Give ``command`` every option of :data:`FLOW_STAGE` (sqlite-utils' option groups): typer reads them from the
    signature built here, and the command takes them as ``**options``."""
    options = []
    for flag in FLOW_STAGE:
        default = OPTIONS[flag][0]
        kind = int if flag in INTEGERS else str if default in (None, ...) else type(default)
        options.append((PARAMETERS.get(flag, flag.lstrip("-").replace("-", "_")), option(flag),
                        Optional[kind] if default is None else kind))
    return add_options(command, options)


# the TrainConfig field each shared option sets
CONFIG_FIELDS = {"learning_rate": "learning_rate", "batch_size": "batch_size",
                 "grad_accum": "gradient_accumulation_steps", "max_steps": "max_steps", "epochs": "epochs",
                 "warmup_steps": "warmup_steps", "lr_schedule": "lr_schedule", "weight_decay": "weight_decay",
                 "max_grad_norm": "max_grad_norm", "mixed_precision": "mixed_precision", "save_every": "save_every",
                 "log_every": "log_every", "eval_every": "eval_every", "seed": "seed",
                 "context_parallel": "context_parallel", "report_to": "report_to"}


def train_config(values: Mapping[str, Any], default_epochs: int = 1, **fields):
    """The harness's TrainConfig from the values of the training options a command declares (its ``locals()``):
    each one it has sets its field, ``--epochs`` is ``default_epochs`` when neither it nor ``--max-steps`` is
    given, and ``fields`` set what the command decides itself (output directory, a resolved learning rate)."""
    from vpt.train import TrainConfig

    given = {field: values[name] for name, field in CONFIG_FIELDS.items() if name in values}
    if "epochs" in given and given["epochs"] is None and given.get("max_steps") is None:
        given["epochs"] = default_epochs
    return TrainConfig(**{**given, **fields})


def policy_lora_targets(text: str | None) -> tuple[str, ...]:
    """The transformer modules a new LoRA policy adapts: ``--lora-targets``, or attention, FFN and output
    projection."""
    from vpt.train.policy import DEFAULT_LORA_TARGETS

    return DEFAULT_LORA_TARGETS if text is None else comma_list(text, "--lora-targets", "to_q,to_k,to_v")


def resample_size(frames: int | None, height: int | None, width: int | None) -> tuple[int, int, int] | None:
    """The (frames, height, width) every clip is resampled to, or None when none is given; all three or none."""
    from vpt.errors import VptError

    given = [value for value in (frames, height, width) if value is not None]
    if given and len(given) != 3:
        raise VptError("give --frames, --height and --width together (the size every clip is resampled to)")
    return tuple(given) if given else None


def stage_arguments(context: typer.Context, values: Mapping[str, Any]) -> dict[str, Any]:
    """The keyword arguments every flow-matching stage's library entry (``run_dpo``, ``run_sft``) takes, from the
    values of :data:`FLOW_STAGE`: generator, policy, output, harness configuration, weights dtype, gradient
    checkpointing, noise, LoRA setup, clip size, cache, resume and quiet."""
    from vpt.models.dtypes import weights_dtype
    from vpt.stages.examples import NoiseOptions

    noise = NoiseOptions(timesteps=values["timesteps"], logit_mean=values["logit_mean"],
                         logit_std=values["logit_std"], shift=values["shift"], seed=values["seed"])
    return {"model": values["model"], "policy": values["policy"], "init_lora": values["init_lora"],
            "command": _ui.command_line(context), "out": values["out"], "config": train_config(values, keep_last=2),
            "dtype": weights_dtype(values["dtype"]), "gradient_checkpointing": values["gradient_checkpointing"],
            "noise": noise, "lora_rank": values["lora_rank"], "lora_alpha": values["lora_alpha"],
            "lora_targets": policy_lora_targets(values["lora_targets"]),
            "size": resample_size(values["frames"], values["height"], values["width"]), "cache": values["cache"],
            "resume": values["resume"], "quiet": values["quiet"]}
