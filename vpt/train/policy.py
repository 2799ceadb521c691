"""LoRA policies of the generator: what grpo-step, dpo and sft start from, train and write — one checkpoint layout.

A policy checkpoint (the ``--out`` of every training stage, the ``--policy`` of every later one)::

    adapter_config.json + adapter_model.safetensors   the peft adapter (sample-rollouts --policy, PeftModel)
    pytorch_lora_weights.safetensors                  the same adapter in diffusers' layout
                                                      (WanPipeline.load_lora_weights(CKPT))
    optimizer.pt scheduler.pt rng_state.pt            harness state: resume, or continue the same stage
    trainer_state.json config.json [extra_state.pt]
    policy.json                                       generator, parent policy, lineage, stage, command, options
    metrics.parquet                                   the stage's metrics (schema ``metrics``)
    README.md                                         the model card (no local paths; peft's boilerplate replaced)

Stages follow each other in any order: each reads the generator and the adapter from a checkpoint of any stage, or
starts from a fresh LoRA, or from any peft or diffusers Wan LoRA without a ``policy.json`` (``--init-lora``).
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from vpt.errors import VptError
from vpt.train.trainer import WALL_CLOCK_METRICS

POLICY_FILE = "policy.json"
DIFFUSERS_WEIGHTS = "pytorch_lora_weights.safetensors"  # the file name diffusers' save_lora_weights writes
METRICS_TABLE = "metrics.parquet"
MODEL_CARD = "README.md"
INIT_LORA_STAGE = "init-lora"  # how a lineage names a LoRA a stage started from (--init-lora)
DEFAULT_LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "ffn.net.0.proj", "ffn.net.2", "proj_out")
"""Attention, FFN and output projection of every Wan block: on the tiny zoo attention alone barely moves samples."""


def new_policy(transformer: torch.nn.Module, targets: Sequence[str], rank: int, alpha: float,
               seed: int) -> torch.nn.Module:
    """A fresh LoRA policy on ``transformer``; LoRA's random A matrices come from ``seed`` (the same in every
    process, and the global RNG is left as it was)."""
    from vpt.rollouts.sampling import derived_seed
    from vpt.train.lora import apply_lora

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derived_seed(seed, "lora-init") % 2**63)
        return apply_lora(transformer, list(targets), rank, alpha)


def read_policy_record(checkpoint: Path) -> dict:
    """``policy.json`` of a policy checkpoint (what generator it adapts, where it came from)."""
    from vpt.io.jsonfile import read_json_object

    return read_json_object(Path(checkpoint) / POLICY_FILE, "the policy record",
                            "give a checkpoint written by grpo-step, dpo or sft, start from the generator, or start "
                            "from a LoRA without policy.json with --init-lora")


def grpo_iterations(policy: str | Path | None) -> int:
    """The GRPO iterations behind ``policy``: the ``iteration`` its ``policy.json`` records when grpo-step wrote it;
    0 for the base generator (None), another stage's checkpoint, or a LoRA without ``policy.json``."""
    if policy is None or not (Path(policy) / POLICY_FILE).is_file():
        return 0
    record = read_policy_record(Path(policy))
    return int(record.get("iteration") or 0) if record.get("stage", "grpo") == "grpo" else 0


