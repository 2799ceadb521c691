"""``--dtype bf16`` and ``--gradient-checkpointing`` on every training stage, on the tiny zoo.

bf16: the frozen weights each stage loads are bfloat16 — except the few modules diffusers itself keeps in float32
(``WanTransformer3DModel._keep_in_fp32_modules``: time embedding, norms, modulation tables) — every trainable one is
float32, and the loss (and GRPO's log-probs) are float32 and finite. Checkpointing: the gradients of one micro-batch
through the stage's own loss equal those without it, and the flag reaches the model."""

from __future__ import annotations

import json

import pytest
import torch

from vpt.io.tables import read_table, write_table
from vpt.stages.examples import LatentItems, NoiseOptions, prepare
from vpt.train.lora import checkpoint_activations
from vpt.train.policy import DEFAULT_LORA_TARGETS

LORA = {"targets": DEFAULT_LORA_TARGETS, "rank": 4, "alpha": 8.0}
SIZE = ["--frames", "9", "--height", "32", "--width", "32"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """4 toy clips (9x32x32) with their manifest and 6 labelled pairs of them."""
    from vpt.toyworld import toy_preferences, write_toy_videos

    root = tmp_path_factory.mktemp("precision")
    manifest = write_toy_videos(root, n=4, seed=0, frames=9, height=32, width=32)
    write_table(toy_preferences(read_table(manifest, "videos").to_pylist(), 6, seed=0), root / "prefs.parquet",
                "prefs")
    return root


def wan_kept_in_float32() -> tuple[str, ...]:
    from diffusers import WanTransformer3DModel

    return tuple(WanTransformer3DModel._keep_in_fp32_modules)


def assert_precision(model: torch.nn.Module, kept: tuple[str, ...] = ()) -> None:
    """Every trainable parameter float32; every frozen one bfloat16 unless its name holds one of ``kept``."""
    trainable = frozen = 0
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            trainable += 1
            assert parameter.dtype == torch.float32, name
        elif not any(part in name.split(".") for part in kept):
            frozen += 1
            assert parameter.dtype == torch.bfloat16, name
    assert trainable and frozen


def gradients(model: torch.nn.Module, loss_of) -> dict[str, torch.Tensor]:
    """The trainable parameters' gradients of the loss ``loss_of(model)`` (one backward, seeded RNG for dropout)."""
    model.zero_grad(set_to_none=True)
    torch.manual_seed(0)
    loss_of(model).backward()
    grads = {name: parameter.grad.clone() for name, parameter in model.named_parameters() if parameter.requires_grad}
    assert any(bool(grad.abs().sum() > 0) for grad in grads.values())
    return grads


def assert_same_gradients(plain: dict, checkpointed: dict) -> None:
    assert plain.keys() == checkpointed.keys()
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], rtol=1e-6, atol=0, msg=name)


# ------------------------------------------------------------------------------------------------ sft and dpo
def flow_policy(world, zoo, examples, dtype=torch.float32, checkpointing=False):
    return prepare(examples, str(zoo), None, None, str(world / "cache"), LORA, 0, True, dtype=dtype,
                   gradient_checkpointing=checkpointing)


def sft_batch(encoded):
    from vpt.stages.sft import ClipBatch

    items = LatentItems(encoded, NoiseOptions(seed=1))
    return ClipBatch.collate([items[index] for index in range(2)])


def dpo_batch(encoded):
    from vpt.stages.dpo import PairBatch

    items = LatentItems(encoded, NoiseOptions(seed=1))
    return PairBatch.collate([items[index] for index in range(2)])


def dpo_loss(model, batch, dtype):
    from vpt.stages.dpo import DpoOptions, FlowDpoTask, Reference

    task = FlowDpoTask(DpoOptions(dimension="vq", beta=50.0), Reference(model, parent_weights=False), dtype)
    kept = []
    loss, _ = task(model, batch, backward=kept.append)
    return kept[0] if torch.is_grad_enabled() else loss


