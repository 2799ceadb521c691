"""The encode-once cache of clean latents and prompt embeddings (vpt dpo / sft) on the tiny zoo: round trip to the
clip, one VAE / text-encoder call per distinct content, keys that follow content and settings, model identities,
and one-line errors."""

from __future__ import annotations

import os
import re
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import vpt.train.encoded as encoded
from vpt.distributed import Processes
from vpt.errors import VptError
from vpt.io.video import read_frames, resize_frames, uniform_indices, write_video
from vpt.models.loading import load_wan_pipeline, resolve_wan_directory
from vpt.models.wan import decode_latents, encode_prompts, encode_videos
from vpt.toyworld import toy_clips
from vpt.train.encoded import EncodedCache, clip_size, load_latent, load_prompt_embedding

SIZE = {"frames": 9, "height": 32, "width": 32}  # what the zoo's VAE was trained on


@pytest.fixture(scope="module")
def pipe(tiny_zoo):
    return load_wan_pipeline(tiny_zoo)


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """Three toy clips as mp4 files."""
    root = tmp_path_factory.mktemp("clips")
    paths = []
    for number, (_, clip) in enumerate(toy_clips(3, seed=0, **SIZE)):
        paths.append(root / f"clip-{number}.mp4")
        write_video(paths[-1], clip, fps=8.0)
    return paths


@pytest.fixture
def vae_calls(pipe, monkeypatch):
    """The pixel shapes of every ``pipe.vae.encode`` call."""
    calls = []
    encode = pipe.vae.encode

    def counting(pixels, *args, **kwargs):
        calls.append(tuple(pixels.shape))
        return encode(pixels, *args, **kwargs)

    monkeypatch.setattr(pipe.vae, "encode", counting)
    return calls


def colour_error(videos: np.ndarray, clips: np.ndarray) -> float:
    """Mean absolute error of each frame's mean colour: what the tiny VAE reproduces (its details are blurry)."""
    return float(np.abs(videos.mean(axis=(2, 3)) - clips.mean(axis=(2, 3))).mean())


def test_cached_latents_decode_back_to_their_clips(pipe, clips, tmp_path):
    files = EncodedCache(tmp_path).encode_videos(clips, pipe, "vae")
    assert all(file.parent == tmp_path / "latents" / "vae" for file in files)
    latents = torch.stack([load_latent(file) for file in files])
    assert latents.dtype == torch.float32 and latents.shape == (3, 16, 3, 4, 4)
    assert [clip_size(file) for file in files] == [(9, 32, 32)] * 3
    pixels = np.stack([read_frames(path) for path in clips])
    for k in range(3):  # the cache stores what encode_videos gives for the clip alone
        assert torch.equal(latents[k], encode_videos(pipe, pixels[k : k + 1])[0])

    target = pixels / 255.0
    error = colour_error(decode_latents(pipe, latents), target)
    assert error < 0.025 and float(((decode_latents(pipe, latents) - target) ** 2).mean()) < 0.01
    # controls: latents cached without the normalisation, or normalised with the std inverted, decode clearly worse
    vae = pipe.vae.config
    mean = torch.tensor(vae.latents_mean).view(1, -1, 1, 1, 1)
    std = torch.tensor(vae.latents_std).view(1, -1, 1, 1, 1)
    raw = latents * std + mean
    assert colour_error(decode_latents(pipe, raw), target) > 2 * error
    assert colour_error(decode_latents(pipe, (raw - mean) * std), target) > 2 * error


def test_each_distinct_clip_is_encoded_once(pipe, clips, tmp_path, vae_calls):
    a, b, _ = clips
    copy = tmp_path / "copy of a.mp4"
    shutil.copyfile(a, copy)
    cache = EncodedCache(tmp_path / "cache")
    progress = []
    first = cache.encode_videos([a, b, a, copy], pipe, "vae", on_progress=progress.append)
    assert len(vae_calls) == 2 and progress == [1, 1]
    assert first[0] == first[2] == first[3] != first[1]

    again = EncodedCache(tmp_path / "cache").encode_videos([copy, b], pipe, "vae", on_progress=progress.append)
    assert again == [first[0], first[1]] and len(vae_calls) == 2 and progress == [1, 1]
    assert torch.equal(load_latent(again[0]), load_latent(first[0]))

    other_vae = cache.encode_videos([a, b], pipe, "another-vae")
    assert len(vae_calls) == 4 and not set(other_vae) & set(first)
    resampled = cache.encode_videos([a], pipe, "vae", size=(5, 32, 32))
    assert len(vae_calls) == 5 and resampled[0] not in first and clip_size(resampled[0]) == (5, 32, 32)

    write_video(copy, toy_clips(1, seed=1, **SIZE)[0][1], fps=8.0)  # edited in place
    edited = cache.encode_videos([copy], pipe, "vae")
    assert len(vae_calls) == 6 and edited[0] not in first


def test_clips_are_resampled_to_the_size_asked_for(pipe, clips, tmp_path):
    file = EncodedCache(tmp_path).encode_videos(clips[:1], pipe, "vae", size=(5, 16, 16))[0]
    pixels = resize_frames(read_frames(clips[0], uniform_indices(9, 5)), 16, 16)
    assert clip_size(file) == (5, 16, 16)
    assert torch.equal(load_latent(file), encode_videos(pipe, pixels[None])[0])


