"""The encode-once cache of clean latents and prompt embeddings (vpt dpo / sft) on the tiny zoo: round trip to the
clip, one VAE / text-encoder call per distinct content, keys that follow content and settings, model identities,
checksummed entries (damaged ones encoded again, by one process, and refused by the loaders), and one-line errors."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import struct
import threading
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import vpt.encoding.cache as encoded
from vpt.distributed import Processes
from vpt.errors import VptError
from vpt.io.video import read_frames, resize_frames, uniform_indices, write_video
from vpt.models.loading import load_wan_pipeline, resolve_wan_directory
from vpt.models.wan import decode_latents, encode_prompts, encode_videos
from vpt.toyworld import toy_clips
from vpt.encoding.cache import EncodedCache, clip_size, entry_checksum, load_latent, load_prompt_embedding

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
    assert colour_error(decode_latents(pipe, raw), target) > 1.5 * error
    assert colour_error(decode_latents(pipe, (raw - mean) * std), target) > 1.5 * error


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


@pytest.fixture
def prompt_calls(pipe, monkeypatch):
    """The prompts of every ``pipe.encode_prompt`` call."""
    calls = []
    encode_prompt = pipe.encode_prompt

    def counting(*args, **kwargs):
        calls.append(kwargs["prompt"])
        return encode_prompt(*args, **kwargs)

    monkeypatch.setattr(pipe, "encode_prompt", counting)
    return calls


def test_prompt_embeddings_are_encoded_once_and_restored_exactly(pipe, tmp_path, prompt_calls):
    calls = prompt_calls
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
    with pytest.raises(VptError) as error:
        load_latent(damaged)
    assert str(error.value) == (f"{damaged}: damaged cache entry (unreadable: Error while deserializing: "
                                "invalid JSON in header: EOF while parsing a value at line 1 column 0); run again to "
                                "encode it again")


# ---------------------------------------------------------------------------------------------------- checksums
def header(file: Path) -> tuple[int, dict]:
    """(length, parsed JSON) of a safetensors file's header."""
    data = file.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    return length, json.loads(data[8 : 8 + length])


def flip_data(file: Path) -> None:
    """Flip the bits of a few bytes in the middle of the tensor data (the header stays valid)."""
    length, _ = header(file)
    data = bytearray(file.read_bytes())
    middle = 8 + length + (len(data) - 8 - length) // 2
    for offset in range(middle, middle + 4):
        data[offset] ^= 0xFF
    file.write_bytes(bytes(data))


def truncate(file: Path) -> None:
    file.write_bytes(file.read_bytes()[:-7])


def garbage_header(file: Path) -> None:
    data = file.read_bytes()
    file.write_bytes(data[:8] + b"#" * 16 + data[24:])