@dataclass
class PolicySource:
    """Where a stage's policy comes from: the generator, and the parent checkpoint, or the LoRA it starts as
    (``init_lora``, a LoRA without ``policy.json``), or neither (a fresh LoRA)."""

    model: Path  # the resolved Wan pipeline directory
    checkpoint: Path | None
    digest: str | None  # the parent adapter's digest (what rollouts record as their sampling policy)
    record: dict  # the parent's policy.json ({} for a fresh LoRA or an init LoRA)
    init_lora: Any = None  # vpt.models.loading.LoraWeights of --init-lora

    @property
    def parent(self) -> str:
        if self.init_lora is not None:
            return self.init_lora.id
        return "base" if self.checkpoint is None else f"{self.checkpoint.resolve()}#{self.digest}"

    @property
    def stage(self) -> str | None:
        """The stage that wrote the parent (checkpoints from before stages were recorded are grpo-step's)."""
        return None if self.checkpoint is None else self.record.get("stage", "grpo")

    @property
    def adapter(self) -> bool:
        """Whether the policy starts as an existing adapter (a parent checkpoint or an init LoRA), not a fresh one."""
        return self.checkpoint is not None or self.init_lora is not None

    @property
    def lineage(self) -> list[dict]:
        """The chain of parents, nearest first: each one's stage, adapter digest and directory name (no paths)."""
        if self.init_lora is not None:
            lora = self.init_lora
            return [{"stage": INIT_LORA_STAGE, "format": lora.format, "digest": lora.digest,
                     "name": lora.path.resolve().name}]
        if self.checkpoint is None:
            return []
        earlier = self.record.get("lineage")
        if not isinstance(earlier, list):
            earlier = recorded_lineage(self.record.get("parent"))
        return [{"stage": self.stage, "digest": self.digest, "name": self.checkpoint.resolve().name}, *earlier]

    def describe(self) -> dict:
        """What every stage's ``policy.json`` adds about its start: the lineage and, for an init LoRA, its setup
        (format, rank, alpha and where alpha came from, targets)."""
        extra: dict = {"lineage": self.lineage}
        if self.init_lora is not None:
            extra["init_lora"] = self.init_lora.record()
        return extra

    def open(self, targets: Sequence[str] = DEFAULT_LORA_TARGETS, rank: int = 8, alpha: float = 16.0,
             seed: int = 0, device: str | None = None, transformer: torch.nn.Module | None = None,
             dtype: torch.dtype = torch.float32, gradient_checkpointing: bool = False) -> torch.nn.Module:
        """The generator's transformer with the parent adapter (or the init LoRA) loaded trainable, or a fresh
        seeded LoRA (``targets``, ``rank``, ``alpha``) without either. ``transformer``: the generator's transformer
        when it is already loaded (e.g. with the pipeline that encoded the data); else it is loaded in ``dtype``.
        The LoRA weights are float32 on a bfloat16 transformer too (peft's ``autocast_adapter_dtype``, the default
        of ``get_peft_model``). ``gradient_checkpointing``: the transformer recomputes its blocks' activations in
        the backward pass (:func:`vpt.train.lora.checkpoint_activations`)."""
        from vpt.models.loading import load_wan_transformer, open_lora, read_lora
        from vpt.train.lora import checkpoint_activations

        if transformer is None:
            transformer = load_wan_transformer(self.model, dtype=dtype, device=device)
        if self.init_lora is not None:
            policy = open_lora(transformer, self.init_lora, trainable=True, generator=self.model)
        elif self.checkpoint is None:
            policy = new_policy(transformer, targets, rank, alpha, seed)
        else:
            policy = open_lora(transformer, read_lora(self.checkpoint), trainable=True, generator=self.model)
        if gradient_checkpointing:
            checkpoint_activations(policy)
        return policy