def test_sft_in_bf16_trains_float32_lora_on_a_bf16_generator(world, tiny_zoo):
    from vpt.models.wan import wan_dtype
    from vpt.stages.sft import FlowMatchingTask, sft_examples

    _, policy, encoded = flow_policy(world, tiny_zoo, sft_examples([str(world / "videos.parquet")]), torch.bfloat16)
    assert_precision(policy, wan_kept_in_float32())
    assert wan_dtype(policy) == torch.bfloat16
    loss, metrics = FlowMatchingTask(wan_dtype(policy))(policy, sft_batch(encoded))
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    lora = [p for name, p in policy.named_parameters() if "lora_B" in name]
    assert all(p.grad.dtype == torch.float32 for p in lora) and any(p.grad.abs().sum() > 0 for p in lora)


def test_sft_gradients_equal_with_checkpointing(world, tiny_zoo):
    from vpt.stages.sft import FlowMatchingTask, sft_examples

    examples = sft_examples([str(world / "videos.parquet")])
    _, plain, encoded = flow_policy(world, tiny_zoo, examples)
    _, checkpointed, _ = flow_policy(world, tiny_zoo, examples, checkpointing=True)
    assert checkpointed.get_base_model().is_gradient_checkpointing
    assert not plain.get_base_model().is_gradient_checkpointing
    batch, task = sft_batch(encoded), FlowMatchingTask(torch.float32)
    assert_same_gradients(gradients(plain, lambda model: task(model, batch)[0]),
                          gradients(checkpointed, lambda model: task(model, batch)[0]))


def test_dpo_in_bf16_keeps_errors_and_loss_float32(world, tiny_zoo):
    from vpt.models.wan import wan_dtype
    from vpt.stages.dpo import branch_errors, dpo_examples

    _, policy, encoded = flow_policy(world, tiny_zoo, dpo_examples(str(world / "prefs.parquet"), "vq"),
                                     torch.bfloat16)
    assert_precision(policy, wan_kept_in_float32())
    batch = dpo_batch(encoded)
    errors = branch_errors(policy, batch.chosen, batch.noise, batch.sigma, batch.embeds, wan_dtype(policy))
    assert errors.dtype == torch.float32 and errors.shape == (2,)
    loss = dpo_loss(policy, batch, wan_dtype(policy))
    assert loss.dtype == torch.float32 and torch.isfinite(loss)


def test_dpo_gradients_equal_with_checkpointing(world, tiny_zoo):
    from vpt.stages.dpo import dpo_examples

    examples = dpo_examples(str(world / "prefs.parquet"), "vq")
    _, plain, encoded = flow_policy(world, tiny_zoo, examples)
    _, checkpointed, _ = flow_policy(world, tiny_zoo, examples, checkpointing=True)
    assert checkpointed.get_base_model().is_gradient_checkpointing
    batch = dpo_batch(encoded)
    assert_same_gradients(gradients(plain, lambda model: dpo_loss(model, batch, torch.float32)),
                          gradients(checkpointed, lambda model: dpo_loss(model, batch, torch.float32)))


def test_sft_and_dpo_commands_record_dtype_and_checkpointing(run_vpt, world, tiny_zoo):
    from safetensors import safe_open

    for stage, data in (("sft", ["--data", world / "videos.parquet"]), ("dpo", ["--prefs", world / "prefs.parquet",
                                                                                "--dim", "vq"])):
        out = world / f"{stage}-bf16"
        result = run_vpt([stage, "-m", tiny_zoo, *data, "--max-steps", "1", "--dtype", "bf16",
                          "--gradient-checkpointing", "--cache", world / "cache", "-o", out, "-q"])
        assert result.exit_code == 0, result.stderr
        record = json.loads((out / "policy.json").read_text())
        assert (record["dtype"], record["gradient_checkpointing"]) == ("bf16", True)
        with safe_open(str(out / "adapter_model.safetensors"), "pt") as weights:
            assert {weights.get_tensor(key).dtype for key in weights.keys()} == {torch.float32}


# ------------------------------------------------------------------------------------------------ grpo
@pytest.fixture(scope="module")
def rollouts(run_vpt, tiny_zoo, world):
    """Rollouts sampled in bf16 (2 prompts x 2) and their brightness scores."""
    (world / "prompts.txt").write_text("a red ball\na white ring\n")
    out = world / "r-bf16"
    result = run_vpt(["sample-rollouts", "-m", tiny_zoo, "--prompts", world / "prompts.txt", "-o", out, "-g", "2",
                      "--steps", "3", "--guidance", "1", *SIZE, "--dtype", "bf16", "-q"])
    assert result.exit_code == 0, result.stderr
    result = run_vpt(["score", out / "rollouts.parquet", "-m", "brightness", "-o", world / "r-bf16.scores.parquet",
                      "-q"])
    assert result.exit_code == 0, result.stderr
    return out


