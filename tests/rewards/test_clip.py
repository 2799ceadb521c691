"""vpt.rewards.clip: the score against an independent float64 computation (preprocessing by hand, the transformers
model run directly), the resize against a hand-written antialiased bicubic, CLIP and SigLIP checkpoints, the CLI.

The tiny zoo's CLIP is random, so no prompt matches any clip better than another: there is no toy-world attribute
for it to rank (on the toy world, matched prompts score above shuffled ones for fewer than half the clips)."""

from __future__ import annotations

import io

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from vpt.io.video import DecodedVideo, FrameSampling, decode
from vpt.models.clip_features import resize
from vpt.rewards.clip import load_clip
from vpt.toyworld import describe, render_clip, sample_attributes

CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073])
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711])


def video(frames: np.ndarray) -> DecodedVideo:
    return DecodedVideo(frames, None, np.arange(len(frames)))


def antialiased_bicubic_matrix(n: int, m: int, a: float = -0.5) -> np.ndarray:
    """``[m, n]`` weights of PIL's antialiased bicubic resize ``n -> m`` (``ImagingResample``: the Keys kernel
    with a = -0.5, stretched by the scale when shrinking, each row normalised to sum 1)."""
    def kernel(x):
        x = np.abs(x)
        return np.where(x <= 1, ((a + 2) * x - (a + 3)) * x * x + 1,
                        np.where(x < 2, (((x - 5) * x + 8) * x - 4) * a, 0.0))

    scale = n / m
    stretch = max(scale, 1.0)
    weights = np.zeros((m, n))
    for i in range(m):
        centre = (i + 0.5) * scale
        low, high = max(int(centre - 2 * stretch + 0.5), 0), min(int(centre + 2 * stretch + 0.5), n)
        taps = kernel((np.arange(low, high) - centre + 0.5) / stretch)
        weights[i, low:high] = taps / taps.sum()
    return weights


def hand_pixels(frames: np.ndarray, side: int, mean=CLIP_MEAN, std=CLIP_STD) -> np.ndarray:
    """float64 ``[T, 3, side, side]``: frames squashed to ``side x side`` (antialiased bicubic), /255, mean/std."""
    x = frames.astype(np.float64).transpose(0, 3, 1, 2)
    rows, columns = antialiased_bicubic_matrix(x.shape[2], side), antialiased_bicubic_matrix(x.shape[3], side)
    x = np.einsum("ih,tchw,jw->tcij", rows, x, columns) / 255.0
    return (x - np.asarray(mean)[:, None, None]) / np.asarray(std)[:, None, None]


def hand_score(model, tokenizer, frames: np.ndarray, prompt: str, siglip: bool = False, mean=CLIP_MEAN,
               std=CLIP_STD) -> float:
    """100 x cos(mean of normalised frame embeddings, text embedding), everything in float64."""
    pixels = torch.from_numpy(hand_pixels(frames, model.config.vision_config.image_size, mean, std))
    if siglip:
        tokens = tokenizer([prompt], padding="max_length", max_length=model.config.text_config.max_position_embeddings,
                           return_tensors="pt")
        text_inputs = {"input_ids": tokens["input_ids"]}
    else:
        text_inputs = dict(tokenizer([prompt], return_tensors="pt"))
    with torch.no_grad():
        image = model.get_image_features(pixel_values=pixels).pooler_output.numpy()
        text = model.get_text_features(**text_inputs).pooler_output.numpy()[0]
    mean_embedding = (image / np.linalg.norm(image, axis=1, keepdims=True)).mean(0)
    return float(100 * mean_embedding @ text / (np.linalg.norm(mean_embedding) * np.linalg.norm(text)))


@pytest.fixture(scope="module")
def scorer(tiny_zoo):
    return load_clip(str(tiny_zoo))


@pytest.fixture(scope="module")
def toy_videos():
    attributes = [sample_attributes(np.random.default_rng(seed), 8) for seed in range(6)]
    return [video(render_clip(attrs, 8, 40, 56)) for attrs in attributes], [describe(a) for a in attributes]


def test_declared_interface(scorer):
    assert (scorer.name, scorer.dimensions, scorer.primary) == ("clip", ("clip_score",), "clip_score")
    assert scorer.sampling == FrameSampling(mode="count", count=8)
    assert scorer.needs_prompt