def test_processes_share_the_encoding(pipe, clips, tmp_path, vae_calls):
    synced = SimpleNamespace(wait_for_everyone=lambda: None)  # the processes run one after the other here
    cache = EncodedCache(tmp_path)
    rank0 = cache.encode_videos(clips, pipe, "vae", processes=Processes(rank=0, count=2, _state=synced))
    assert len(vae_calls) == 2 and [file.is_file() for file in rank0] == [True, False, True]
    rank1 = cache.encode_videos(clips, pipe, "vae", processes=Processes(rank=1, count=2, _state=synced))
    assert rank1 == rank0 and len(vae_calls) == 3 and all(file.is_file() for file in rank0)


def test_prompt_embeddings_are_encoded_once_and_restored_exactly(pipe, tmp_path, monkeypatch):
    calls = []
    encode_prompt = pipe.encode_prompt

    def counting(*args, **kwargs):
        calls.append(kwargs["prompt"])
        return encode_prompt(*args, **kwargs)

    monkeypatch.setattr(pipe, "encode_prompt", counting)
    prompts = ["a red ball bouncing", "a blue cube on green grass", "a red ball bouncing", ""]
    files = EncodedCache(tmp_path).encode_prompts(prompts, pipe, "text")
    assert calls == [["a red ball bouncing"], ["a blue cube on green grass"], [""]]
    assert files[0] == files[2] and len(set(files)) == 3
    assert all(file.parent == tmp_path / "prompts" / "text" for file in files)
    assert EncodedCache(tmp_path).encode_prompts(prompts, pipe, "text") == files and len(calls) == 3

    for prompt, file in zip(prompts, files):
        expected = encode_prompts(pipe, [prompt])[0][0]
        stored = load_prompt_embedding(file)
        assert stored.dtype == expected.dtype and torch.equal(stored, expected)
    short = EncodedCache(tmp_path).encode_prompts(prompts[:1], pipe, "text", max_sequence_length=16)
    assert short[0] not in files
    assert torch.equal(load_prompt_embedding(short[0]), encode_prompts(pipe, prompts[:1], max_sequence_length=16)[0][0])


def test_component_identity_follows_the_files_and_remembers_their_digests(tiny_zoo, tmp_path, monkeypatch):
    wan = resolve_wan_directory(tiny_zoo)
    vae = tmp_path / "vae"
    shutil.copytree(wan / "vae", vae)
    cache = EncodedCache(tmp_path / "cache")
    identity = cache.component_identity(vae)
    assert re.fullmatch(r"[0-9a-f]{16}", identity)
    assert cache.component_identity(wan / "vae") == identity  # content, not place
    (vae / ".cache").mkdir()
    (vae / ".cache" / "download.metadata").write_text("fetched at 12:00\n")
    assert cache.component_identity(vae) == identity
    text = cache.component_identity(wan / "text_encoder", wan / "tokenizer")
    assert text not in (identity, cache.component_identity(wan / "text_encoder"))

    def no_hashing(path):
        raise AssertionError(f"{path} hashed again")

    with monkeypatch.context() as patched:
        patched.setattr(encoded, "file_digest", no_hashing)
        assert EncodedCache(tmp_path / "cache").component_identity(vae) == identity

    weights = vae / "diffusion_pytorch_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    stamp = weights.stat().st_mtime_ns
    weights.write_bytes(bytes(data))
    os.utime(weights, ns=(stamp + 10**9, stamp + 10**9))  # an edit a second later: some file clocks are coarse
    assert cache.component_identity(vae) != identity

    with pytest.raises(VptError) as error:
        cache.component_identity(tmp_path / "nowhere")
    assert str(error.value) == (f"{tmp_path / 'nowhere'}: not a model component directory (not a directory); give "
                                "the pipeline's vae/, text_encoder/ or tokenizer/")


def test_bad_clips_and_sizes_are_one_line_errors_before_any_encoding(pipe, clips, tmp_path, vae_calls):
    cache = EncodedCache(tmp_path / "cache")
    short = tmp_path / "short.mp4"
    write_video(short, toy_clips(1, seed=0, frames=10, height=32, width=32)[0][1], fps=8.0)
    with pytest.raises(VptError) as error:
        cache.encode_videos([clips[0], short], pipe, "vae")
    assert str(error.value) == (f"{short}: 10 frames of 32x32 cannot be encoded: frames must be 1 + a multiple of 4 "
                                "(e.g. 5, 17), got 10; pass --frames/--height/--width to resample clips")
    assert vae_calls == []
    assert cache.encode_videos([short], pipe, "vae", size=(9, 32, 32))[0].is_file()

    with pytest.raises(VptError) as error:
        cache.encode_videos(clips, pipe, "vae", size=(9, 40, 32))
    assert str(error.value) == ("cannot resample clips to 9 frames of 40x32: height must be a positive multiple of "
                                "16, got 40; choose other --frames/--height/--width")

    text = tmp_path / "notes.mp4"
    text.write_text("not a video\n")
    for path, reason in ((text, "not a readable video (invalid data found when processing input)"),
                         (tmp_path / "missing.mp4", "file not found")):
        with pytest.raises(VptError) as error:
            cache.encode_videos([clips[0], path], pipe, "vae")
        assert str(error.value) == f"{path}: {reason}; fix or remove this clip"
    assert len(vae_calls) == 1

    damaged = tmp_path / "damaged.safetensors"
    damaged.write_bytes(b"\x00" * 12)
    with pytest.raises(VptError, match=r"damaged\.safetensors: unreadable cache entry \(.*\); delete it and run "
                                       r"again$"):
        load_latent(damaged)
