"""--init-lora: a Wan LoRA without policy.json (peft's layout, as flow_grpo saves it, or diffusers') is loaded as
exactly the LoRA diffusers and peft load, trains with sft and grpo-step like a new LoRA, and the checkpoint it
writes is a normal policy checkpoint (--policy continues it) with a model card that shows no local path."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file, save_file

from vpt.models.loading import load_wan_transformer, policy_digest

RANK, ALPHA = 4, 8.0
TARGETS = ["to_q", "to_v", "ffn.net.2"]
ROLLOUTS = ["--frames", "9", "--height", "32", "--width", "32", "--steps", "4", "--guidance", "3", "-g", "2",
            "--seed", "5", "-q"]


def random_lora(zoo, seed: int, **options):
    """A peft LoRA on the zoo's transformer whose A and B are random (so it changes the output)."""
    from vpt.train.lora import apply_lora

    model = apply_lora(load_wan_transformer(zoo), TARGETS, RANK, ALPHA, **options)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if ".lora_" in name:
                parameter.copy_(0.3 * torch.randn(parameter.shape, generator=generator))
    return model


def diffusers_layers(model) -> dict:
    from peft import get_peft_model_state_dict

    return {key.removeprefix("base_model.model."): value for key, value in get_peft_model_state_dict(model).items()}


