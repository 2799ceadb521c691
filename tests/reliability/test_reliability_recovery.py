"""Inputs that must work, and damage vpt repairs by itself: unicode and space paths, a damaged latent cache,
manifests without ids or read from stdin, prompts the text encoder would cut, and runs where every video fails."""

from __future__ import annotations

import io

import pyarrow.parquet as pq

from reliability_world import SAMPLER
from vpt.io.tables import read_table, write_table


def test_unicode_and_space_paths_work_everywhere(world, run_vpt, tmp_path):
    clip = world.unicode_clip
    scored = run_vpt(["score", "-m", "brightness", clip.parent, "-o", tmp_path / "ünï scores.parquet", "-q"])
    assert scored.exit_code == 0, scored.stderr
    assert pq.read_table(tmp_path / "ünï scores.parquet").column("id").to_pylist() == ["clip é 1"]
    manifest = tmp_path / "dïr with space" / "videös.csv"
    manifest.parent.mkdir()
    manifest.write_text(f'path,prompt\n"{clip}",a clip\n', encoding="utf-8")
    trained = run_vpt(["sft", "-m", world.zoo, "--data", manifest, "--max-steps", "1", "--cache", tmp_path / "cache",
                       "-q", "-o", tmp_path / "pölicy ü"])
    assert trained.exit_code == 0, trained.stderr
    assert (tmp_path / "pölicy ü" / "adapter_model.safetensors").is_file()


def test_a_manifest_without_ids_gets_them_from_its_paths(world, run_vpt, tmp_path):
    manifest = tmp_path / "videos.csv"
    manifest.write_text("path\n" + "".join(f"{world.clips / name}\n" for name in ("toy-0000.mp4", "toy-0001.mp4")))
    result = run_vpt(["score", "-m", "brightness", manifest, "-q"])
    assert result.exit_code == 0, result.stderr
    ids = pq.read_table(io.BytesIO(result.stdout)).column("id").to_pylist()
    assert ids == [str(world.clips / "toy-0000"), str(world.clips / "toy-0001")]


def test_a_manifest_from_stdin_resolves_against_base_dir(world, run_vpt):
    piped = run_vpt(["score", "-m", "brightness", "-", "--base-dir", world.toy.parent, "-q"],
                    stdin=world.toy.read_bytes())
    direct = run_vpt(["score", "-m", "brightness", world.toy, "-q"])
    assert (piped.exit_code, direct.exit_code) == (0, 0)
    assert pq.read_table(io.BytesIO(piped.stdout)) == pq.read_table(io.BytesIO(direct.stdout))


def test_when_every_video_fails_score_says_so_and_exits_1(world, run_vpt, tmp_path):
    result = run_vpt(["score", "-m", "brightness", world.bad, "-o", tmp_path / "scores.parquet", "-q"])
    assert result.exit_code == 1
    assert result.stderr == (f"vpt: error: none of the 3 videos could be scored (the first: {world.bad / 'empty.mp4'}: "
                             "file is empty (0 bytes)); see the error column\n")
    table = read_table(tmp_path / "scores.parquet", "scores")  # the table still says what failed, row by row
    assert table.column("error").null_count == 0 and table.num_rows == 3
    some = run_vpt(["score", "-m", "brightness", world.bad / "empty.mp4", world.clips / "toy-0000.mp4", "-q"])
    assert some.exit_code == 0
    assert some.stderr == "vpt: warning: 1 of 2 videos could not be scored (see the error column)\n"


def test_a_damaged_latent_cache_is_encoded_again_and_trains_the_same(world, run_vpt, tmp_path):
    def sft(out, cache):
        return run_vpt(["sft", "-m", world.zoo, "--data", world.toy, "--max-steps", "2", "--batch-size", "2", "--lr",
                        "1e-3", "--cache", cache, "-q", "-o", out])

    assert sft(tmp_path / "clean", tmp_path / "cache").exit_code == 0
    entries = sorted((tmp_path / "cache" / "latents").rglob("*.safetensors"))
    data = bytearray(entries[0].read_bytes())
    data[-100:] = bytes(byte ^ 0xFF for byte in data[-100:])  # flipped bytes in the tensor data
    entries[0].write_bytes(bytes(data))
    repaired = sft(tmp_path / "repaired", tmp_path / "cache")
    assert repaired.exit_code == 0, repaired.stderr
    assert repaired.stderr == (f"vpt: warning: {entries[0]}: damaged cache entry (checksum mismatch); encoding it "
                               "again\n")
    assert ((tmp_path / "repaired" / "adapter_model.safetensors").read_bytes()
            == (tmp_path / "clean" / "adapter_model.safetensors").read_bytes())


def test_a_prompt_the_text_encoder_would_cut_is_named(world, run_vpt, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a short prompt\n" + "a very " + "long " * 2000 + "prompt\n")
    result = run_vpt(["sample-rollouts", "-m", world.zoo, "--prompts", prompts, "-g", "1", *SAMPLER, "--noise-level",
                      "0", "-o", tmp_path / "out"])
    assert result.exit_code == 0
    assert result.stderr == (f"vpt: warning: {prompts}: row 2: the prompt is 2008 tokens long; the text encoder reads "
                             "its first 512 and ignores the rest (shorten it)\n")
    rows = read_table(world.toy, "videos").to_pylist()
    rows[1]["prompt"] = "long " * 600
    for row in rows:
        row["path"] = str(world.toy.parent / row["path"])
    write_table(rows, tmp_path / "videos.parquet", "videos")
    trained = run_vpt(["sft", "-m", world.zoo, "--data", tmp_path / "videos.parquet", "--max-steps", "1", "--cache",
                       tmp_path / "cache", "-q", "-o", tmp_path / "sft"])
    assert trained.exit_code == 0
    assert trained.stderr == (f"vpt: warning: {tmp_path / 'videos.parquet'}: row 2: the prompt is 602 tokens long; "
                              "the text encoder reads its first 512 and ignores the rest (shorten it)\n")
