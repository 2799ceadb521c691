"""vpt.rewards.aesthetic: the LAION head computed by hand in float64, the scorer against an independent computation
(CLIP preprocessing by hand, the transformers model run directly), both head file formats, the CLI.

The tiny zoo's CLIP and head are random, so there is no toy-world attribute for them to rank."""

from __future__ import annotations

import io
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import save_file

from vpt.errors import VptError
from vpt.io.video import DecodedVideo, FrameSampling, decode
from vpt.models.clip_features import center_crop, shortest_side
from vpt.rewards.aesthetic import HEAD_FILES, AestheticScore, aesthetic_head, load_aesthetic
from vpt.toyworld import render_clip, sample_attributes

CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073])
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711])


def video(frames: np.ndarray) -> DecodedVideo:
    return DecodedVideo(frames, None, np.arange(len(frames)))


def head_by_hand(state: dict, embedding: np.ndarray) -> np.ndarray:
    """The released MLP in float64: five affine maps in a row (dropouts are identities at inference)."""
    x = np.asarray(embedding, np.float64)
    for index in (0, 2, 4, 6, 7):
        x = x @ state[f"layers.{index}.weight"].double().numpy().T + state[f"layers.{index}.bias"].double().numpy()
    return x[..., 0]


def scorer_state(scorer) -> dict:
    """The head's state dict in the released layout (``layers.`` prefix)."""
    return {f"layers.{key}": value.float() for key, value in scorer.head.state_dict().items()}


@pytest.fixture(scope="module")
def scorer(tiny_zoo):
    return load_aesthetic(str(tiny_zoo))


@pytest.fixture(scope="module")
def head_state(tiny_zoo):
    return torch.load(tiny_zoo / "aesthetic" / HEAD_FILES[1], weights_only=True)


def test_declared_interface(scorer):
    assert (scorer.name, scorer.dimensions, scorer.primary) == ("aesthetic", ("aesthetic",), "aesthetic")
    assert scorer.sampling == FrameSampling(mode="count", count=8)
    assert not scorer.needs_prompt


def test_head_layout_and_value_on_a_known_embedding(head_state):
    assert {key: tuple(value.shape) for key, value in head_state.items()} == {
        "layers.0.weight": (1024, 16), "layers.0.bias": (1024,), "layers.2.weight": (128, 1024),
        "layers.2.bias": (128,), "layers.4.weight": (64, 128), "layers.4.bias": (64,), "layers.6.weight": (16, 64),
        "layers.6.bias": (16,), "layers.7.weight": (1, 16), "layers.7.bias": (1,)}
    head = aesthetic_head(head_state).double()
    embedding = np.zeros(16)
    embedding[3] = 1.0  # a unit embedding: the head's output is bias chain + one column of the product
    with torch.no_grad():
        value = head(torch.from_numpy(embedding)[None])[0, 0].item()
    assert value == pytest.approx(head_by_hand(head_state, embedding), abs=1e-12)
    product = head_state["layers.0.weight"].double().numpy()  # [1, 16] after the loop: W7 W6 W4 W2 W0
    for index in (2, 4, 6, 7):
        product = head_state[f"layers.{index}.weight"].double().numpy() @ product
    bias_only = head_by_hand(head_state, np.zeros(16))
    assert value == pytest.approx(bias_only + product[0, 3], abs=1e-12)


def test_preprocessing_helpers_follow_torchvision():
    assert shortest_side(40, 60, 32) == (32, 48)
    assert shortest_side(60, 40, 32) == (48, 32)
    assert shortest_side(45, 64, 32) == (32, 45)  # int(32 * 64 / 45) = int(45.5) = 45
    x = torch.arange(2 * 7 * 10, dtype=torch.float32).view(1, 2, 7, 10)
    assert torch.equal(center_crop(x, 4, 4), x[..., 2:6, 3:7])  # round(1.5) = 2, round(3.0) = 3


