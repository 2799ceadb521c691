"""VideoReward (VideoAlign) on a tiny Qwen2-VL: prompt layout, padding, positions, heads, checkpoints, scorer."""

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from vpt.errors import VptError
from vpt.io.video import DecodedVideo, FrameSampling, VideoInfo
from vpt.models import videoalign, zoo
from vpt.models import videoreward as vr
from vpt.models.videoalign import export_videoalign
from vpt.models.videoreward import REWARD_TOKENS, VideoRewardConfig, current_to_official_key, official_to_current_key
from vpt.models.videoreward_checkpoint import load_videoreward, save_videoreward
from vpt.models.zoo import build_tiny_videoreward
from vpt.rewards.videoreward import VideoRewardScorer, load_videoreward_scorer

SMALL = {"min_pixels": 56 * 56}  # tiny frames stay tiny (the default minimum is 128 * 28 * 28 pixels)
PROMPT = "a red circle moving slowly to the left on a dark background"
OTHER = "a blue square standing still on a very bright background"
HINT = "build one with `vpt zoo tiny DIR`"


def clip(seed, count=8, height=56, width=56):
    return np.random.default_rng(seed).integers(0, 256, (count, height, width, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def model():
    return build_tiny_videoreward(seed=0).with_config(**SMALL)


@pytest.fixture(scope="module")
def videos():
    return [clip(1), clip(2, count=6, height=60, width=90)]


@pytest.fixture(scope="module")
def saved(model, tmp_path_factory):
    """The tiny model in our layout and both VideoAlign layouts."""
    root = tmp_path_factory.mktemp("videoreward")
    save_videoreward(model, root / "ours")
    export_videoalign(model, root / "official-full", layout="full")
    export_videoalign(model, root / "official-adapter", layout="adapter", step=7)
    return root


def scores(model, videos, prompts):
    return model.raw_scores(videos, prompts)


def test_forward_shapes_and_determinism(model, videos):
    batch = model.processor(videos, [PROMPT, OTHER])
    assert batch.input_ids.dtype == torch.long and batch.input_ids.ndim == 2
    assert batch.attention_mask.shape == batch.input_ids.shape == batch.mm_token_type_ids.shape
    assert batch.pixel_values_videos.shape == (4 * 4 * 4 + 3 * 4 * 6, 3 * 2 * 14 * 14)
    assert batch.video_grid_thw.tolist() == [[4, 4, 4], [3, 4, 6]]
    assert batch.mm_token_type_ids.sum(dim=1).tolist() == [2 * 16, 2 * 18]  # t*h*w/4 video tokens, type 2
    with torch.no_grad():
        raw = model(**batch.model_inputs())
    assert raw.shape == (2, 3) and raw.dtype == torch.float32 and torch.isfinite(raw).all()
    again = build_tiny_videoreward(seed=0).with_config(**SMALL)
    other = build_tiny_videoreward(seed=1).with_config(**SMALL)
    assert torch.equal(scores(again, videos, [PROMPT, OTHER]), scores(model, videos, [PROMPT, OTHER]))
    assert not torch.allclose(scores(other, videos, [PROMPT, OTHER]), scores(model, videos, [PROMPT, OTHER]))
    assert model.sampling == FrameSampling(mode="fps", fps=2.0, min_frames=4, max_frames=768)
    assert not model.training


def test_reward_tokens_precede_the_prompt(model, videos):
    tokenizer = model.tokenizer
    batch = model.processor(videos[:1], [PROMPT])
    ids = batch.input_ids[0].tolist()
    vq, mq, ta = batch.reward_positions[0].tolist()
    assert [ids[vq], ids[mq], ids[ta]] == list(tokenizer.convert_tokens_to_ids(list(REWARD_TOKENS)))
    video = [i for i, t in enumerate(ids) if t == model.qwen.config.video_token_id]
    prompt_ids = tokenizer(" " + PROMPT, add_special_tokens=False)["input_ids"]
    starts = [i for i in range(len(ids)) if ids[i:i + len(prompt_ids)] == prompt_ids]
    assert len(starts) == 1
    assert max(video) < vq < mq < starts[0] < ta  # video, VQ, MQ, prompt, TA
    text = tokenizer.decode(ids)
    assert text.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
                           "<|vision_start|><|video_pad|>")
    assert text.endswith("<|TA_reward|>\nEND\n<|im_end|>\n<|im_start|>assistant\n")


def test_prompt_changes_ta_but_not_vq_mq(model, videos):
    first, second = scores(model, videos[:1], [PROMPT]), scores(model, videos[:1], [OTHER])
    assert torch.allclose(first[:, :2], second[:, :2], atol=1e-6, rtol=0)  # context-agnostic VQ, MQ
    assert (first[:, 2] - second[:, 2]).abs().item() > 1e-4  # context-aware TA
    other_video = scores(model, videos[1:], [PROMPT])
    assert (other_video[:, :2] - first[:, :2]).abs().max().item() > 1e-4  # all three see the video


@pytest.mark.parametrize("position_ids", ["sequential", "mrope"])
@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_padded_batch_equals_single_forwards(model, videos, position_ids, padding_side):
    model.with_config(position_ids=position_ids, padding_side=padding_side)
    try:
        prompts = [PROMPT, OTHER + " with many more words at the end of it"]
        batch = model.processor(videos, prompts)
        assert (batch.attention_mask.sum(1)[0] != batch.attention_mask.sum(1)[1]).item()  # lengths differ
        together = scores(model, videos, prompts)
        alone = torch.cat([scores(model, [v], [p]) for v, p in zip(videos, prompts)])
    finally:
        model.with_config(position_ids="sequential", padding_side="right")
    assert torch.allclose(together, alone, atol=1e-5, rtol=0)


def test_sequential_and_mrope_positions_differ(model, videos):
    sequential = scores(model, videos, [PROMPT, OTHER])
    model.with_config(position_ids="mrope")
    try:
        mrope = scores(model, videos, [PROMPT, OTHER])
    finally:
        model.with_config(position_ids="sequential")
    assert (sequential - mrope).abs().max().item() > 1e-4


def test_per_dim_head_takes_the_diagonal(videos):
    per_dim = build_tiny_videoreward(seed=3, config=VideoRewardConfig(head="per_dim", **SMALL))
    assert per_dim.head.weight.shape == (3, 64)
    batch = per_dim.processor(videos, [PROMPT, OTHER])
    with torch.no_grad():
        raw = per_dim(**batch.model_inputs())
        hidden = per_dim.hidden_states(batch.input_ids, batch.attention_mask, batch.pixel_values_videos,
                                       batch.video_grid_thw, batch.mm_token_type_ids)
    for b in range(2):
        for d, position in enumerate(batch.reward_positions[b].tolist()):
            expected = hidden[b, position] @ per_dim.head.weight[d]
            assert torch.allclose(raw[b, d], expected, atol=1e-6)


def test_normalise_uses_release_stats(model):
    raw = np.array([[3.6757, 1.1646, 2.8105], [3.6757 + 2.2476, 1.1646 - 1.3811, 2.8105 + 2 * 2.5121]])
    expected = np.array([[0, 0, 0, 0], [1, -1, 2, 2]], dtype=np.float64)
    assert np.allclose(model.normalise(raw), expected, atol=1e-12)
    assert torch.allclose(model.normalise(torch.tensor(raw)), torch.tensor(expected), atol=1e-12)


def test_same_weights_in_every_layout_score_identically(model, videos, saved):
    expected = scores(model, videos, [PROMPT, OTHER])
    for name in ("ours", "official-full", "official-adapter"):
        loaded = load_videoreward(saved / name).with_config(**SMALL)
        assert loaded.has_lora and loaded.config.position_ids == "sequential"
        assert loaded.config.norm_mean == vr.RELEASE_NORM_MEAN and loaded.config.norm_std == vr.RELEASE_NORM_STD
        assert torch.equal(scores(loaded, videos, [PROMPT, OTHER]), expected), name
    checkpoint = saved / "official-adapter" / "checkpoint-7"
    assert torch.equal(scores(load_videoreward(checkpoint).with_config(**SMALL), videos, [PROMPT, OTHER]), expected)
    merged = load_videoreward(saved / "ours").merge_lora()
    save_videoreward(merged, saved / "merged")
    assert json.loads((saved / "merged" / "vpt_videoreward.json").read_text())["weights"]["kind"] == "full"
    reloaded = load_videoreward(saved / "merged").with_config(**SMALL)
    assert not reloaded.has_lora
    assert torch.allclose(scores(reloaded, videos, [PROMPT, OTHER]), expected, atol=1e-5, rtol=0)


def test_official_files_have_videoalign_keys(saved):
    full = torch.load(saved / "official-full" / "checkpoint-1" / "model.pth", weights_only=True)
    for key in ("base_model.model.model.embed_tokens.weight",
                "base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight",
                "base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight",
                "base_model.model.visual.merger.mlp.0.weight", "base_model.model.lm_head.weight",
                "base_model.model.rm_head.weight", "base_model.model.model.norm.weight"):
        assert key in full, key
    assert not any("language_model" in k or k.startswith("base_model.model.model.visual") for k in full)
    checkpoint = saved / "official-adapter" / "checkpoint-7"
    adapter = load_file(checkpoint / "adapter_model.safetensors")
    assert "base_model.model.model.layers.1.mlp.down_proj.lora_B.weight" in adapter
    assert all(".lora_" in k and ".default." not in k for k in adapter)
    non_lora = torch.load(checkpoint / "non_lora_state_dict.pth", weights_only=True)
    assert {k.split(".")[2] for k in non_lora} == {"visual", "model", "rm_head"}
    assert "base_model.model.model.embed_tokens.weight" in non_lora
    config = json.loads((saved / "official-adapter" / "model_config.json").read_text())
    assert config["model_config"]["output_dim"] == 1 and config["model_config"]["use_special_tokens"]
    assert config["inference_config"]["TA_std"] == 2.5121
    assert (checkpoint / "tokenizer" / "tokenizer.json").is_file()


def test_key_renaming_between_transformers_generations(model):
    pairs = {
        "model.embed_tokens.weight": "model.language_model.embed_tokens.weight",
        "model.layers.3.self_attn.q_proj.weight": "model.language_model.layers.3.self_attn.q_proj.weight",
        "model.layers.0.mlp.down_proj.lora_A.default.weight":
            "model.language_model.layers.0.mlp.down_proj.lora_A.default.weight",
        "model.norm.weight": "model.language_model.norm.weight",
        "visual.blocks.0.attn.qkv.weight": "model.visual.blocks.0.attn.qkv.weight",
        "visual.merger.mlp.2.bias": "model.visual.merger.mlp.2.bias",
        "lm_head.weight": "lm_head.weight",
    }
    for old, new in pairs.items():
        assert official_to_current_key(old) == new
        assert current_to_official_key(new) == old
        assert official_to_current_key(new) == new  # already current: unchanged
    for key in model.qwen.state_dict():
        assert official_to_current_key(current_to_official_key(key)) == key
    assert videoalign._insert_adapter_name("a.q_proj.lora_A.weight") == "a.q_proj.lora_A.default.weight"
    assert (videoalign._insert_adapter_name("a.embed_tokens.lora_embedding_B")
            == "a.embed_tokens.lora_embedding_B.default")
    assert videoalign._remove_adapter_name("a.q_proj.lora_B.default.weight") == "a.q_proj.lora_B.weight"


class NotATensor:
    pass


def test_pth_files_load_with_weights_only(saved, tmp_path):
    evil = tmp_path / "official"
    shutil.copytree(saved / "official-full", evil)
    torch.save({"rm_head.weight": torch.zeros(1), "payload": NotATensor()}, evil / "checkpoint-1" / "model.pth")
    with pytest.raises(VptError) as info:
        load_videoreward(evil)
    assert str(info.value).startswith(f"{evil / 'checkpoint-1' / 'model.pth'}: not a readable tensor state dict "
                                      "(torch.load weights_only=True: ")


def test_bad_checkpoint_directories(saved, tmp_path):
    missing = tmp_path / "nothing"
    with pytest.raises(VptError) as info:
        load_videoreward(missing)
    assert str(info.value) == f"{missing}: not a VideoReward checkpoint (no such directory); {HINT}"
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(VptError) as info:
        load_videoreward(empty)
    assert str(info.value) == (f"{empty}: not a VideoReward checkpoint (neither vpt_videoreward.json nor "
                               f"VideoAlign's model_config.json found); {HINT}")
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(saved / "official-full" / "model_config.json", bare / "model_config.json")
    (bare / "checkpoint-3").mkdir()
    with pytest.raises(VptError) as info:
        load_videoreward(bare)
    assert str(info.value) == (f"{bare}: VideoAlign checkpoint has no checkpoint-*/ folder with model.pth or "
                               "adapter_model.safetensors + non_lora_state_dict.pth")
    hub = tmp_path / "hub"
    shutil.copytree(saved / "official-adapter", hub)
    shutil.rmtree(hub / "base")
    config = json.loads((hub / "model_config.json").read_text())
    config["model_config"]["model_name_or_path"] = "Qwen/Qwen2-VL-2B-Instruct"
    (hub / "model_config.json").write_text(json.dumps(config))
    with pytest.raises(VptError) as info:
        load_videoreward(hub)
    assert str(info.value) == (f"{hub}: base model 'Qwen/Qwen2-VL-2B-Instruct' is not a local Qwen2-VL directory; "
                               "download it and pass base=DIR")
    assert load_videoreward(hub, base=saved / "official-adapter" / "base").has_lora


def test_scorer_reports_normalised_dimensions(saved, videos):
    scorer = load_videoreward_scorer(saved / "ours")
    scorer.model.with_config(**SMALL)
    assert isinstance(scorer, VideoRewardScorer) and scorer.needs_prompt and scorer.primary == "overall"
    assert scorer.dimensions == ("vq", "mq", "ta", "overall")
    assert scorer.sampling == FrameSampling(mode="fps", fps=2.0, min_frames=4, max_frames=768)
    info = VideoInfo(path="x.mp4", fps=8.0, frames=8, height=56, width=56)
    decoded = [DecodedVideo(frames=v, info=info, indices=np.arange(len(v))) for v in videos]
    result = scorer.score(decoded, [PROMPT, OTHER])
    raw = scorer.raw_scores(decoded, [PROMPT, OTHER])
    assert set(result) == set(scorer.dimensions) and all(v.dtype == np.float64 and v.shape == (2,)
                                                          for v in result.values())
    normalised = (raw - np.array(vr.RELEASE_NORM_MEAN)) / np.array(vr.RELEASE_NORM_STD)
    assert np.allclose(np.stack([result[d] for d in ("vq", "mq", "ta")], 1), normalised)
    assert np.allclose(result["overall"], normalised.sum(1))
    with pytest.raises(VptError, match="needs a text prompt for every video"):
        scorer.score(decoded, [PROMPT, None])


def test_zoo_components(tmp_path, videos):
    entries = zoo.write_zoo_videoreward(tmp_path, seed=0)
    assert set(entries) == {"videoreward", "videoreward-official"}
    assert (tmp_path / "videoreward" / "vpt_videoreward.json").is_file()
    assert (tmp_path / "videoreward-official" / "checkpoint-1" / "adapter_model.safetensors").is_file()
    ours = load_videoreward(tmp_path / entries["videoreward"]["path"]).with_config(**SMALL)
    official = load_videoreward(tmp_path / entries["videoreward-official"]["path"]).with_config(**SMALL)
    assert torch.equal(scores(ours, videos, [PROMPT, OTHER]), scores(official, videos, [PROMPT, OTHER]))
    meta = json.loads((tmp_path / "videoreward" / "vpt_videoreward.json").read_text())
    assert meta["weights"] == {"kind": "lora", "base": "base", "adapter": "adapter", "non_lora": "non_lora.safetensors"}


def test_gradients_reach_lora_and_head(videos):
    trainable = build_tiny_videoreward(seed=5).with_config(**SMALL).train()
    trainable.head.weight.requires_grad_(True)
    batch = trainable.processor(videos, [PROMPT, OTHER])
    trainable(**batch.model_inputs()).sum().backward()
    lora = [p for n, p in trainable.backbone.named_parameters() if "lora_A" in n]
    assert lora and all(p.grad is not None and p.grad.abs().sum() > 0 for p in lora)
    assert trainable.head.weight.grad.abs().sum() > 0
