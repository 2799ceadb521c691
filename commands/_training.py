"""The options every flow-matching training stage shares (``vpt dpo``, ``vpt sft``): declared once, used by both."""

from __future__ import annotations

from typing import Any, Mapping

import typer

from vpt.commands import _outputs as outputs

MODEL = typer.Option(None, "--model", "-m", help="Generator: a Wan pipeline (or zoo) directory (default with "
                                                 "--policy: the one the policy records).")
POLICY = typer.Option(None, "--policy", help="Policy checkpoint to continue (written by sft, dpo or grpo-step); "
                                             "default: a new LoRA on the generator.")
INIT_LORA = typer.Option(None, "--init-lora", help="Start the new policy as this LoRA (no policy.json needed): a "
                                                   "peft adapter directory or a diffusers Wan LoRA (directory or "
                                                   ".safetensors file); needs --model.")
OUT = typer.Option(..., "--out", "-o", callback=outputs.new_directory,
                   help="Policy checkpoint directory to write (must not exist); checkpoints to resume from go to "
                        "OUT.run/ until the run ends.")
LR = typer.Option(1e-4, "--lr", help="Learning rate.")
BATCH_SIZE = typer.Option(1, "--batch-size", help="Examples per micro-batch per process.")
GRAD_ACCUM = typer.Option(1, "--grad-accum", help="Micro-batches per optimizer step.")
MAX_STEPS = typer.Option(None, "--max-steps", help="Optimizer steps (with --epochs: whichever ends first).")
EPOCHS = typer.Option(None, "--epochs", help="Epochs over the examples (default 1 without --max-steps).")
WARMUP = typer.Option(0, "--warmup-steps", help="Linear warmup steps.")
SCHEDULE = typer.Option("constant", "--lr-schedule", help="constant, cosine or linear.")
WEIGHT_DECAY = typer.Option(0.0, "--weight-decay", help="AdamW weight decay.")
MAX_GRAD_NORM = typer.Option(1.0, "--max-grad-norm", help="Gradient clipping (0: off).")
MIXED_PRECISION = typer.Option("no", "--mixed-precision", help="no or bf16.")
SAVE_EVERY = typer.Option(0, "--save-every", help="Checkpoint into OUT.run/ every N steps (0: only at the end).")
LOG_EVERY = typer.Option(10, "--log-every", help="Metrics every N steps.")
LORA_RANK = typer.Option(8, "--lora-rank", help="LoRA rank (new policy).")
LORA_ALPHA = typer.Option(16.0, "--lora-alpha", help="LoRA alpha (new policy).")
LORA_TARGETS = typer.Option(None, "--lora-targets", help="Comma-separated module names (new policy; default: "
                                                         "attention, FFN and output projection).")
TIMESTEPS = typer.Option("uniform", "--timesteps", help="Noise-level distribution: uniform or logit-normal.")
LOGIT_MEAN = typer.Option(0.0, "--logit-mean", help="Mean of logit-normal noise levels.")
LOGIT_STD = typer.Option(1.0, "--logit-std", help="Std of logit-normal noise levels.")
SHIFT = typer.Option(1.0, "--shift", help="Flow shift applied to sampled noise levels.")
FRAMES = typer.Option(None, "--frames", help="Resample every clip to N frames (1 + 4k) before encoding.")
HEIGHT = typer.Option(None, "--height", help="Resize every clip to this height (multiple of 16).")
WIDTH = typer.Option(None, "--width", help="Resize every clip to this width (multiple of 16).")
CACHE = typer.Option(None, "--cache", help="Latent and prompt-embedding cache (default: $VPT_CACHE_DIR/encoded "
                                           "or ~/.cache/vpt/encoded).")
RESUME = typer.Option(None, "--resume", help="Continue an interrupted run (OUT.run or one of its checkpoints) or "
                                             "train a finished checkpoint of this stage further.")