def test_resize_is_antialiased_bicubic():
    frames = np.random.default_rng(0).integers(0, 256, (2, 48, 40, 3), dtype=np.uint8)
    for size in ((32, 32), (20, 56)):  # shrinking both sides; shrinking one, enlarging the other
        x = torch.from_numpy(frames).permute(0, 3, 1, 2).float()
        expected = np.einsum("ih,tchw,jw->tcij", antialiased_bicubic_matrix(48, size[0]),
                             frames.astype(np.float64).transpose(0, 3, 1, 2), antialiased_bicubic_matrix(40, size[1]))
        np.testing.assert_allclose(resize(x, size).double().numpy(), expected, atol=2e-3)
    same = torch.from_numpy(frames).permute(0, 3, 1, 2).float()
    assert resize(same, (48, 40)) is same


def test_score_equals_an_independent_float64_computation(scorer, tiny_zoo, toy_videos):
    from transformers import AutoTokenizer, CLIPModel

    videos, prompts = toy_videos
    model = CLIPModel.from_pretrained(tiny_zoo / "clip", dtype=torch.float64).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_zoo / "clip")
    expected = [hand_score(model, tokenizer, clip.frames, prompt) for clip, prompt in zip(videos, prompts)]
    scores = scorer.score(videos, prompts)["clip_score"]
    assert scores.dtype == np.float64 and scores.shape == (6,)
    np.testing.assert_allclose(scores, expected, rtol=0, atol=1e-4)
    assert np.ptp(expected) > 1.0  # the prompts and clips make a difference: the comparison is not vacuous


def test_one_prompt_scored_against_a_batch_equals_each_alone(scorer, toy_videos):
    videos, prompts = toy_videos
    together = scorer.score(videos, prompts)["clip_score"]
    alone = [scorer.score([clip], [prompt])["clip_score"][0] for clip, prompt in zip(videos, prompts)]
    np.testing.assert_allclose(together, alone, rtol=0, atol=1e-4)


def test_a_still_video_scores_as_its_frame(scorer, toy_videos):
    videos, prompts = toy_videos
    frame = videos[0].frames[:1]
    still = scorer.score([video(np.repeat(frame, 8, axis=0))], prompts[:1])["clip_score"][0]
    assert still == pytest.approx(scorer.score([video(frame)], prompts[:1])["clip_score"][0], abs=1e-4)


def test_siglip_checkpoint_pads_prompts_to_its_length(tiny_zoo, toy_videos):
    from transformers import AutoTokenizer, SiglipModel

    videos, prompts = toy_videos
    scorer = load_clip(str(tiny_zoo / "siglip"))
    model = SiglipModel.from_pretrained(tiny_zoo / "siglip", dtype=torch.float64).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_zoo / "siglip")
    expected = [hand_score(model, tokenizer, clip.frames, prompt, siglip=True, mean=[0.5] * 3, std=[0.5] * 3)
                for clip, prompt in zip(videos, prompts)]
    np.testing.assert_allclose(scorer.score(videos, prompts)["clip_score"], expected, rtol=0, atol=1e-4)


def test_bf16_weights_score_close_to_fp32(tiny_zoo, scorer, toy_videos):
    videos, prompts = toy_videos
    half = load_clip(str(tiny_zoo / "clip"), dtype="bf16")
    assert next(half.model.parameters()).dtype == torch.bfloat16
    np.testing.assert_allclose(half.score(videos, prompts)["clip_score"], scorer.score(videos, prompts)["clip_score"],
                               rtol=0, atol=3.0)


def test_the_environment_variable_names_the_checkpoint(tiny_zoo, toy_videos, scorer, monkeypatch):
    videos, prompts = toy_videos
    monkeypatch.setenv("VPT_CLIP_DIR", str(tiny_zoo / "clip"))
    np.testing.assert_array_equal(load_clip(None).score(videos, prompts)["clip_score"],
                                  scorer.score(videos, prompts)["clip_score"])


def test_cli_scores_equal_the_library(run_vpt, tiny_zoo, toy_manifest, scorer):
    result = run_vpt(["score", "-q", "-m", f"clip:{tiny_zoo}", toy_manifest])
    assert result.exit_code == 0, result.stderr
    table = pq.read_table(io.BytesIO(result.stdout)).to_pylist()
    rows = pq.read_table(toy_manifest).to_pylist()
    assert [row["id"] for row in table] == [row["id"] for row in rows]
    clips = [video(decode(toy_manifest.parent / row["path"], scorer.sampling).frames) for row in rows]
    expected = scorer.score(clips, [row["prompt"] for row in rows])["clip_score"]
    np.testing.assert_allclose([row["clip_score"] for row in table], expected, rtol=0, atol=1e-6)
    np.testing.assert_allclose([row["score"] for row in table], expected, rtol=0, atol=1e-6)
    assert {row["model"] for row in table} == {"clip"}