def recorded_lineage(parent: Any) -> list[dict]:
    """The lineage of a checkpoint whose ``policy.json`` predates the ``lineage`` entry: follow the ``parent``
    fields through the parents' own ``policy.json`` files, where they still exist."""
    chain: list[dict] = []
    while isinstance(parent, str) and "#" in parent and len(chain) < 64:
        location, _, digest = parent.rpartition("#")
        try:
            record = json.loads((Path(location) / POLICY_FILE).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            record = None
        if not isinstance(record, dict):
            chain.append({"stage": "unknown", "digest": digest, "name": Path(location).name})
            break
        chain.append({"stage": record.get("stage", "grpo"), "digest": digest, "name": Path(location).name})
        if isinstance(record.get("lineage"), list):
            return chain + record["lineage"]
        parent = record.get("parent")
    return chain


def check_start(policy: str | None, init_lora: str | None, generator: str | None,
                generator_option: str = "--model") -> None:
    """``--init-lora`` starts a new policy from a LoRA on a named generator: not with ``--policy``, and not without
    the generator (``generator_option``), which a LoRA without ``policy.json`` does not record."""
    if init_lora is None:
        return
    if policy is not None:
        raise VptError("--init-lora and --policy exclude each other: --policy continues a vpt checkpoint, "
                       "--init-lora starts a new policy from any LoRA")
    if generator is None:
        raise VptError(f"--init-lora needs the generator: pass {generator_option} WAN_DIR (a LoRA without "
                       "policy.json does not name one)")


def policy_source(model: str | None, policy: str | None, init_lora: str | None = None,
                  generator_option: str = "--model") -> PolicySource:
    """Resolve ``--model`` / ``--policy`` / ``--init-lora`` without loading the generator: ``model`` (a Wan or zoo
    directory) may be left out with a policy, whose ``policy.json`` records its generator; an init LoRA (any peft
    or diffusers Wan LoRA) is read here, so a directory without one is refused before any work."""
    from vpt.models.loading import policy_digest, read_lora, resolve_wan_directory

    check_start(policy, init_lora, model, generator_option)
    checkpoint = None if policy is None else Path(policy)
    record: dict = {}
    digest = None
    lora = None
    if checkpoint is not None:
        record = read_policy_record(checkpoint)
        model = model or record.get("model")
        digest = policy_digest(checkpoint)
    if model is None:
        raise VptError(f"no generator: pass {generator_option} WAN_DIR")
    generator = resolve_wan_directory(model).resolve()
    if init_lora is not None:
        lora = read_lora(init_lora)
        digest = lora.digest
    return PolicySource(model=generator, checkpoint=checkpoint, digest=digest, record=record, init_lora=lora)


def save_policy(model: torch.nn.Module, directory: Path, state: dict[str, torch.Tensor] | None = None) -> None:
    """The harness's peft save plus the same adapter in diffusers' layout (``pytorch_lora_weights.safetensors``),
    so ``WanPipeline.load_lora_weights(directory)`` loads the policy too. ``state``: the trainable weights the
    harness gathered (from a sharded model), else read from ``model``."""
    from diffusers import WanPipeline
    from peft import get_peft_model_state_dict

    from vpt.io.tensors import canonicalize_header
    from vpt.train.checkpoint import save_peft, trainable_state_dict

    state = trainable_state_dict(model) if state is None else state
    save_peft(model, directory, state)
    config = model.peft_config["default"]
    metadata = {key: value for key, value in config.to_dict().items() if key in
                ("r", "lora_alpha", "target_modules", "lora_dropout", "use_dora", "use_rslora", "bias")}
    metadata["target_modules"] = sorted(metadata["target_modules"]) if not isinstance(
        metadata["target_modules"], str) else metadata["target_modules"]
    for name in ("rank_pattern", "alpha_pattern", "lora_bias"):  # an init LoRA's mixed ranks or biases
        if getattr(config, name, None):
            metadata[name] = dict(sorted(getattr(config, name).items())) if name != "lora_bias" else True
    # diffusers names adapter weights from the transformer itself, without peft's wrapper prefix
    layers = {key.removeprefix("base_model.model."): value
              for key, value in get_peft_model_state_dict(model, state_dict=state).items()}
    WanPipeline.save_lora_weights(directory, transformer_lora_layers=layers,
                                  transformer_lora_adapter_metadata=metadata, safe_serialization=True)
    canonicalize_header(Path(directory) / DIFFUSERS_WEIGHTS)


def metrics_rows(iteration: int, summary: Mapping[str, float], steps: Sequence[Mapping[str, Any]]) -> list[dict]:
    """The ``metrics`` table in long form: per-run figures (``step`` null), then every logged harness row. Wall-clock
    figures (``examples_per_s``) measure the machine, not the training: they stay in the harness's
    ``metrics.jsonl`` and out of the table, so the same run writes the same bytes."""
    table = [{"iteration": iteration, "step": None, "name": name, "value": float(value)}
             for name, value in summary.items()]
    for row in steps:
        table.extend({"iteration": iteration, "step": int(row["step"]), "name": name, "value": float(value)}
                     for name, value in row.items() if name not in ("step", "epoch", *WALL_CLOCK_METRICS))
    return table


def read_policy_metrics(checkpoint: str | Path) -> dict[tuple[int | None, str], float | None]:
    """The ``metrics.parquet`` of a policy checkpoint as ``{(step, name): value}`` (step None: per-run figures)."""
    from vpt.io.tables import read_table

    rows = read_table(Path(checkpoint) / METRICS_TABLE, "metrics").to_pylist()
    return {(row["step"], row["name"]): row["value"] for row in rows}


def publish_policy(checkpoint: Path, out: Path, record: Mapping[str, Any], metrics: Sequence[dict],
                   logs: Path | None = None) -> None:
    """Move the files of the harness ``checkpoint`` into the policy checkpoint ``out``, with ``policy.json``,
    ``metrics.parquet`` and our model card (``README.md``, in place of peft's); ``adapter_config.json`` names the
    generator instead of a local path; the run's experiment-tracker directory ``logs``, when it exists, moves in as
    ``logs/``. ``out`` appears complete or not at all."""
    from vpt.io.atomic import commit, temporary_sibling
    from vpt.io.tables import write_table

    out = Path(out)
    temporary = temporary_sibling(out)
    temporary.mkdir(parents=True)
    try:
        for entry in Path(checkpoint).iterdir():
            entry.rename(temporary / entry.name)
        if logs is not None and logs.is_dir():
            logs.rename(temporary / logs.name)
        (temporary / POLICY_FILE).write_text(json.dumps(dict(record), indent=2, sort_keys=True) + "\n",
                                             encoding="utf-8")
        write_table(list(metrics), temporary / METRICS_TABLE, "metrics")
        public_adapter_config(temporary, record)
        (temporary / MODEL_CARD).write_text(model_card(record, temporary, out.name), encoding="utf-8")
        commit(temporary, out)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)


