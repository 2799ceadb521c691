"""The sampler options ``sample-rollouts`` and ``guide`` share: declared once, used by both."""

from __future__ import annotations

import typer

MODEL = typer.Option(..., "--model", "-m", help="Wan pipeline directory (diffusers layout) or a zoo directory.")
PROMPTS = typer.Option(..., "--prompts", help="prompts table (or a .txt file, one prompt per line).")
POLICY = typer.Option(None, "--policy", help="LoRA to sample with: a policy checkpoint, or a peft or diffusers "
                                             "Wan LoRA.")
STEPS = typer.Option(10, "--steps", help="Sampler steps.")
GUIDANCE = typer.Option(5.0, "--guidance", help="Classifier-free guidance scale (<= 1: off).")
NEGATIVE_PROMPT = typer.Option("", "--negative-prompt", help="Negative prompt of the classifier-free guidance.")
SHIFT = typer.Option(None, "--shift", help="Timestep shift (default: the pipeline scheduler's).")
FRAMES = typer.Option(81, "--frames", help="Frames per video (1 + a multiple of 4).")
HEIGHT = typer.Option(480, "--height", help="Video height in pixels.")
WIDTH = typer.Option(832, "--width", help="Video width in pixels.")
FPS = typer.Option(16.0, "--fps", help="Frame rate of the written mp4s.")
SEED = typer.Option(0, "--seed", help="Seed of every noise draw (with the prompt id and sample index).")
DEVICE = typer.Option("auto", "--device", help="auto (this process's GPU when there is one), cpu, cuda.")
DTYPE = typer.Option("fp32", "--dtype", help="Weights dtype of the generator and reward model: bf16 or fp32.")
CONTEXT_PARALLEL = typer.Option(1, "--context-parallel", help="Processes that share each video, each holding 1/N of "
                                                             "its tokens (Ulysses context parallelism; CUDA).")
QUIET = typer.Option(False, "--quiet", "-q", help="No progress or summary.")
