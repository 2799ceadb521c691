"""vpt.rewards.consistency: VBench's formula on hand-made features, the scorers against an independent float64
computation (preprocessing by hand, the transformers model run directly), ranking in the toy world, the CLI."""

from __future__ import annotations

import io
import math

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from vpt.io.video import DecodedVideo, FrameSampling, decode
from vpt.rewards.consistency import consistency, load_background_consistency, load_subject_consistency
from vpt.toyworld import COLORS, SHAPES, render_clip, sample_attributes

IMAGENET = (np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225]))


def video(frames: np.ndarray) -> DecodedVideo:
    return DecodedVideo(frames, None, np.arange(len(frames)))


def vbench_loop(features: np.ndarray) -> float:
    """VBench's loop (``subject_consistency.py``), one frame at a time, in float64."""
    total, first, former = 0.0, None, None
    for i, feature in enumerate(features):
        feature = feature / np.linalg.norm(feature)
        if i == 0:
            first = feature
        else:
            total += (max(0.0, float(former @ feature)) + max(0.0, float(first @ feature))) / 2
        former = feature
    return total / (len(features) - 1) if len(features) > 1 else 1.0


def bilinear_matrix(n: int, m: int) -> np.ndarray:
    """``[m, n]`` weights of a bilinear resize ``n -> m`` with half-pixel centres, no antialiasing."""
    weights = np.zeros((m, n))
    for i in range(m):
        source = max((i + 0.5) * n / m - 0.5, 0.0)
        low = min(int(math.floor(source)), n - 1)
        high, fraction = min(low + 1, n - 1), source - low
        weights[i, low] += 1 - fraction
        weights[i, high] += fraction
    return weights


def bicubic_matrix(n: int, m: int, a: float = -0.75) -> np.ndarray:
    """``[m, n]`` weights of a bicubic resize ``n -> m`` (Keys kernel, half-pixel centres, edge taps clamped, no
    antialiasing)."""
    def kernel(x):
        x = abs(x)
        return ((a + 2) * x - (a + 3)) * x * x + 1 if x <= 1 else ((((x - 5) * x + 8) * x - 4) * a if x < 2 else 0.0)

    weights = np.zeros((m, n))
    for i in range(m):
        source = (i + 0.5) * n / m - 0.5
        base = math.floor(source)
        for tap in range(base - 1, base + 3):
            weights[i, min(max(tap, 0), n - 1)] += kernel(source - tap)
    return weights


def resized_uint8(frames: np.ndarray, rows: np.ndarray, columns: np.ndarray) -> np.ndarray:
    """float64 ``[T, 3, h, w]`` of frames resized by the weight matrices, rounded and clamped to 0..255."""
    x = frames.astype(np.float64).transpose(0, 3, 1, 2)
    return np.clip(np.rint(np.einsum("ih,tchw,jw->tcij", rows, x, columns)), 0, 255)


@pytest.fixture(scope="module")
def subject(tiny_zoo):
    return load_subject_consistency(str(tiny_zoo))


@pytest.fixture(scope="module")
def background(tiny_zoo):
    return load_background_consistency(str(tiny_zoo))


# ------------------------------------------------------------------------------------------- the formula


def test_formula_on_hand_made_features():
    # t=1: cos(f1, f0) = 0 twice -> 0; t=2: cos(f2, f1) = cos(f2, f0) = 1/sqrt(2) -> 1/sqrt(2);
    # mean over t = 1/(2 sqrt 2)
    assert consistency([[1.0, 0.0], [0.0, 2.0], [3.0, 3.0]]) == pytest.approx(1 / (2 * math.sqrt(2)), abs=1e-12)
    # negative cosines count as 0: t=1 -> 0; t=2: cos(f2, f1) = -1 -> 0, cos(f2, f0) = 1 -> 1/2; mean 1/4
    assert consistency([[1.0, 0.0], [-1.0, 0.0], [2.0, 0.0]]) == pytest.approx(0.25, abs=1e-12)
    assert consistency([[0.3, -0.2, 0.9]]) == 1.0
    assert consistency(np.tile([[0.3, -0.2, 0.9]], (5, 1))) == pytest.approx(1.0, abs=1e-12)
    features = np.random.default_rng(0).normal(size=(7, 5))
    assert consistency(features) == pytest.approx(vbench_loop(features), abs=1e-12)


def test_identical_frames_score_exactly_one(subject, background):
    frames = np.repeat(render_clip(sample_attributes(np.random.default_rng(3)), 1, 40, 56), 6, axis=0)
    for model in (subject, background):
        value = model.score([video(frames), video(frames[:1])], [None, None])[model.primary]
        assert value.dtype == np.float64 and value.shape == (2,)
        np.testing.assert_allclose(value, [1.0, 1.0], atol=1e-6)


def test_declared_interface(subject, background):
    assert (subject.name, subject.dimensions, subject.primary) == ("subject-consistency", ("subject_consistency",),
                                                                  "subject_consistency")
    assert (background.name, background.dimensions) == ("background-consistency", ("background_consistency",))
    assert subject.sampling == background.sampling == FrameSampling(mode="all")
    assert not subject.needs_prompt and not background.needs_prompt


# ------------------------------------------------------------------------------- against an independent path


