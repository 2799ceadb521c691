"""LoRA policies of the generator: what grpo-step, dpo and sft start from, train and write — one checkpoint layout.

A policy checkpoint (the ``--out`` of every training stage, the ``--policy`` of every later one)::

    adapter_config.json + adapter_model.safetensors   the peft adapter (sample-rollouts --policy, PeftModel)
    pytorch_lora_weights.safetensors                  the same adapter in diffusers' layout
                                                      (WanPipeline.load_lora_weights(CKPT))
    optimizer.pt scheduler.pt rng_state.pt            harness state: resume, or continue the same stage
    trainer_state.json config.json [extra_state.pt]
    policy.json                                       generator, parent policy, stage and its options
    metrics.parquet                                   the stage's metrics (schema ``metrics``)

Stages follow each other in any order: each reads the generator and the adapter from a checkpoint of any stage.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from vpt.errors import VptError

POLICY_FILE = "policy.json"
DIFFUSERS_WEIGHTS = "pytorch_lora_weights.safetensors"  # the file name diffusers' save_lora_weights writes
METRICS_TABLE = "metrics.parquet"
DEFAULT_LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "ffn.net.0.proj", "ffn.net.2", "proj_out")
"""Attention, FFN and output projection of every Wan block: on the tiny zoo attention alone barely moves samples."""


def new_policy(transformer: torch.nn.Module, targets: Sequence[str], rank: int, alpha: float,
               seed: int) -> torch.nn.Module:
    """A fresh LoRA policy on ``transformer``; LoRA's random A matrices come from ``seed`` (the same in every
    process, and the global RNG is left as it was)."""
    from vpt.rollouts.sampling import derived_seed
    from vpt.train import apply_lora

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derived_seed(seed, "lora-init") % 2**63)
        return apply_lora(transformer, list(targets), rank, alpha)


def read_policy_record(checkpoint: Path) -> dict:
    """``policy.json`` of a policy checkpoint (what generator it adapts, where it came from)."""
    from vpt.io.jsonfile import read_json_object

    return read_json_object(Path(checkpoint) / POLICY_FILE, "the policy record",
                            "give a checkpoint written by grpo-step, dpo or sft, or start from the generator")


@dataclass
class PolicySource:
    """Where a stage's policy comes from: the generator, and the parent checkpoint (None: a fresh LoRA)."""

    model: Path  # the resolved Wan pipeline directory
    checkpoint: Path | None
    digest: str | None  # the parent adapter's digest (what rollouts record as their sampling policy)
    record: dict  # the parent's policy.json ({} for a fresh LoRA)

    @property
    def parent(self) -> str:
        return "base" if self.checkpoint is None else f"{self.checkpoint.resolve()}#{self.digest}"

    @property
    def stage(self) -> str | None:
        """The stage that wrote the parent (checkpoints from before stages were recorded are grpo-step's)."""
        return None if self.checkpoint is None else self.record.get("stage", "grpo")

    def open(self, targets: Sequence[str] = DEFAULT_LORA_TARGETS, rank: int = 8, alpha: float = 16.0,
             seed: int = 0, device: str | None = None,
             transformer: torch.nn.Module | None = None) -> torch.nn.Module:
        """The generator's transformer with the parent adapter loaded trainable, or a fresh seeded LoRA
        (``targets``, ``rank``, ``alpha``) without a parent. ``transformer``: the generator's transformer when it
        is already loaded (e.g. with the pipeline that encoded the data)."""
        from peft import PeftModel

        from vpt.models.loading import load_wan_transformer

        if transformer is None:
            transformer = load_wan_transformer(self.model, device=device)
        if self.checkpoint is None:
            return new_policy(transformer, targets, rank, alpha, seed)
        try:
            return PeftModel.from_pretrained(transformer, str(self.checkpoint), is_trainable=True)
        except (ValueError, RuntimeError, KeyError) as error:
            raise VptError(f"{self.checkpoint}: this LoRA policy does not fit the generator {self.model} "
                           f"({str(error).splitlines()[0]}); use the generator it was trained on") from None


