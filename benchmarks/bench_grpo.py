"""grpo-step's training step against a plain SFT (flow-matching) step on the same LoRA model: time per step and
peak memory. The reference model of GRPO's KL is the same transformer with the adapter disabled, so the peak
should stay close to SFT's (target: <= 1.25x).

    python benchmarks/bench_grpo.py                      # CPU, a small Wan transformer
    python benchmarks/bench_grpo.py --device cuda --layers 30 --heads 12 --frames 81 --height 480 --width 832

Each mode runs in its own process, so CPU peaks (max RSS above the RSS after setup) do not mix; on CUDA the peak is
``torch.cuda.max_memory_allocated`` above the setup's.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time


def _rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        pages = int(handle.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE")


def run_mode(args) -> dict:
    import torch
    from diffusers import WanTransformer3DModel

    from vpt.stages.grpo import GrpoLoss, GrpoOptions, RolloutBatch
    from vpt.train import apply_lora
    from vpt.train.policy import DEFAULT_LORA_TARGETS

    torch.manual_seed(0)
    device = torch.device(args.device)
    transformer = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=args.heads, attention_head_dim=args.head_dim, in_channels=16,
        out_channels=16, text_dim=args.text_dim, freq_dim=256, ffn_dim=args.heads * args.head_dim * 4,
        num_layers=args.layers, cross_attn_norm=True, qk_norm="rms_norm_across_heads").to(device)
    policy = apply_lora(transformer, list(DEFAULT_LORA_TARGETS), args.rank, 2.0 * args.rank)
    optimizer = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=1e-4)
    latent = (args.batch, 16, (args.frames - 1) // 4 + 1, args.height // 8, args.width // 8)
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(latent, generator=generator).to(device)
    embeds = torch.randn(args.batch, args.text_length, args.text_dim, generator=generator).to(device)
    grpo = GrpoLoss(GrpoOptions(reward={"r": 1.0}, kl_beta=0.04), noise_level=0.7, guidance=1.0,
                    dtype=torch.float32)
    sigma = torch.full((args.batch,), 0.8, device=device)
    batch = RolloutBatch(x=x, x_next=x * 0.9, sigma=sigma, sigma_next=sigma - 0.1, first_next=sigma + 0.1,
                         old_log_prob=torch.zeros(args.batch, device=device),
                         advantage=torch.linspace(-1, 1, args.batch, device=device), embeds=embeds)

    def grpo_step():
        loss, _ = grpo(policy, batch)
        loss.backward()

    def sft_step():
        noise = torch.randn_like(x)
        noisy = (1 - sigma.view(-1, 1, 1, 1, 1)) * x + sigma.view(-1, 1, 1, 1, 1) * noise
        velocity = policy(hidden_states=noisy, timestep=sigma * 1000, encoder_hidden_states=embeds,
                          return_dict=False)[0]
        torch.nn.functional.mse_loss(velocity, noise - x).backward()

    step = grpo_step if args.mode == "grpo" else sft_step

    def once():
        step()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = _rss_bytes()
    once()  # warm up (inside the peak: the step's activations are what differs between the modes)
    times = []
    for _ in range(args.repeats):
        began = time.perf_counter()
        once()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - began)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    return {"mode": args.mode, "seconds": statistics.median(times), "peak": max(peak, 0)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--head-dim", type=int, default=32)
    parser.add_argument("--text-dim", type=int, default=64)
    parser.add_argument("--text-length", type=int, default=64)
    parser.add_argument("--frames", type=int, default=9)
    parser.add_argument("--height", type=int, default=128)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--mode", choices=("grpo", "sft"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mode:
        print(json.dumps(run_mode(args)))
        return
    results = {}
    for mode in ("sft", "grpo"):
        command = [sys.executable, __file__, "--mode", mode] + [
            f"--{name.replace('_', '-')}={value}" for name, value in vars(args).items() if name != "mode"]
        output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        results[mode] = json.loads(output.strip().splitlines()[-1])
    sft, grpo = results["sft"], results["grpo"]
    print(f"device {args.device}, {args.layers} layers x {args.heads} heads x {args.head_dim}, latents "
          f"{args.batch} x 16 x {(args.frames - 1) // 4 + 1} x {args.height // 8} x {args.width // 8}, LoRA r{args.rank}")
    print(f"{'step':<28}{'s / step':>10}{'peak MiB':>10}{'vs SFT':>8}")
    for name, row in (("SFT (flow matching)", sft), ("GRPO (surrogate + KL ref)", grpo)):
        print(f"{name:<28}{row['seconds']:>10.3f}{row['peak'] / 2**20:>10.1f}"
              f"{row['peak'] / max(sft['peak'], 1):>8.2f}")
    print(f"GRPO/SFT time {grpo['seconds'] / sft['seconds']:.2f}x, peak {grpo['peak'] / max(sft['peak'], 1):.2f}x "
          "(target peak <= 1.25x)")


if __name__ == "__main__":
    main()