def older_layout(file: Path) -> None:
    """The entry as vpt wrote it before checksums: the same tensors and metadata, without ``vpt.checksum``."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(file), framework="pt") as handle:
        metadata = {key: value for key, value in handle.metadata().items() if key != encoded.CHECKSUM_METADATA}
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    save_file(tensors, str(file), metadata=metadata)


DAMAGES = {"flipped data": (flip_data, "checksum mismatch"),
           "truncated": (truncate, "unreadable: Error while deserializing: incomplete metadata, file not "
                                   "fully covered"),
           "garbage header": (garbage_header, "unreadable: Error while deserializing: invalid JSON in "
                                              "header: expected value at line 1 column 1"),
           "no checksum": (older_layout, "no checksum: written by an older vpt")}



def test_entries_carry_a_checksum_of_their_content_in_a_sorted_header(pipe, clips, tmp_path):
    latent = EncodedCache(tmp_path / "one").encode_videos(clips[:1], pipe, "vae")[0]
    prompt = EncodedCache(tmp_path / "one").encode_prompts(["a red ball"], pipe, "text")[0]
    for file, tensor_key, metadata_key in ((latent, "latents", "vpt.clip"), (prompt, "prompt", "vpt.embeds")):
        _, parsed = header(file)
        metadata = parsed["__metadata__"]
        assert list(metadata) == sorted(metadata) == sorted(["vpt.checksum", metadata_key])
        from safetensors.torch import load_file

        tensors = load_file(file)
        assert list(tensors) == [tensor_key]
        assert json.loads(metadata["vpt.checksum"]) == {"sha256": entry_checksum(metadata, tensors)}
    assert json.loads(header(latent)[1]["__metadata__"]["vpt.clip"]) == SIZE
    # the same content gives the same bytes in another cache
    assert EncodedCache(tmp_path / "two").encode_videos(clips[:1], pipe, "vae")[0].read_bytes() == latent.read_bytes()
    assert EncodedCache(tmp_path / "two").encode_prompts(["a red ball"], pipe, "text")[0].read_bytes() == \
        prompt.read_bytes()


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_damaged_entries_are_encoded_again_with_a_warning(damage, pipe, clips, tmp_path, vae_calls, prompt_calls,
                                                          caplog):
    damaged, reason = DAMAGES[damage]
    prompts = ["a red ball bouncing", "a blue cube on green grass"]
    cache = EncodedCache(tmp_path / "cache")
    latents = cache.encode_videos(clips[:2], pipe, "vae")
    embeddings = cache.encode_prompts(prompts, pipe, "text")
    fresh_latents = EncodedCache(tmp_path / "fresh").encode_videos(clips[:2], pipe, "vae")
    fresh_embeddings = EncodedCache(tmp_path / "fresh").encode_prompts(prompts, pipe, "text")
    assert len(vae_calls) == 4 and len(prompt_calls) == 4
    damaged(latents[0])
    damaged(embeddings[1])

    with caplog.at_level(logging.WARNING, logger="vpt"):
        assert cache.encode_videos(clips[:2], pipe, "vae") == latents
        assert cache.encode_prompts(prompts, pipe, "text") == embeddings
    assert vae_calls[4:] == [(1, 3, 9, 32, 32)] and prompt_calls[4:] == [[prompts[1]]]  # only the damaged ones
    assert [(record.name, record.levelname, record.getMessage()) for record in caplog.records] == [
        ("vpt.encoding.cache", "WARNING", f"{latents[0]}: damaged cache entry ({reason}); encoding it again"),
        ("vpt.encoding.cache", "WARNING", f"{embeddings[1]}: damaged cache entry ({reason}); encoding it again")]
    for file, fresh in zip(latents, fresh_latents):
        assert torch.equal(load_latent(file), load_latent(fresh)) and file.read_bytes() == fresh.read_bytes()
    for file, fresh in zip(embeddings, fresh_embeddings):
        assert torch.equal(load_prompt_embedding(file), load_prompt_embedding(fresh))
        assert file.read_bytes() == fresh.read_bytes()

    caplog.clear()  # whole again: nothing more to encode or say
    assert cache.encode_videos(clips[:2], pipe, "vae") == latents
    assert cache.encode_prompts(prompts, pipe, "text") == embeddings
    assert len(vae_calls) == 5 and len(prompt_calls) == 5 and caplog.records == []


def test_each_entry_is_read_once_per_check(pipe, clips, tmp_path, monkeypatch):
    cache = EncodedCache(tmp_path)
    files = cache.encode_videos(clips, pipe, "vae")
    prompts = cache.encode_prompts(["a red ball", "a blue cube"], pipe, "text")
    opened = []
    open_entry = encoded._open_entry

    def counting(file):
        opened.append(Path(file))
        return open_entry(file)

    monkeypatch.setattr(encoded, "_open_entry", counting)
    assert cache.encode_videos([*clips, clips[0]], pipe, "vae") == [*files, files[0]]
    assert cache.encode_prompts(["a red ball", "a blue cube", "a red ball"], pipe, "text") == [*prompts, prompts[0]]
    assert opened == [*files, *prompts]


def test_processes_encode_each_damaged_entry_once(pipe, clips, tmp_path, vae_calls, monkeypatch, caplog):
    """Two processes (threads meeting at a barrier): both find every damaged entry before either writes, and each
    entry is encoded again by the process whose share holds it."""
    cache = EncodedCache(tmp_path)
    files = cache.encode_videos(clips, pipe, "vae")
    expected = [load_latent(file) for file in files]
    for file in files:
        flip_data(file)

    lock = threading.Lock()  # the VAE keeps state while it encodes: one clip at a time
    encode = pipe.vae.encode

    def serial(*args, **kwargs):
        with lock:
            return encode(*args, **kwargs)

    monkeypatch.setattr(pipe.vae, "encode", serial)
    found: dict[int, list] = {0: [], 1: []}
    problem = encoded.entry_problem

    def recording(file):
        found[int(threading.current_thread().name)].append((Path(file), problem(file)))
        return found[int(threading.current_thread().name)][-1][1]

    monkeypatch.setattr(encoded, "entry_problem", recording)
    barrier = threading.Barrier(2, timeout=120)
    results, errors = {}, []

    def run(rank: int) -> None:
        try:
            state = SimpleNamespace(wait_for_everyone=barrier.wait)
            results[rank] = cache.encode_videos(clips, pipe, "vae", processes=Processes(rank=rank, count=2,
                                                                                          _state=state))
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)
            barrier.abort()

    with caplog.at_level(logging.WARNING, logger="vpt"):
        threads = [threading.Thread(target=run, args=(rank,), name=str(rank)) for rank in (0, 1)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert errors == []
    assert results[0] == results[1] == files
    assert found[0] == found[1] == [(file, "checksum mismatch") for file in files]
    assert sorted(vae_calls[3:]) == [(1, 3, 9, 32, 32)] * 3  # one encoding per damaged entry, none twice
    assert sorted(record.getMessage() for record in caplog.records) == sorted(
        f"{file}: damaged cache entry (checksum mismatch); encoding it again" for file in files)
    assert all(torch.equal(load_latent(file), tensor) for file, tensor in zip(files, expected))


def test_loaders_refuse_an_entry_changed_after_the_check(pipe, clips, tmp_path):
    cache = EncodedCache(tmp_path)
    latent = cache.encode_videos(clips[:1], pipe, "vae")[0]
    prompt = cache.encode_prompts(["a red ball"], pipe, "text")[0]
    loaded = load_latent(latent)
    kept = loaded.clone()
    flip_data(latent)
    flip_data(prompt)
    assert torch.equal(loaded, kept)  # a loaded tensor is what was verified, not a view of the file
    for load, file in ((load_latent, latent), (clip_size, latent), (load_prompt_embedding, prompt)):
        with pytest.raises(VptError) as error:
            load(file)
        assert str(error.value) == f"{file}: damaged cache entry (checksum mismatch); run again to encode it again"

    cache.encode_videos(clips[:1], pipe, "vae")
    older_layout(latent)
    with pytest.raises(VptError) as error:
        load_latent(latent)
    assert str(error.value) == (f"{latent}: damaged cache entry (no checksum: written by an older vpt); run again to "
                                "encode it again")
    latent.unlink()
    with pytest.raises(VptError) as error:
        load_latent(latent)
    assert str(error.value) == f"{latent}: damaged cache entry (missing); run again to encode it again"


def test_damaged_recorded_latents_are_copied_again(run_vpt, tiny_zoo, tmp_path, caplog):
    from vpt.rollouts.store import cache_recorded_latents, load_rollouts

    (tmp_path / "prompts.txt").write_text("a red square moving slowly to the left\n")
    sampled = run_vpt(["sample-rollouts", "-m", tiny_zoo, "--prompts", tmp_path / "prompts.txt", "--steps", "2",
                       "--guidance", "1", "--frames", "9", "--height", "32", "--width", "32", "-g", "2", "-o",
                       tmp_path / "rollouts", "-q"])
    assert sampled.exit_code == 0, sampled.stderr
    cache = EncodedCache(tmp_path / "cache")
    vae_id = cache.component_identity(resolve_wan_directory(tiny_zoo) / "vae")
    rollouts = load_rollouts(tmp_path / "rollouts")
    paths = [tmp_path / "rollouts" / row["path"] for row in rollouts.rows]
    found = cache_recorded_latents(cache, paths, vae_id)
    assert list(found) == paths and len(set(found.values())) == 2
    flip_data(found[paths[1]])
    with caplog.at_level(logging.WARNING, logger="vpt"):
        assert cache_recorded_latents(cache, paths, vae_id) == found
    assert [record.getMessage() for record in caplog.records] == [
        f"{found[paths[1]]}: damaged cache entry (checksum mismatch); copying it again from {tmp_path / 'rollouts'}"]
    for row, path in zip(rollouts.rows, paths):
        assert torch.equal(load_latent(found[path]), rollouts.final_latent(row).float())