def grpo_setup(tiny_zoo, rollouts, dtype=torch.float32, checkpointing=False):
    from vpt.stages.grpo import (GrpoLoss, GrpoOptions, GrpoState, RolloutSteps, compute_advantages,
                                 load_step_inputs, trained_blocks)
    from vpt.models.wan import wan_dtype

    options = GrpoOptions(reward={"score": 1.0})
    inputs = load_step_inputs(policy=None, init=str(tiny_zoo), model=None, rollouts=str(rollouts),
                              scores=[str(rollouts.with_name("r-bf16.scores.parquet"))], prior=None, options=options,
                              lora_rank=4, lora_alpha=8.0, dtype=dtype, gradient_checkpointing=checkpointing)
    rows = inputs.rollouts.rows
    advantages = compute_advantages(inputs.rewards, [row["group_id"] for row in rows],
                                    [row["prompt_id"] for row in rows], options, GrpoState(), None, "--prior")
    dataset = RolloutSteps(inputs.rollouts, trained_blocks(rows, 1.0, 0, 1), advantages.advantages,
                           advantages.auxiliary)
    loss = GrpoLoss(options, rows[0]["noise_level"], rows[0]["guidance"], wan_dtype(inputs.policy))
    return inputs, dataset[0], loss


def test_grpo_in_bf16_keeps_log_probs_and_loss_float32(tiny_zoo, rollouts):
    from vpt.algo.flow_sde import gaussian_log_prob

    inputs, batch, loss_fn = grpo_setup(tiny_zoo, rollouts, torch.bfloat16)
    assert_precision(inputs.policy, wan_kept_in_float32())
    assert (inputs.policy_info["dtype"], inputs.policy_info["gradient_checkpointing"]) == ("bf16", False)
    with torch.no_grad():
        mean, std = loss_fn.step_mean_std(inputs.policy, batch)
    log_prob = gaussian_log_prob(batch.x_next, mean, std)
    assert log_prob.dtype == torch.float32 and batch.old_log_prob.dtype == torch.float32
    # the sampler ran the same bf16 transformer on the same contiguous batch: the recorded log-probs, to the bit
    # (with its prompt embeddings expanded rather than repeated, bf16 took another matmul path: 7.7e-5 apart)
    torch.testing.assert_close(log_prob, batch.old_log_prob, rtol=0, atol=0)
    loss, metrics = loss_fn(inputs.policy, batch)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert float(metrics["ratio_mean"]) == 1.0


def test_grpo_gradients_equal_with_checkpointing(tiny_zoo, rollouts):
    plain, batch, loss_fn = grpo_setup(tiny_zoo, rollouts)
    checkpointed, _, _ = grpo_setup(tiny_zoo, rollouts, checkpointing=True)
    assert checkpointed.policy.get_base_model().is_gradient_checkpointing
    assert checkpointed.policy_info["gradient_checkpointing"] is True
    assert_same_gradients(gradients(plain.policy, lambda model: loss_fn(model, batch)[0]),
                          gradients(checkpointed.policy, lambda model: loss_fn(model, batch)[0]))


def test_grpo_step_command_runs_in_bf16(run_vpt, tiny_zoo, rollouts):
    out = rollouts.with_name("p-bf16")
    result = run_vpt(["grpo-step", "--init", tiny_zoo, "--rollouts", rollouts, "--scores",
                      rollouts.with_name("r-bf16.scores.parquet"), "--dtype", "bf16", "--gradient-checkpointing",
                      "--lora-rank", "4", "-o", out, "-q"])
    assert result.exit_code == 0, result.stderr
    record = json.loads((out / "policy.json").read_text())
    assert (record["dtype"], record["gradient_checkpointing"]) == ("bf16", True)


# ------------------------------------------------------------------------------------------------ videoreward
def videoreward(tiny_zoo, dtype="fp32", checkpointing=False):
    from vpt.stages.reward import prepare_model, start_videoreward

    start = start_videoreward(str(tiny_zoo), lora_rank=4, lora_alpha=8.0, dtype=dtype,
                              gradient_checkpointing=checkpointing)
    return prepare_model(start.model, start.options, seed=0).train(), start.options