@pytest.fixture(scope="module")
def loras(tiny_zoo, tmp_path_factory) -> Path:
    """peft/: a peft adapter (alpha 8 != rank 4) whose config names its base model by a local path, as flow_grpo's
    do; peft-twin/: the same adapter in diffusers' layout with its alpha in the adapter metadata; diffusers/: a
    diffusers LoRA without metadata (alpha = rank) and with mixed ranks (ffn.net.2 has rank 2)."""
    from diffusers import WanPipeline

    root = tmp_path_factory.mktemp("loras")
    peft = random_lora(tiny_zoo, 1)
    peft.save_pretrained(root / "peft")
    config = json.loads((root / "peft" / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = "/data/models/Wan2.1-T2V-1.3B-Diffusers"
    (root / "peft" / "adapter_config.json").write_text(json.dumps(config))
    WanPipeline.save_lora_weights(root / "peft-twin", transformer_lora_layers=diffusers_layers(peft),
                                  transformer_lora_adapter_metadata={"r": RANK, "lora_alpha": ALPHA,
                                                                     "target_modules": TARGETS})
    mixed = random_lora(tiny_zoo, 2, rank_pattern={"ffn.net.2": 2})
    WanPipeline.save_lora_weights(root / "diffusers", transformer_lora_layers=diffusers_layers(mixed))
    return root


def transformer_output(module) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    inputs = dict(hidden_states=torch.randn(1, 16, 3, 4, 4, generator=generator), timestep=torch.tensor([500.0]),
                  encoder_hidden_states=torch.randn(1, 8, 32, generator=generator), return_dict=False)
    with torch.no_grad():
        return module(**inputs)[0]


def diffusers_output(zoo, lora) -> tuple[torch.Tensor, torch.Tensor]:
    """The transformer's output without and with diffusers' WanPipeline.load_lora_weights(lora)."""
    from diffusers import WanPipeline

    pipe = WanPipeline.from_pretrained(zoo / "wan", local_files_only=True)
    base = transformer_output(pipe.transformer)
    pipe.load_lora_weights(lora)
    return base, transformer_output(pipe.transformer)


LAYOUTS = {  # layout: (path in loras, alpha, where alpha came from)
    "diffusers": ("diffusers", RANK, "the rank: none saved (diffusers' convention)"),
    "diffusers file": ("diffusers/pytorch_lora_weights.safetensors", RANK,
                       "the rank: none saved (diffusers' convention)"),
    "diffusers with metadata": ("peft-twin", ALPHA, "the adapter metadata (lora_adapter_metadata)"),
    "peft": ("peft", ALPHA, "adapter_config.json"),
}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_an_init_lora_is_exactly_the_lora_diffusers_and_peft_load(loras, tiny_zoo, layout):
    from peft import PeftModel

    from vpt.train.policy import policy_source

    name, alpha, alpha_source = LAYOUTS[layout]
    path = loras / name
    source = policy_source(str(tiny_zoo), None, str(path))
    policy = source.open()
    assert source.parent == f"{path.resolve()}#{policy_digest(path)}" and source.checkpoint is None
    trainable = [key for key, parameter in policy.named_parameters() if parameter.requires_grad]
    assert trainable and all(".lora_" in key for key in trainable)
    ours = transformer_output(policy)
    # diffusers' Wan loader reads only diffusers' layout (it skips a peft adapter's base_model.model.* keys), so the
    # peft adapter is compared with its twin in that layout, alpha in the adapter metadata — and with peft's loader
    base, theirs = diffusers_output(tiny_zoo, loras / "peft-twin" if layout == "peft" else path)
    assert (ours - base).abs().max() > 1e-2
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)
    if layout == "peft":
        peft = PeftModel.from_pretrained(load_wan_transformer(tiny_zoo), str(path))
        torch.testing.assert_close(ours, transformer_output(peft), rtol=0, atol=1e-6)
    setup = source.describe()["init_lora"]
    assert (setup["format"], setup["rank"], setup["alpha"], setup["alpha_source"], setup["modules"]) == \
        ("peft" if layout == "peft" else "diffusers", RANK, alpha, alpha_source, 10)
    if name.startswith("diffusers"):  # the mixed ranks, inferred from the weights
        assert setup["rank_pattern"] == {"^blocks.0.ffn.net.2": 2, "^blocks.1.ffn.net.2": 2}


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    from vpt.toyworld import write_toy_videos

    root = tmp_path_factory.mktemp("init-lora-sft")
    write_toy_videos(root, n=2, seed=0, frames=9, height=32, width=32)
    return root


def sft(run_vpt, clips, out, *extra, code=0):
    result = run_vpt(["sft", "--data", clips / "videos.parquet", "--max-steps", "1", "--lr", "1e-12", "--cache",
                      clips / "cache", "-o", clips / out, "-q", *extra])
    assert result.exit_code == code, result.stderr
    return clips / out if code == 0 else result.stderr


def assert_public(card: str, *paths: Path) -> None:
    """No local path in ``card``: none of ``paths``, nor the root of any of them (``/tmp``, ``/home``...)."""
    for path in paths:
        resolved = path.resolve()
        for text in {str(path), str(resolved)}:
            assert text not in card
        for root in {"/" + path.parts[1], "/" + resolved.parts[1]}:
            assert root not in card, root


def peft_weights(directory: Path) -> dict:
    return load_file(str(directory / "adapter_model.safetensors"))


def test_sft_trains_an_init_lora_into_a_policy_checkpoint_that_policy_continues(run_vpt, tiny_zoo, loras, clips,
                                                                                tmp_path):
    from peft import PeftModel

    lora = loras / "diffusers"
    out = sft(run_vpt, clips, "from-lora", "--model", tiny_zoo, "--init-lora", lora)
    info = json.loads((out / "policy.json").read_text())
    assert (info["stage"], info["step"], info["sft"]["lora"]) == ("sft", 1, "parent")
    assert info["parent"] == f"{lora.resolve()}#{policy_digest(lora)}"
    assert info["lineage"] == [{"stage": "init-lora", "format": "diffusers", "digest": policy_digest(lora),
                                "name": "diffusers"}]
    assert (info["init_lora"]["rank"], info["init_lora"]["alpha"]) == (RANK, RANK)
    command = info["command"]
    assert command[:2] == ["vpt", "sft"] and command[command.index("--init-lora") + 1] == str(lora)
    # training started as the LoRA itself (a learning rate too small to move it)
    converted = {key.replace("transformer.", "base_model.model.", 1): value
                 for key, value in load_file(str(lora / "pytorch_lora_weights.safetensors")).items()}
    trained = peft_weights(out)
    assert trained.keys() == converted.keys()
    for key, value in converted.items():
        torch.testing.assert_close(trained[key], value, rtol=0, atol=1e-9)

    card = (out / "README.md").read_text()
    assert_public(card, tiny_zoo, lora, clips, tmp_path)
    assert card.startswith("---\nbase_model: wan\nlibrary_name: peft\ntags:\n- vpt\n- sft\n- lora\n- text-to-video\n"
                           "---\n")
    assert "- **Stage:** sft (step 1)" in card and "2. init LoRA (diffusers format) `diffusers`" in card
    assert re.search(r"vpt sft --data videos\.parquet .*--model tiny-v\d+-seed0 .*--init-lora diffusers", card)
    assert "PeftModel.from_pretrained" in card and 'load_lora_weights("from-lora")' in card
    config_text = (out / "adapter_config.json").read_text()
    config = json.loads(config_text)
    assert config["base_model_name_or_path"] == "wan" and config["target_modules"] == sorted(config["target_modules"])
    assert config_text == json.dumps(config, indent=2, sort_keys=True) + "\n"
    # a normal policy checkpoint: peft (with the generator given) and diffusers load the same policy
    base, loaded = diffusers_output(tiny_zoo, out)
    peft = transformer_output(PeftModel.from_pretrained(load_wan_transformer(tiny_zoo), str(out)))
    torch.testing.assert_close(loaded, peft, rtol=0, atol=1e-6)
    assert (peft - base).abs().max() > 1e-2

    after = sft(run_vpt, clips, "after", "--policy", out)
    info_after = json.loads((after / "policy.json").read_text())
    assert info_after["parent"] == f"{out.resolve()}#{policy_digest(out)}" and info_after["sft"]["lora"] == "parent"
    assert info_after["lineage"] == [{"stage": "sft", "digest": policy_digest(out), "name": "from-lora"},
                                     *info["lineage"]]
    for key, value in peft_weights(out).items():
        torch.testing.assert_close(peft_weights(after)[key], value, rtol=0, atol=1e-9)
    card = (after / "README.md").read_text()
    assert_public(card, tiny_zoo, lora, clips, tmp_path)
    assert f"2. sft policy `from-lora` (adapter #{policy_digest(out)})" in card
    assert f"3. init LoRA (diffusers format) `diffusers` (adapter #{policy_digest(lora)})" in card
    assert "4. the generator `wan`" in card


def test_dpo_from_an_init_lora_takes_it_as_the_starting_policy_and_reference(run_vpt, tiny_zoo, loras, clips):
    from vpt.io.tables import read_table, write_table
    from vpt.train.policy import read_policy_metrics

    a, b = read_table(clips / "videos.parquet", "videos").to_pylist()[:2]
    write_table([{"pair_id": "p0", "path_a": a["path"], "path_b": b["path"], "prompt": a["prompt"], "overall": "a"}],
                clips / "prefs.parquet", "prefs")
    runs = {}
    for reference in ("policy", "base"):
        result = run_vpt(["dpo", "--model", tiny_zoo, "--init-lora", loras / "peft", "--prefs", clips / "prefs.parquet",
                          "--reference", reference, "--max-steps", "1", "--log-every", "1", "--cache", clips / "cache",
                          "-o", clips / f"dpo-{reference}", "-q"])
        assert result.exit_code == 0, result.stderr
        runs[reference] = read_policy_metrics(clips / f"dpo-{reference}")
    policy, base = runs["policy"], runs["base"]
    # the default reference is the LoRA as it starts; --reference base is the generator, which the LoRA differs from
    assert policy[(1, "reference_chosen_error")] == policy[(1, "chosen_error")]
    assert policy[(1, "reference_rejected_error")] == policy[(1, "rejected_error")]
    assert base[(1, "chosen_error")] == policy[(1, "chosen_error")]
    assert base[(1, "reference_chosen_error")] != base[(1, "chosen_error")]
    info = json.loads((clips / "dpo-policy" / "policy.json").read_text())
    assert (info["stage"], info["dpo"]["lora"], info["init_lora"]["format"]) == ("dpo", "parent", "peft")
    assert info["parent"] == f"{(loras / 'peft').resolve()}#{policy_digest(loras / 'peft')}"
    assert "\n- dpo\n" in (clips / "dpo-policy" / "README.md").read_text()


def test_bad_init_loras_get_one_line(run_vpt, tiny_zoo, loras, clips, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    lacking, shape = tmp_path / "lacking.safetensors", tmp_path / "shape"
    save_file({"transformer.blocks.0.attn1.to_zz.lora_A.weight": torch.zeros(2, 24),
               "transformer.blocks.0.attn1.to_zz.lora_B.weight": torch.zeros(24, 2)}, str(lacking))
    shape.mkdir()
    save_file({"transformer.blocks.0.attn1.to_q.lora_A.weight": torch.zeros(2, 13),
               "transformer.blocks.0.attn1.to_q.lora_B.weight": torch.zeros(24, 2)},
              str(shape / "pytorch_lora_weights.safetensors"))
    wan = (tiny_zoo / "wan").resolve()
    cases = [
        (["--model", tiny_zoo, "--init-lora", loras / "peft", "--policy", loras / "peft"],
         "--init-lora and --policy exclude each other: --policy continues a vpt checkpoint, --init-lora starts a new "
         "policy from any LoRA"),
        (["--init-lora", loras / "peft"],
         "--init-lora needs the generator: pass --model WAN_DIR (a LoRA without policy.json does not name one)"),
        (["--model", tiny_zoo, "--init-lora", empty],
         f"{empty}: not a LoRA policy checkpoint (adapter_config.json and adapter_model.safetensors expected) nor a "
         "diffusers LoRA (pytorch_lora_weights.safetensors, or a .safetensors file of one); give a checkpoint "
         "written by grpo-step, dpo or sft, or a peft or diffusers Wan LoRA"),
        (["--model", tiny_zoo, "--init-lora", lacking],
         f"{lacking}: this LoRA does not fit the generator {wan} (it adapts 1 module the transformer lacks: "
         "blocks.0.attn1.to_zz); use the generator it was trained on"),
        (["--model", tiny_zoo, "--init-lora", shape],
         f"{shape}: this LoRA does not fit the generator {wan} (size mismatch for "
         "base_model.model.blocks.0.attn1.to_q.lora_A.default.weight: copying a param with shape torch.Size([2, 13]) "
         "from checkpoint, the shape in current model is torch.Size([2, 24])); use the generator it was trained on"),
        (["--policy", loras / "peft"],
         f"{loras / 'peft' / 'policy.json'}: cannot read the policy record ([Errno 2] No such file or directory: "
         f"'{loras / 'peft' / 'policy.json'}'); give a checkpoint written by grpo-step, dpo or sft, start from the "
         "generator, or start from a LoRA without policy.json with --init-lora"),
    ]
    for extra, message in cases:
        assert sft(run_vpt, clips, "bad", *extra, code=2) == f"vpt: error: {message}\n", extra
        assert not (clips / "bad").exists() and not (clips / "bad.run").exists()
    for extra, message in [
        (["--init", tiny_zoo, "--init-lora", loras / "peft", "--policy", loras / "peft"],
         "--init-lora and --policy exclude each other: --policy continues a vpt checkpoint, --init-lora starts a new "
         "policy from any LoRA"),
        (["--init-lora", loras / "peft"],
         "--init-lora needs the generator: pass --init WAN_DIR (a LoRA without policy.json does not name one)"),
    ]:
        result = run_vpt(["grpo-step", "--rollouts", tmp_path / "none", "--scores", tmp_path / "none.parquet",
                          "-o", tmp_path / "out", "-q", *extra])
        assert (result.exit_code, result.stderr) == (2, f"vpt: error: {message}\n"), extra


def test_grpo_step_trains_an_init_lora_on_the_rollouts_it_sampled(run_vpt, tiny_zoo, loras, tmp_path):
    lora = loras / "diffusers"
    (tmp_path / "prompts.txt").write_text("a red ball bouncing\n")
    for command in (["sample-rollouts", "-m", tiny_zoo, "--policy", lora, "--prompts", tmp_path / "prompts.txt",
                     "-o", tmp_path / "r", *ROLLOUTS],
                    ["score", tmp_path / "r" / "rollouts.parquet", "-m", "brightness", "-o", tmp_path / "s.parquet",
                     "-q"]):
        result = run_vpt(command)
        assert result.exit_code == 0, result.stderr
    step = ["grpo-step", "--init", tiny_zoo, "--rollouts", tmp_path / "r", "--scores", tmp_path / "s.parquet",
            "--reward", "brightness", "--lr", "1e-2", "-q"]
    # rollouts of one LoRA do not train another
    result = run_vpt([*step, "--init-lora", loras / "peft", "-o", tmp_path / "other"])
    assert (result.exit_code, result.stderr) == (
        2, f"vpt: error: {tmp_path / 'r'}: row 1: sampled by {lora.resolve()}#{policy_digest(lora)}, not by the "
           f"policy #{policy_digest(loras / 'peft')}; GRPO trains the policy that sampled the rollouts "
           "(sample-rollouts --policy with this checkpoint)\n")
    result = run_vpt([*step, "--init-lora", lora, "-o", tmp_path / "p1"])
    assert result.exit_code == 0, result.stderr
    rows = pq.read_table(tmp_path / "p1" / "metrics.parquet").to_pylist()
    table = {(row["step"], row["name"]): row["value"] for row in rows}
    # the trainable policy is the sampling LoRA exactly: the recomputed log-probs equal the recorded ones
    assert table[(None, "ratio_min")] == 1.0 and table[(None, "ratio_max")] == 1.0
    info = json.loads((tmp_path / "p1" / "policy.json").read_text())
    assert (info["stage"], info["parent"]) == ("grpo", f"{lora.resolve()}#{policy_digest(lora)}")
    assert info["lineage"][0]["stage"] == "init-lora" and info["init_lora"]["format"] == "diffusers"
    card = (tmp_path / "p1" / "README.md").read_text()
    assert_public(card, tiny_zoo, lora, tmp_path)
    assert "- grpo\n" in card and "vpt grpo-step --init tiny-v" in card and "--init-lora diffusers" in card
