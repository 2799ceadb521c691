"""The one training harness every stage of :mod:`vpt.stages` runs on (sft, dpo, grpo-step, train-reward).

It knows nothing about reward models or video: a stage describes its *task* with a few callables and the
harness does the rest (accelerate, AdamW + schedule, accumulation, clipping, mixed precision, metrics log,
evaluation, atomic checkpoints, bit-identical resume, several processes: data-parallel, FSDP2-sharded or
context-parallel, every step the exact gradient of one process).

The policy stages (sft, dpo, grpo-step) go through :func:`vpt.train.run.train_stage`, which runs the trainer in
``OUT.run/`` and publishes the policy checkpoint; a stage that trains another kind of model plugs in directly::

    from vpt.train import TrainConfig, Trainer, apply_lora, mark_trainable, finish_distributed

    model = build_model(...)                                   # the task's model
    model = apply_lora(model, ["to_q", "to_k", "to_v"], rank=64, alpha=128)   # what trains (or mark_trainable)

    def loss_fn(model, batch):                                 # one micro-batch -> (mean loss, scalar metrics)
        out = model(**batch)                                   # call the (possibly DDP-wrapped) model
        loss = my_loss(out, batch)
        return loss, {"accuracy": (out > 0).float().mean()}

    def eval_fn(model):                                        # optional; every eval_every steps and at the end
        return {"accuracy": evaluate(model)}                   # logged as eval/accuracy

    config = TrainConfig(output_dir=out, learning_rate=2e-6, batch_size=2, gradient_accumulation_steps=8,
                         max_steps=1000, save_every=100, mixed_precision="bf16")
    result = Trainer(model, config, dataset=dataset, collate_fn=collate, loss_fn=loss_fn, eval_fn=eval_fn,
                     save_model=export_official_layout,        # optional export hook (model, directory, weights)
                     extra_state=curriculum,                   # optional: state_dict()/load_state_dict()
                     quiet=quiet).train(resume=resume)
    finish_distributed()                                       # last line of the command under accelerate launch

A task that back-propagates itself (gradient-decoupled DPO: one backward pass per branch) passes
``own_backward=True``; its ``loss_fn(model, batch, backward)`` calls ``backward(tensor)`` and returns the detached
loss. A dataset with ``set_epoch(epoch)`` hears each epoch before its items are read (per-epoch noise).

``save_model(model, directory, weights)`` / ``load_model(model, directory)`` decide how trainable weights sit in a
checkpoint (``weights``: the trainable tensors by name, gathered from every process when the model is sharded;
defaults: a peft adapter via ``save_pretrained`` plus ``non_adapter.safetensors``, or ``trainable.safetensors``); a
``save_model`` alone is an extra export written beside the harness's own weights.
Checkpoint layout: see :mod:`vpt.train.checkpoint`. Everything here logs to stderr only, never to stdout.
"""

from vpt.train.checkpoint import (isolated_rng, latest_checkpoint, list_checkpoints, load_peft, load_trainable,
                                  read_metrics, save_peft, save_trainable, seed_everything)
from vpt.train.config import TrainConfig
from vpt.train.lora import (TrainedRows, apply_lora, count_parameters, freeze, is_peft_model, mark_trainable,
                            train_embedding_rows)
from vpt.train.optim import LrLambda, build_optimizer, build_scheduler, param_groups
from vpt.train.trainer import EpochSampler, Trainer, TrainResult, finish_distributed

__all__ = [
    "EpochSampler", "LrLambda", "TrainConfig", "TrainResult", "TrainedRows", "Trainer", "apply_lora",
    "build_optimizer", "build_scheduler", "count_parameters", "finish_distributed", "freeze", "is_peft_model",
    "isolated_rng", "latest_checkpoint", "list_checkpoints", "load_peft", "load_trainable", "mark_trainable",
    "param_groups", "read_metrics", "save_peft", "save_trainable", "seed_everything", "train_embedding_rows",
]