def videoreward_batch(small_prefs_world, model, options):
    from vpt.stages.reward import VideoRewardTask, read_preferences

    data = read_preferences(small_prefs_world(4, 4, 0) / "prefs.parquet", model.sampling)
    task = VideoRewardTask(model, data, [0, 1, 2, 3], [], options)
    return task, task.collate([0, 1])


def test_videoreward_in_bf16_trains_float32_parts_on_a_bf16_language_model(tiny_zoo, small_prefs_world):
    model, options = videoreward(tiny_zoo, "bf16")
    assert options.to_dict()["dtype"] == "bf16"
    assert_precision(model)
    task, batch = videoreward_batch(small_prefs_world, model, options)
    loss, _ = task.loss_fn(model, batch)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    rows = model.qwen.get_input_embeddings().weight.grad
    assert rows.dtype == torch.float32 and rows[list(model.reward_token_ids)].abs().sum() > 0


def test_videoreward_gradients_equal_with_checkpointing(tiny_zoo, small_prefs_world):
    plain, options = videoreward(tiny_zoo)
    checkpointed, _ = videoreward(tiny_zoo, checkpointing=True)
    assert checkpointed.qwen.is_activation_checkpointing and not plain.qwen.is_activation_checkpointing
    assert options.lora_dropout > 0  # the recomputation must draw the forward's dropout masks again
    task, batch = videoreward_batch(small_prefs_world, plain, options)
    assert_same_gradients(gradients(plain, lambda model: task.loss_fn(model, batch)[0]),
                          gradients(checkpointed, lambda model: task.loss_fn(model, batch)[0]))


# ------------------------------------------------------------------------------------------------ latent reward
def test_latent_reward_trunk_trains_in_float32_cut_from_a_bf16_generator(tiny_zoo):
    from vpt.models.latent_reward import cut_generator
    from vpt.models.loading import load_wan_transformer

    model = cut_generator(load_wan_transformer(tiny_zoo, dtype=torch.bfloat16), 2, ["vq"], seed=0)
    assert {parameter.dtype for parameter in model.parameters()} == {torch.float32}


def test_latent_reward_gradients_equal_with_checkpointing(world, tiny_zoo):
    from vpt.encoding.cache import EncodedCache
    from vpt.models.latent_reward import cut_generator
    from vpt.models.loading import load_wan_pipeline, resolve_wan_directory
    from vpt.stages.examples import encode_examples
    from vpt.stages.latent_reward import LatentRewardOptions, LatentRewardTask, pair_examples
    from torch.utils.data import default_collate

    examples, dimensions = pair_examples([str(world / "prefs.parquet")], ("vq",))
    pipe = load_wan_pipeline(tiny_zoo)
    encoded = encode_examples(examples.examples, pipe, resolve_wan_directory(tiny_zoo), EncodedCache(world / "cache"),
                              None, quiet=True)
    items = LatentItems(encoded, NoiseOptions(seed=1))
    batch = default_collate([items[index] for index in range(2)])
    plain, checkpointed = (cut_generator(pipe.transformer, 2, dimensions, seed=0).train() for _ in range(2))
    checkpoint_activations(checkpointed.trunk)
    assert checkpointed.trunk.is_gradient_checkpointing and not plain.trunk.is_gradient_checkpointing
    task = LatentRewardTask(LatentRewardOptions(dimensions=dimensions))
    assert_same_gradients(gradients(plain, lambda model: task(model, batch)[0]),
                          gradients(checkpointed, lambda model: task(model, batch)[0]))


def test_train_reward_latent_runs_in_bf16_and_records_it(run_vpt, world, tiny_zoo):
    out = world / "latent-bf16"
    result = run_vpt(["train-reward", "--kind", "latent", "-m", tiny_zoo, "--data", world / "prefs.parquet",
                      "--dims", "vq", "--blocks", "1", "--max-steps", "1", "--eval-fraction", "0", "--dtype", "bf16",
                      "--gradient-checkpointing", "--cache", world / "cache", "-o", out, "-q"])
    assert result.exit_code == 0, result.stderr
    options = json.loads((out / "reward_training.json").read_text())["options"]
    assert (options["dtype"], options["gradient_checkpointing"]) == ("bf16", True)