def public_adapter_config(directory: Path, record: Mapping[str, Any]) -> None:
    """``adapter_config.json`` without a local path: ``base_model_name_or_path`` is the generator's name (peft does
    not read it when the base model is given, ``PeftModel.from_pretrained(transformer, DIR)``); the targets sorted
    and the keys sorted, so the file has the same bytes on every run."""
    from vpt.models.loading import PEFT_CONFIG, generator_name

    file = Path(directory) / PEFT_CONFIG
    if not file.is_file():
        return
    config = json.loads(file.read_text(encoding="utf-8"))
    config["base_model_name_or_path"] = generator_name(record["model"]) if record.get("model") else None
    if isinstance(config.get("target_modules"), list):
        config["target_modules"] = sorted(config["target_modules"])
    file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def public_path(text: str) -> str:
    """``text`` with a local path reduced to its base name (absolute, or relative through ``..``): what a model
    card may show of a file or directory."""
    if text.startswith("-") and "=" in text:
        option, _, value = text.partition("=")
        return f"{option}={public_path(value)}"
    path = Path(text)
    if path.is_absolute() or ".." in path.parts or text.startswith("~"):
        return path.name or text.strip("/") or "."
    return text


def public_command(argv: Sequence[str]) -> str:
    """The command line that wrote a checkpoint, as a shell line with every local path reduced to its base name."""
    return shlex.join(public_path(str(token)) for token in argv)


def _yaml_text(text: str) -> str:
    return text if re.fullmatch(r"[A-Za-z0-9][\w./-]*", text) else json.dumps(text)


def _lora_lines(directory: Path) -> list[str]:
    """Rank, alpha and targets of the adapter in ``directory`` (from its own files)."""
    from safetensors import safe_open

    from vpt.models.loading import PEFT_CONFIG, PEFT_WEIGHTS

    try:
        config = json.loads((directory / PEFT_CONFIG).read_text(encoding="utf-8"))
        with safe_open(str(directory / PEFT_WEIGHTS), "pt") as weights:
            modules = sum(1 for key in weights.keys() if ".lora_A." in key)
    except (OSError, ValueError):
        return []
    targets = config.get("target_modules")
    names = ([f"regex {targets}"] if isinstance(targets, str) else
             sorted({re.sub(r"^(.*\.)?blocks\.\d+\.", "", str(name)) for name in targets or []}))
    lines = [f"- **LoRA:** rank {config.get('r')}, alpha {config.get('lora_alpha')}, {modules} modules "
             f"(targets: {', '.join(f'`{name}`' for name in names)})"]
    for name, what in (("rank_pattern", "ranks"), ("alpha_pattern", "alphas")):
        pattern = sorted((config.get(name) or {}).items())
        if pattern:
            shown = ", ".join(f"`{module}` {value}" for module, value in pattern[:8])
            lines.append(f"  - other {what} ({name}): {shown}{', ...' if len(pattern) > 8 else ''}")
    return lines


