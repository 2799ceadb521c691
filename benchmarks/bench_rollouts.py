"""`sample-rollouts` cost: wall time against plain `WanPipeline` at the same steps and size, and stored bytes per
rollout against the theoretical bytes of what it records.

    .venv/bin/python benchmarks/bench_rollouts.py [--model ZOO_OR_WAN_DIR] [--frames 9] [--height 32] [--width 32]
        [--steps 10] [--group-size 4] [--prompts 2] [--device cpu]

Both sides sample the same prompts with the same steps, size and guidance and decode every video; the rollouts side
also records states and log-probs and writes mp4s, shards and the table. Theoretical bytes per rollout: the recorded
latent states (float32) plus the log-probs (float64); the stored figure counts the latent shards, the table and the
checksum file (mp4s and the per-prompt text embeddings are reported on their own rows). Targets: <= 1.15x time,
<= 1.1x bytes.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="Wan pipeline or zoo directory (default: the tiny zoo)")
    parser.add_argument("--frames", type=int, default=9)
    parser.add_argument("--height", type=int, default=32)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--group-size", type=int, default=4)
    parser.add_argument("--prompts", type=int, default=2)
    parser.add_argument("--guidance", type=float, default=5.0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import torch

    from vpt.algo.flow_sde import state_indices_of
    from vpt.distributed import Processes
    from vpt.models.loading import load_wan_pipeline
    from vpt.models.zoo import cached_tiny_zoo
    from vpt.rollouts.run import PromptItem, sample_rollouts
    from vpt.rollouts.sampling import RolloutOptions

    torch.set_num_threads(1)
    model = args.model or str(cached_tiny_zoo(0))
    pipe = load_wan_pipeline(model, device=args.device)
    pipe.set_progress_bar_config(disable=True)
    prompts = [PromptItem(f"p{i}", f"prompt number {i}: a small red ball rolls") for i in range(args.prompts)]
    options = RolloutOptions(group_size=args.group_size, steps=args.steps, noise_level=0.7, guidance=args.guidance,
                             frames=args.frames, height=args.height, width=args.width)

    def pipeline() -> None:
        with torch.no_grad():
            for item in prompts:
                pipe(prompt=item.prompt, negative_prompt="", num_inference_steps=args.steps,
                     guidance_scale=args.guidance, num_frames=args.frames, height=args.height, width=args.width,
                     num_videos_per_prompt=args.group_size, generator=torch.Generator().manual_seed(0),
                     output_type="np")

    with tempfile.TemporaryDirectory() as folder:
        runs = iter(range(1_000_000))

        def rollouts() -> None:
            sample_rollouts(pipe, prompts, options, Path(folder) / f"run{next(runs)}", Processes(), "base", model)

        pipeline()  # warm-up of both paths
        rollouts()
        timings = {"WanPipeline": [], "sample-rollouts": []}
        for _ in range(args.repeats):  # interleaved, so drifting machine load hits both alike
            for name, function in (("WanPipeline", pipeline), ("sample-rollouts", rollouts)):
                start = time.perf_counter()
                function()
                timings[name].append(time.perf_counter() - start)
        best = {name: min(values) for name, values in timings.items()}

        run = Path(folder) / "run0"
        count = args.prompts * args.group_size
        size = lambda pattern: sum(p.stat().st_size for p in run.glob(pattern))  # noqa: E731
        stored = size("latents/*") + size("rollouts.parquet") + size("shards.json")
        states = len(state_indices_of(options.sde_steps()))
        channels = pipe.transformer.config.in_channels
        latent = channels * ((args.frames - 1) // pipe.vae_scale_factor_temporal + 1) * \
            (args.height // pipe.vae_scale_factor_spatial) * (args.width // pipe.vae_scale_factor_spatial)
        theoretical = states * latent * 4 + len(options.sde_steps()) * 8
        videos, embeds = size("videos/*"), size("embeds/*")

    print(f"{'':<34}{'value':>14}   target")
    print(f"{'WanPipeline s (best)':<34}{best['WanPipeline']:>14.3f}")
    print(f"{'sample-rollouts s (best)':<34}{best['sample-rollouts']:>14.3f}")
    print(f"{'time ratio':<34}{best['sample-rollouts'] / best['WanPipeline']:>14.3f}   <= 1.15")
    print(f"{'recorded states per rollout':<34}{states:>14d}")
    print(f"{'theoretical bytes per rollout':<34}{theoretical:>14,.0f}")
    print(f"{'stored bytes per rollout':<34}{stored / count:>14,.0f}")
    print(f"{'bytes ratio':<34}{stored / count / theoretical:>14.3f}   <= 1.1")
    print(f"{'mp4 bytes per rollout':<34}{videos / count:>14,.0f}")
    print(f"{'embedding bytes per prompt':<34}{embeds / args.prompts:>14,.0f}")


if __name__ == "__main__":
    main()