def test_subject_consistency_equals_dinov2_cls_tokens_by_hand(subject, tiny_zoo):
    from transformers import Dinov2Model

    frames = np.random.default_rng(1).integers(0, 256, (5, 40, 60, 3), dtype=np.uint8)
    # VBench's dino_transform: shorter side 40 -> 32 (the tiny model's image_size), longer int(32 * 60 / 40) = 48
    pixels = resized_uint8(frames, bilinear_matrix(40, 32), bilinear_matrix(60, 48)) / 255.0
    pixels = (pixels - IMAGENET[0][:, None, None]) / IMAGENET[1][:, None, None]
    np.testing.assert_allclose(subject.features.pixels(frames).double().numpy(), pixels, atol=1e-5)
    model = Dinov2Model.from_pretrained(tiny_zoo / "dinov2", dtype=torch.float64).eval()
    with torch.no_grad():
        cls = model(pixel_values=torch.from_numpy(pixels)).last_hidden_state[:, 0].numpy()
    expected = vbench_loop(cls)
    assert 0.5 < expected < 1.0
    assert subject.score([video(frames)], [None])["subject_consistency"][0] == pytest.approx(expected, abs=1e-6)


def test_background_consistency_equals_clip_embeddings_by_hand(background, tiny_zoo):
    from transformers import CLIPModel

    frames = np.random.default_rng(2).integers(0, 256, (4, 48, 40, 3), dtype=np.uint8)
    # VBench's clip_transform: shorter side 40 -> 32 (bicubic, uint8), longer int(32 * 48 / 40) = 38, centre crop 32
    pixels = resized_uint8(frames, bicubic_matrix(48, 38), bicubic_matrix(40, 32))[:, :, 3:35, :] / 255.0
    mean, std = np.array([0.48145466, 0.4578275, 0.40821073]), np.array([0.26862954, 0.26130258, 0.27577711])
    pixels = (pixels - mean[:, None, None]) / std[:, None, None]
    np.testing.assert_allclose(background.features.pixels(frames).double().numpy(), pixels, atol=1e-5)
    model = CLIPModel.from_pretrained(tiny_zoo / "clip", dtype=torch.float64).eval()
    with torch.no_grad():
        embeddings = model.get_image_features(pixel_values=torch.from_numpy(pixels)).pooler_output.numpy()
    expected = vbench_loop(embeddings)
    value = background.score([video(frames)], [None])["background_consistency"][0]
    assert value == pytest.approx(expected, abs=1e-6)


# ------------------------------------------------------------------------------------------ the toy world


def auc(higher, lower) -> float:
    """P(a score of ``higher`` > a score of ``lower``), ties counting one half."""
    higher, lower = np.asarray(higher)[:, None], np.asarray(lower)[None, :]
    return float(((higher > lower) + 0.5 * (higher == lower)).mean())


@pytest.fixture(scope="module")
def toy_pairs():
    """24 steady toy clips (16 frames, 64x64, moving, no defects) and two altered copies of each: the subject's
    colour and shape change halfway through; the background level jumps by 0.4 halfway through."""
    rng = np.random.default_rng(0)
    steady, subject_changed, background_jumped = [], [], []
    for _ in range(24):
        attrs = sample_attributes(rng, 16)
        attrs.update(jitter=0.0, flicker=0.0, frozen_frames=0)
        other = dict(attrs, color=str(rng.choice([c for c in COLORS if c != attrs["color"]])),
                     shape=str(rng.choice([s for s in SHAPES if s != attrs["shape"]])))
        darker_or_lighter = dict(attrs, brightness=attrs["brightness"] + (0.4 if attrs["brightness"] < 0.5 else -0.4))
        clip = render_clip(attrs, 16, 64, 64)
        steady.append(video(clip))
        subject_changed.append(video(np.concatenate([clip[:8], render_clip(other, 16, 64, 64)[8:]])))
        background_jumped.append(video(np.concatenate([clip[:8], render_clip(darker_or_lighter, 16, 64, 64)[8:]])))
    return steady, subject_changed, background_jumped


def test_subject_consistency_ranks_steady_subjects_above_changing_ones(subject, toy_pairs):
    steady, changed, _ = toy_pairs
    score = lambda videos: subject.score(videos, [None] * len(videos))["subject_consistency"]  # noqa: E731
    value = auc(score(steady), score(changed))
    print(f"subject consistency AUC (steady > subject changed): {value:.3f}")
    assert value >= 0.9


def test_background_consistency_ranks_steady_backgrounds_above_jumping_ones(background, toy_pairs):
    steady, _, jumped = toy_pairs
    score = lambda videos: background.score(videos, [None] * len(videos))["background_consistency"]  # noqa: E731
    value = auc(score(steady), score(jumped))
    print(f"background consistency AUC (steady > background jumped): {value:.3f}")
    assert value >= 0.9


# ---------------------------------------------------------------------------------------------------- CLI


def test_cli_scores_equal_the_library(run_vpt, tiny_zoo, toy_manifest, subject, background):
    result = run_vpt(["score", "-q", "-m", f"subject-consistency:{tiny_zoo},background-consistency:{tiny_zoo}",
                      toy_manifest])
    assert result.exit_code == 0, result.stderr
    table = pq.read_table(io.BytesIO(result.stdout)).to_pylist()
    rows = pq.read_table(toy_manifest).to_pylist()
    assert len(table) == len(rows) == 24
    assert {"subject_consistency", "background_consistency"} <= table[0].keys()
    clips = [video(decode(toy_manifest.parent / row["path"]).frames) for row in rows]
    expected = {"subject_consistency": subject.score(clips, [None] * 24)["subject_consistency"],
                "background_consistency": background.score(clips, [None] * 24)["background_consistency"]}
    for column, values in expected.items():
        np.testing.assert_allclose([row[column] for row in table], values, rtol=0, atol=1e-6)
    np.testing.assert_allclose([row["score"] for row in table], expected["subject_consistency"], rtol=0, atol=1e-6)