SEED = typer.Option(0, "--seed", help="Seed of the data order, noise, noise levels and LoRA initialisation.")
QUIET = typer.Option(False, "--quiet", "-q", help="No progress or summary.")


def resample_size(frames: int | None, height: int | None, width: int | None) -> tuple[int, int, int] | None:
    """The (frames, height, width) every clip is resampled to, or None when none is given; all three or none."""
    from vpt.errors import VptError

    given = [value for value in (frames, height, width) if value is not None]
    if given and len(given) != 3:
        raise VptError("give --frames, --height and --width together (the size every clip is resampled to)")
    return tuple(given) if given else None


def stage_arguments(values: Mapping[str, Any]) -> dict[str, Any]:
    """The keyword arguments every stage's library entry (``run_dpo``, ``run_sft``) takes, from the values of the
    shared options above (a command passes its ``locals()``): generator, policy, output, harness configuration,
    noise, LoRA setup, clip size, cache, resume and quiet."""
    from vpt.train import TrainConfig
    from vpt.stages.examples import NoiseOptions
    from vpt.train.policy import DEFAULT_LORA_TARGETS

    targets = values["lora_targets"]
    config = TrainConfig(
        learning_rate=values["learning_rate"], batch_size=values["batch_size"],
        gradient_accumulation_steps=values["grad_accum"], max_steps=values["max_steps"],
        epochs=values["epochs"] if values["epochs"] is not None or values["max_steps"] else 1,
        warmup_steps=values["warmup_steps"], lr_schedule=values["lr_schedule"], weight_decay=values["weight_decay"],
        max_grad_norm=values["max_grad_norm"], mixed_precision=values["mixed_precision"],
        save_every=values["save_every"], log_every=values["log_every"], keep_last=2, seed=values["seed"])
    noise = NoiseOptions(timesteps=values["timesteps"], logit_mean=values["logit_mean"],
                         logit_std=values["logit_std"], shift=values["shift"], seed=values["seed"])
    return {"model": values["model"], "policy": values["policy"], "init_lora": values["init_lora"],
            "command": command_line(values["context"]), "out": values["out"], "config": config,
            "noise": noise, "lora_rank": values["lora_rank"], "lora_alpha": values["lora_alpha"],
            "lora_targets": DEFAULT_LORA_TARGETS if targets is None else
            tuple(t.strip() for t in targets.split(",") if t.strip()),
            "size": resample_size(values["frames"], values["height"], values["width"]), "cache": values["cache"], "resume": values["resume"],
            "quiet": values["quiet"]}


def command_line(context: typer.Context) -> list[str]:
    """The command as given (``vpt STAGE --option value ...``), rebuilt from the parsed options that did not come
    from their defaults, so it reads the same in-process, from a shell or under ``accelerate launch``."""
    words = context.command_path.split()
    for param in context.command.params:
        source = context.get_parameter_source(param.name)
        if source is None or source.name in ("DEFAULT", "DEFAULT_MAP") or not param.opts:
            continue
        value = context.params.get(param.name)
        if value is None:
            continue
        option = next((opt for opt in param.opts if opt.startswith("--")), param.opts[0])
        if getattr(param, "is_flag", False):
            words += [option] if value else list(getattr(param, "secondary_opts", [])[:1])
        else:
            words += [part for item in (value if isinstance(value, (list, tuple)) else [value])
                      for part in (option, str(item))]
    return words


def report(stage: str, result, quiet: bool) -> None:
    """The finished stage's summary table and one line on stderr (main process only)."""
    from vpt.commands import _ui
    from vpt.distributed import current_processes

    if quiet or not current_processes().is_main:
        return
    _ui.print_table(f"{stage} (step {result.step})", ["metric", "value"],
                    [[name, f"{value:.6g}"] for name, value in result.metrics.items()])
    typer.echo(f"{stage}: {result.step} steps -> {result.checkpoint}", err=True)
