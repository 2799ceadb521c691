import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from vpt.io.video import write_video

VPT = str(Path(sys.executable).with_name("vpt"))


def parquet(result) -> pa.Table:
    assert result.exit_code == 0, result.stderr
    return pq.read_table(io.BytesIO(result.stdout))


@pytest.fixture
def mixed_dir(tmp_path):
    """Two good clips and two bad files, all named .mp4."""
    folder = tmp_path / "videos"
    frames = np.zeros((8, 32, 32, 3), np.uint8)
    write_video(folder / "dark.mp4", frames + 20, fps=8)
    write_video(folder / "sub" / "bright.mp4", frames + 220, fps=8)
    (folder / "empty.mp4").write_bytes(b"")
    (folder / "notes.mp4").write_text("this is not a video\n")
    return folder


def test_score_directory_streams_a_scores_table(run_vpt, mixed_dir):
    result = run_vpt(["score", "--model", "brightness", "--quiet", mixed_dir])
    table = parquet(result)
    assert table.schema.metadata[b"vpt.schema"] == b"scores"
    assert table.column_names == ["id", "path", "prompt", "model", "score", "error", "brightness"]
    rows = {row["id"]: row for row in table.to_pylist()}
    assert sorted(rows) == ["dark", "empty", "notes", "sub/bright"]
    assert rows["dark"]["score"] == rows["dark"]["brightness"]
    assert abs(rows["dark"]["score"] - 20 / 255) < 0.01 and abs(rows["sub/bright"]["score"] - 220 / 255) < 0.01
    assert rows["empty"]["error"] == "file is empty (0 bytes)" and rows["empty"]["score"] is None
    assert rows["notes"]["error"].startswith("not a readable video")
    assert result.stderr == "vpt: warning: 2 of 4 videos could not be scored (see the error column)\n"


def test_strict_stops_at_the_first_unreadable_video(run_vpt, mixed_dir):
    result = run_vpt(["score", "-m", "brightness", "--strict", "-q", mixed_dir])
    assert result.exit_code == 2
    assert result.stderr == f"vpt: error: {mixed_dir / 'empty.mp4'}: file is empty (0 bytes)\n"


def test_several_models_share_one_decode_and_manifest_columns_are_carried(run_vpt, toy_manifest):
    result = run_vpt(["score", "-m", "motion,brightness", "-m", "flicker", "-q", toy_manifest])
    table = parquet(result)
    assert table.column_names == ["id", "path", "prompt", "model", "score", "error", "prompt_id", "motion",
                                  "brightness", "flicker"]
    manifest = pq.read_table(toy_manifest)
    assert table.column("id").to_pylist() == manifest.column("id").to_pylist()
    assert table.column("prompt").to_pylist() == manifest.column("prompt").to_pylist()
    assert table.column("score").to_pylist() == table.column("motion").to_pylist()
    assert set(table.column("model").to_pylist()) == {"motion,brightness,flicker"}


def test_summary_goes_to_stderr(run_vpt, toy_manifest, tmp_path):
    out = tmp_path / "scores.parquet"
    result = run_vpt(["score", "-m", "brightness", toy_manifest, "-o", out])
    assert result.exit_code == 0 and result.stdout == b""
    lines = result.stderr.splitlines()
    assert lines[0] == "24 videos scored with brightness"
    assert lines[1].split() == ["column", "n", "mean", "std", "min", "max"]
    assert lines[2].split()[:2] == ["brightness", "24"]
    assert pq.read_table(out).num_rows == 24


def test_prompts_table_supplies_prompts_by_id(run_vpt, mixed_dir, tmp_path):
    prompts = tmp_path / "prompts.csv"
    prompts.write_text("id,prompt\ndark,a dark room\nsub/bright,a bright sky\nempty,nothing\nnotes,text\n")
    table = parquet(run_vpt(["score", "-m", "brightness", "-q", mixed_dir, "--prompts", prompts]))
    assert dict(zip(table.column("id").to_pylist(), table.column("prompt").to_pylist()))["dark"] == "a dark room"
    prompts.write_text("id,prompt\ndark,a dark room\n")
    result = run_vpt(["score", "-m", "brightness", "-q", mixed_dir, "--prompts", prompts])
    assert (result.exit_code, result.stderr) == (
        2, f"vpt: error: {prompts}: no prompt for video 'empty' and 2 more; add a row with its id\n"
    )


@pytest.mark.parametrize("args, message", [
    (["-m", "sharpness", "x"], "unknown reward model 'sharpness'; available: aesthetic, background-consistency, "
                               "brightness, clip, dynamic-degree, flicker, motion, motion-smoothness, "
                               "pixel-smoothness, subject-consistency, videoreward, KIND:DIR (e.g. clip:DIR), a "
                               "VideoReward checkpoint directory, or a reward server http://HOST:PORT/"),
    (["-m", "brightness"], "no videos given; name a directory, files, a glob or a videos manifest"),
    (["-m", "brightness", "missing/"], "missing/: no such file or directory"),
    (["-m", "brightness", "nothing-*.mp4"], "nothing-*.mp4: no video file matches this pattern"),
    (["-m", "brightness,brightness", "x"], "two reward models write the column 'brightness'; score them in "
                                           "separate runs"),
])
def test_bad_invocations(run_vpt, tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    write_video(tmp_path / "x", np.zeros((4, 16, 16, 3), np.uint8), fps=4)
    result = run_vpt(["score", *args])
    assert (result.exit_code, result.stdout, result.stderr) == (2, b"", f"vpt: error: {message}\n")


def test_manifest_problems_are_reported(run_vpt, tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_text("id,path\na,a.mp4\na,b.mp4\n")
    result = run_vpt(["score", "-m", "brightness", manifest])
    assert result.stderr == (
        f"vpt: error: two videos have the id 'a' ({'a.mp4'} and b.mp4); give them distinct ids in a videos manifest\n"
    )
    manifest.write_text("id,file\na,a.mp4\n")
    result = run_vpt(["score", "-m", "brightness", manifest])
    assert result.stderr == (
        f"vpt: error: {manifest}: missing column 'path' (schema videos v1 requires: path)\n"
    )
    result = run_vpt(["score", "-m", "brightness", manifest, tmp_path])
    assert result.stderr == f"vpt: error: {manifest}: give a manifest table on its own, not mixed with other inputs\n"


def test_the_documented_shell_pipeline(tmp_path, toy_manifest):
    videos = toy_manifest.parent / "clips"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(f"'{VPT}' score --model pixel-smoothness '{videos}' > scores.parquet", shell=True, check=True,
                   cwd=tmp_path, env=env, capture_output=True)
    assert pq.read_table(tmp_path / "scores.parquet").num_rows == 24
    piped = subprocess.run(f"'{VPT}' score -q -m brightness '{toy_manifest}' | '{VPT}' schema check -", shell=True,
                           capture_output=True, text=True, env=env)
    assert (piped.returncode, piped.stdout) == (0, "-: ok (scores v1, 24 rows)\n")
