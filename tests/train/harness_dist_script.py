"""Run by test_harness_distributed.py under ``accelerate launch --multi_gpu --num_processes 2`` on CPU.

Usage: harness_dist_script.py OUTPUT_DIR [--resume] [--die-after N]. Trains a tiny linear model with the harness;
each process records the example indices and per-step losses it saw in OUTPUT_DIR/seen-RANK.json (test evidence,
written by this script, not by the harness), then leaves through finish_distributed().
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
torch.set_num_threads(1)

from train_tasks import Regression, linear, mse_loss  # noqa: E402

from vpt.train import TrainConfig, Trainer, finish_distributed  # noqa: E402


def main() -> None:
    out = Path(sys.argv[1])
    resume = "--resume" in sys.argv
    die_after = int(sys.argv[sys.argv.index("--die-after") + 1]) if "--die-after" in sys.argv else None
    rank = int(os.environ.get("RANK", "0"))
    seen: list[dict] = []

    def loss_fn(model, batch):
        if die_after is not None and len(seen) == die_after:
            raise SystemExit(3)
        loss, metrics = mse_loss(model, batch)
        seen.append({"indices": batch["index"].tolist(), "loss": loss.item()})
        return loss, {**metrics, "rank": float(rank)}

    config = TrainConfig(output_dir=str(out / "run"), seed=7, learning_rate=0.05, batch_size=2, max_steps=6,
                         log_every=1, save_every=2, max_grad_norm=1.0)
    model = linear(seed=4)
    result = Trainer(model, config, dataset=Regression(16), loss_fn=loss_fn, quiet=True).train(resume=resume)
    name = f"seen-{rank}{'-resumed' if resume else ''}.json"
    (out / name).write_text(json.dumps({"seen": seen, "step": result.step,
                                        "weight": model.weight.detach().flatten().tolist(),
                                        "bias": model.bias.detach().flatten().tolist()}))
    finish_distributed()


if __name__ == "__main__":
    main()
