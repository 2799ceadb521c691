"""Run by the harness's distributed tests under ``accelerate launch --num_processes 2`` on CPU, or plainly.

Usage: harness_dist_script.py OUTPUT_DIR [--resume [PATH]] [--die-after N] [--examples N] [--grad-accum K]
[--blocks]. Trains a tiny model with the harness (``--blocks``: frozen blocks with trainable corrections, which an
FSDP launch shards); each process records the example indices and per-step losses it saw in
OUTPUT_DIR/seen-RANK.json (test evidence, written by this script, not by the harness), then leaves through
finish_distributed().
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
torch.set_num_threads(1)

from train_tasks import Regression, block_model, linear, mse_loss  # noqa: E402

from vpt.train import TrainConfig, Trainer, finish_distributed  # noqa: E402


def option(name: str, default):
    return type(default)(sys.argv[sys.argv.index(name) + 1]) if name in sys.argv else default


def main() -> None:
    out = Path(sys.argv[1])
    resume: bool | str = False
    if "--resume" in sys.argv:
        following = sys.argv[sys.argv.index("--resume") + 1:]
        resume = following[0] if following and not following[0].startswith("--") else True
    die_after = option("--die-after", -1)
    rank = int(os.environ.get("RANK", "0"))
    seen: list[dict] = []

    def loss_fn(model, batch):
        from torch.distributed.fsdp import FSDPModule

        if len(seen) == die_after:
            raise SystemExit(3)
        loss, metrics = mse_loss(model, batch)
        seen.append({"indices": batch["index"].tolist(), "loss": loss.item(), "sharded": isinstance(model, FSDPModule),
                     "parameter_elements": sum(p.to_local().numel() if hasattr(p, "to_local") else p.numel()
                                               for p in model.parameters())})
        return loss, {**metrics, "rank": float(rank)}

    config = TrainConfig(output_dir=str(out / "run"), seed=7, learning_rate=0.05, batch_size=2,
                         gradient_accumulation_steps=option("--grad-accum", 1), max_steps=6, log_every=1,
                         save_every=2, max_grad_norm=1.0)
    model = block_model(seed=4) if "--blocks" in sys.argv else linear(seed=4)
    result = Trainer(model, config, dataset=Regression(option("--examples", 16)), loss_fn=loss_fn,
                     quiet=True).train(resume=resume)
    name = f"seen-{rank}{'-resumed' if resume else ''}.json"
    weights = {key: value.tolist() for key, value in result_weights(result.checkpoint).items()}
    (out / name).write_text(json.dumps({"seen": seen, "step": result.step, "weights": weights}))
    finish_distributed()


def result_weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    """The trained weights as the checkpoint holds them (gathered from every process when sharded)."""
    from safetensors.torch import load_file

    return load_file(str(checkpoint / "trainable.safetensors"))


if __name__ == "__main__":
    main()