def test_sizes_come_from_either_preprocessor_config_form(scorer):
    stats = {"image_mean": [0.5] * 3, "image_std": [0.5] * 3}
    for sizes in ({"size": 224, "crop_size": 224}, {"size": {"shortest_edge": 224},
                                                     "crop_size": {"height": 224, "width": 224}}):
        other = AestheticScore(scorer.model, aesthetic_head(scorer_state(scorer)), {**stats, **sizes})
        assert (other.side, other.crop) == (224, (224, 224))
    assert (scorer.side, scorer.crop) == (32, (32, 32))  # the tiny zoo's


def test_score_equals_an_independent_float64_computation(scorer, tiny_zoo, head_state):
    from transformers import CLIPModel

    attributes = [sample_attributes(np.random.default_rng(seed), 8) for seed in range(3)]
    # 32 x 48 frames: the shorter side is already 32 (no resize), the centre crop keeps columns 8..39
    videos = [render_clip(attrs, 8, 32, 48) for attrs in attributes]
    model = CLIPModel.from_pretrained(tiny_zoo / "aesthetic", dtype=torch.float64).eval()
    expected = []
    for frames in videos:
        pixels = frames[:, :, 8:40].astype(np.float64).transpose(0, 3, 1, 2) / 255.0
        pixels = (pixels - CLIP_MEAN[:, None, None]) / CLIP_STD[:, None, None]
        with torch.no_grad():
            embedding = model.get_image_features(pixel_values=torch.from_numpy(pixels)).pooler_output.numpy()
        expected.append(head_by_hand(head_state, embedding / np.linalg.norm(embedding, axis=1, keepdims=True)).mean())
    scores = scorer.score([video(frames) for frames in videos], [None] * 3)["aesthetic"]
    assert scores.dtype == np.float64 and scores.shape == (3,)
    np.testing.assert_allclose(scores, expected, rtol=0, atol=1e-5)
    assert np.ptp(expected) > 1e-4  # the clips make a difference: the comparison is not vacuous


def test_safetensors_head_gives_the_same_scores(tiny_zoo, tmp_path, scorer, head_state):
    directory = tmp_path / "aesthetic"
    shutil.copytree(tiny_zoo / "aesthetic", directory)
    (directory / HEAD_FILES[1]).unlink()
    save_file({key: value.contiguous() for key, value in head_state.items()}, directory / HEAD_FILES[0])
    clips = [video(render_clip(sample_attributes(np.random.default_rng(5), 8), 8, 40, 56))]
    np.testing.assert_array_equal(load_aesthetic(str(directory)).score(clips, [None])["aesthetic"],
                                  scorer.score(clips, [None])["aesthetic"])


def test_a_head_of_another_layout_is_refused(head_state):
    with pytest.raises(VptError, match=r"not the LAION aesthetic head \(expected keys layers"):
        aesthetic_head({"weight": head_state["layers.0.weight"]}, "head.pth")
    broken = dict(head_state, **{"layers.2.weight": torch.zeros(128, 512)})
    with pytest.raises(VptError, match="do not chain to one output"):
        aesthetic_head(broken, "head.pth")


def test_cli_scores_equal_the_library(run_vpt, tiny_zoo, toy_manifest, scorer):
    result = run_vpt(["score", "-q", "-m", f"aesthetic:{tiny_zoo}", toy_manifest])
    assert result.exit_code == 0, result.stderr
    table = pq.read_table(io.BytesIO(result.stdout)).to_pylist()
    rows = pq.read_table(toy_manifest).to_pylist()
    assert [row["id"] for row in table] == [row["id"] for row in rows]
    clips = [video(decode(toy_manifest.parent / row["path"], scorer.sampling).frames) for row in rows]
    expected = scorer.score(clips, [None] * len(clips))["aesthetic"]
    np.testing.assert_allclose([row["aesthetic"] for row in table], expected, rtol=0, atol=1e-6)
    np.testing.assert_allclose([row["score"] for row in table], expected, rtol=0, atol=1e-6)