def model_card(record: Mapping[str, Any], directory: Path, name: str) -> str:
    """The ``README.md`` of a policy checkpoint: YAML front matter (``library_name: peft``, ``base_model``: the
    generator's name, tags), then the generator, stage, lineage, command, LoRA setup and how to load it. No
    absolute local path appears in it."""
    from vpt.models.loading import generator_name

    generator = generator_name(record["model"]) if record.get("model") else "unknown"
    stage = str(record.get("stage", "grpo"))
    done = [f"step {record['step']}"] if record.get("step") is not None else []
    if record.get("iteration") is not None:
        done.insert(0, f"iteration {record['iteration']}")
    data = record.get("data") or record.get("rollouts")
    data_kind = "Data" if record.get("data") else "Rollouts"
    lineage = record.get("lineage")
    if not isinstance(lineage, list):
        lineage = recorded_lineage(record.get("parent"))
    lines = ["---", f"base_model: {_yaml_text(generator)}", "library_name: peft", "tags:",
             *(f"- {_yaml_text(tag)}" for tag in ("vpt", stage, "lora", "text-to-video")), "---", "",
             f"# {name}", "", f"A LoRA policy of the text-to-video generator `{generator}`, written by vpt's `{stage}` "
             "stage.", "",
             f"- **Generator:** `{generator}`",
             f"- **Stage:** {stage}" + (f" ({', '.join(done)})" if done else "")]
    if data:
        lines.append(f"- **{data_kind}:** `{public_path(str(data))}`")
    init = record.get("init_lora")
    lines += _lora_lines(directory)
    if isinstance(init, dict):
        lines.append(f"- **Started from** the {init.get('format')} LoRA `{lineage[0].get('name') if lineage else ''}`"
                     f" (rank {init.get('rank')}, alpha {init.get('alpha')}; alpha from {init.get('alpha_source')})")
    lines += ["", "## Lineage", "", f"1. this policy: {stage}" + (f" ({', '.join(done)})" if done else "")]
    for number, parent in enumerate(lineage, start=2):
        what = ("init LoRA" + (f" ({parent['format']} format)" if parent.get("format") else "")
                if parent.get("stage") == INIT_LORA_STAGE else f"{parent.get('stage')} policy")
        lines.append(f"{number}. {what} `{public_path(str(parent.get('name')))}` (adapter #{parent.get('digest')})")
    lines.append(f"{len(lineage) + 2}. the generator `{generator}`")
    command = record.get("command")
    if command:
        lines += ["", "## Command", "", "```", public_command(command), "```"]
    lines += ["", "## Loading", "", "```python", "import torch", "from diffusers import WanPipeline",
              "from peft import PeftModel", "",
              f"pipe = WanPipeline.from_pretrained({json.dumps(generator)}, dtype=torch.bfloat16)",
              f"pipe.load_lora_weights({json.dumps(name)})  # diffusers: pytorch_lora_weights.safetensors",
              "# or with peft (adapter_config.json + adapter_model.safetensors), on a fresh pipeline:",
              f"# pipe.transformer = PeftModel.from_pretrained(pipe.transformer, {json.dumps(name)})", "```", "",
              "With vpt: sample with it, or continue training it (any stage):", "", "```",
              f"vpt sample-rollouts -m {shlex.quote(generator)} --policy {shlex.quote(name)} --prompts prompts.txt "
              "-o rollouts/",
              f"vpt sft --policy {shlex.quote(name)} --data clips.parquet -o next/", "```", ""]
    return "\n".join(lines)