def policy_source(model: str | None, policy: str | None) -> PolicySource:
    """Resolve ``--model`` / ``--policy`` without loading weights: ``model`` (a Wan or zoo directory) may be left
    out with a policy, whose ``policy.json`` records its generator."""
    from vpt.models.loading import policy_digest, resolve_wan_directory

    checkpoint = None if policy is None else Path(policy)
    record: dict = {}
    digest = None
    if checkpoint is not None:
        record = read_policy_record(checkpoint)
        model = model or record.get("model")
        digest = policy_digest(checkpoint)
    if model is None:
        raise VptError("no generator: pass --model WAN_DIR")
    return PolicySource(model=resolve_wan_directory(model).resolve(), checkpoint=checkpoint, digest=digest,
                        record=record)


def save_policy(model: torch.nn.Module, directory: Path) -> None:
    """The harness's peft save plus the same adapter in diffusers' layout (``pytorch_lora_weights.safetensors``),
    so ``WanPipeline.load_lora_weights(directory)`` loads the policy too."""
    from diffusers import WanPipeline
    from peft import get_peft_model_state_dict

    from vpt.io.tensors import canonicalize_header
    from vpt.train.checkpoint import save_peft

    save_peft(model, directory)
    config = model.peft_config["default"]
    metadata = {key: value for key, value in config.to_dict().items() if key in
                ("r", "lora_alpha", "target_modules", "lora_dropout", "use_dora", "use_rslora", "bias")}
    metadata["target_modules"] = sorted(metadata["target_modules"]) if not isinstance(
        metadata["target_modules"], str) else metadata["target_modules"]
    # diffusers names adapter weights from the transformer itself, without peft's wrapper prefix
    layers = {key.removeprefix("base_model.model."): value for key, value in get_peft_model_state_dict(model).items()}
    WanPipeline.save_lora_weights(directory, transformer_lora_layers=layers,
                                  transformer_lora_adapter_metadata=metadata, safe_serialization=True)
    canonicalize_header(Path(directory) / DIFFUSERS_WEIGHTS)


def metrics_rows(iteration: int, summary: Mapping[str, float], steps: Sequence[Mapping[str, Any]]) -> list[dict]:
    """The ``metrics`` table in long form: per-run figures (``step`` null), then every logged harness row."""
    table = [{"iteration": iteration, "step": None, "name": name, "value": float(value)}
             for name, value in summary.items()]
    for row in steps:
        table.extend({"iteration": iteration, "step": int(row["step"]), "name": name, "value": float(value)}
                     for name, value in row.items() if name not in ("step", "epoch"))
    return table


def read_policy_metrics(checkpoint: str | Path) -> dict[tuple[int | None, str], float | None]:
    """The ``metrics.parquet`` of a policy checkpoint as ``{(step, name): value}`` (step None: per-run figures)."""
    from vpt.io.tables import read_table

    rows = read_table(Path(checkpoint) / METRICS_TABLE, "metrics").to_pylist()
    return {(row["step"], row["name"]): row["value"] for row in rows}


def publish_policy(checkpoint: Path, out: Path, record: Mapping[str, Any], metrics: Sequence[dict]) -> None:
    """Move the files of the harness ``checkpoint`` into the policy checkpoint ``out``, with ``policy.json`` and
    ``metrics.parquet``; ``out`` appears complete or not at all."""
    from vpt.io.atomic import commit, temporary_sibling
    from vpt.io.tables import write_table

    out = Path(out)
    temporary = temporary_sibling(out)
    temporary.mkdir(parents=True)
    try:
        for entry in Path(checkpoint).iterdir():
            entry.rename(temporary / entry.name)
        (temporary / POLICY_FILE).write_text(json.dumps(dict(record), indent=2, sort_keys=True) + "\n",
                                             encoding="utf-8")
        write_table(list(metrics), temporary / METRICS_TABLE, "metrics")
        commit(temporary, out)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
