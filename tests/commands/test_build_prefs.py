"""``vpt build-prefs`` end to end: annotations and scored groups into prefs tables that train-reward reads."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from vpt.io.tables import read_table, write_table
from vpt.io.video import FrameSampling
from vpt.algo.preference import A_WINS, B_WINS, TIE
from vpt.stages.reward import read_preferences


@pytest.fixture(scope="module")
def clips(toy_manifest):
    rows = read_table(toy_manifest, "videos").to_pylist()
    return [dict(row, path=str(toy_manifest.parent / row["path"])) for row in rows]


def test_annotations_become_a_prefs_table_train_reward_reads(run_vpt, clips, tmp_path):
    data = tmp_path / "data"
    (data / "videos").mkdir(parents=True)
    for row in clips[:6]:
        os.symlink(row["path"], data / "videos" / Path(row["path"]).name)
    names = [f"./videos/{Path(row['path']).name}" for row in clips[:6]]
    csv = data / "train.csv"
    csv.write_text("path_A,path_B,prompt,VQ,MQ,TA,fps_A,num_frames_A,fps_B,num_frames_B\n"
                   f"{names[0]},{names[1]},a red ball,A,B,same,8,16,8,16\n"
                   f"{names[2]},{names[3]},a blue cube,B,B,A,8,16,8,16\n"
                   f"{names[4]},{names[5]},a green ring,same,A,A,8,16,8,16\n")
    out = tmp_path / "out" / "prefs.parquet"
    result = run_vpt(["build-prefs", "--from-annotations", csv, "-o", out, "--no-balance"])
    assert result.exit_code == 0, result.stderr
    assert result.stderr == "build-prefs: 3 pairs from 3 annotation rows\n" and result.stdout == b""
    table = pq.read_table(out)
    assert table.column("path_a").to_pylist() == [os.path.join("..", "data", n[2:]) for n in names[0::2]]
    assert [table.column(c).to_pylist() for c in ("vq", "mq", "ta", "overall")] == [
        ["a", "b", "tie"], ["b", "b", "a"], ["tie", "a", "a"], ["tie", "b", "a"]]
    assert table.schema.metadata[b"vpt.schema"] == b"prefs"

    decoded = read_preferences(out, FrameSampling(mode="count", count=4), workers=1)
    assert len(decoded) == 3 and len(decoded.files) == 6 and decoded.frames[0].shape[0] == 4
    assert decoded.labels.tolist() == [[A_WINS, B_WINS, TIE], [B_WINS, B_WINS, A_WINS], [TIE, A_WINS, A_WINS]]

    balanced = run_vpt(["build-prefs", "--from-annotations", csv, "--seed", "3", "-q"])
    assert balanced.exit_code == 0 and balanced.stderr == ""
    swapped = pq.read_table(io.BytesIO(balanced.stdout)).to_pylist()
    flip = {"a": "b", "b": "a", "tie": "tie"}
    for original, row in zip(table.to_pylist(), swapped):
        assert row["pair_id"] == original["pair_id"]
        assert os.path.isabs(row["path_a"])  # on stdout the paths are absolute
        if Path(row["path_a"]).name == Path(original["path_a"]).name:
            assert [row[c] for c in ("vq", "mq", "ta")] == [original[c] for c in ("vq", "mq", "ta")]
        else:
            assert [row[c] for c in ("vq", "mq", "ta")] == [flip[original[c]] for c in ("vq", "mq", "ta")]


def test_problem_rows_stop_the_run_or_are_counted(run_vpt, tmp_path):
    (tmp_path / "a.mp4").touch()
    (tmp_path / "b.mp4").touch()
    csv = tmp_path / "ann.csv"
    csv.write_text("path_A,path_B,prompt,VQ,MQ,TA\na.mp4,b.mp4,x,A,B,same\nb.mp4,a.mp4,x,A,B,same\n"
                   "a.mp4,c.mp4,x,A,B,same\na.mp4,b.mp4,y,A,worse,same\n")
    out = tmp_path / "prefs.parquet"
    failed = run_vpt(["build-prefs", "--from-annotations", csv, "-o", out])
    assert failed.exit_code == 2 and not out.exists()
    assert failed.stderr == (f"vpt: error: {csv}: row 2: repeats the pair of row 1 (the same two videos and prompt); "
                             f"keep one of them (2 more rows with problems; --skip-invalid leaves such rows out)\n")
    kept = run_vpt(["build-prefs", "--from-annotations", csv, "-o", out, "--skip-invalid"])
    assert kept.exit_code == 0
    assert kept.stderr.splitlines() == [
        f"vpt: warning: {csv}: row 2: repeats the pair of row 1 (the same two videos and prompt); keep one of them "
        f"(left out)",
        f"vpt: warning: {csv}: row 3: path_B 'c.mp4' is not a file under {tmp_path}; fix the path or give --data-dir "
        f"(left out)",
        f"vpt: warning: {csv}: row 4: column 'MQ' has 'worse'; expected A, B or same (left out)",
        "build-prefs: 1 pairs from 4 annotation rows; left out 3 rows (1 duplicate pair, 1 missing video, "
        "1 unknown label)",
    ]
    assert pq.read_table(out).num_rows == 1


def test_scored_groups_give_best_against_worst_pairs(run_vpt, clips, tmp_path):
    groups = [dict(row, group_id=f"g{i // 6}", prompt=f"prompt {i // 6}") for i, row in enumerate(clips)]
    manifest = tmp_path / "samples.parquet"
    write_table(groups, manifest, "videos")
    for model in ("brightness", "motion"):
        scored = run_vpt(["score", "-q", "-m", model, manifest, "-o", tmp_path / f"{model}.parquet"])
        assert scored.exit_code == 0, scored.stderr
    brightness = {r["id"]: r["score"] for r in pq.read_table(tmp_path / "brightness.parquet").to_pylist()}
    motion = {r["id"]: r["score"] for r in pq.read_table(tmp_path / "motion.parquet").to_pylist()}

    result = run_vpt(["build-prefs", "--from-scores", tmp_path / "brightness.parquet", "--videos", manifest,
                      "--no-balance", "-o", tmp_path / "prefs.parquet"])
    assert result.exit_code == 0, result.stderr
    assert result.stderr == "build-prefs: 4 pairs from 4 groups (by group_id)\n"
    rows = pq.read_table(tmp_path / "prefs.parquet").to_pylist()
    for index, row in enumerate(rows):  # an independent argmax / argmin per group
        members = [r["id"] for r in groups if r["group_id"] == f"g{index}"]
        best, worst = max(members, key=brightness.get), min(members, key=brightness.get)
        assert (row["id_a"], row["id_b"], row["prompt"]) == (best, worst, f"prompt {index}")
        assert row["gap"] == pytest.approx(brightness[best] - brightness[worst])
        assert not os.path.isabs(row["path_a"])  # relative to the table's directory
        assert (tmp_path / row["path_a"]).resolve() == Path(next(c["path"] for c in clips if c["id"] == best)).resolve()

    both = run_vpt(["build-prefs", "--from-scores", f"{tmp_path / 'brightness.parquet'},{tmp_path / 'motion.parquet'}",
                    "--videos", manifest, "--top-k", "2", "--no-balance", "-q"])
    assert both.exit_code == 0, both.stderr
    agreed = pq.read_table(io.BytesIO(both.stdout)).to_pylist()
    expected = []
    for g in range(4):
        members = sorted((r["id"] for r in groups if r["group_id"] == f"g{g}"), key=lambda i: -brightness[i])
        expected += [(a, b) for a in members[:2] for b in members[::-1][:2] if motion[a] > motion[b]]
    assert [(r["id_a"], r["id_b"]) for r in agreed] == expected and 0 < len(expected) < 16

    balanced = pq.read_table(io.BytesIO(run_vpt(["build-prefs", "--from-scores", tmp_path / "brightness.parquet",
                                                 "--videos", manifest, "--top-k", "3", "-q"]).stdout))
    sides = np.array(balanced.column("overall").to_pylist())
    assert set(sides) == {"a", "b"}  # the preferred video sits on both sides


def test_one_source_and_its_inputs_are_required(run_vpt, tmp_path):
    assert run_vpt(["build-prefs"]).stderr == (
        "vpt: error: give exactly one source: --from-annotations FILE, --from-scores SCORES --videos TABLE, or "
        "--synthetic KINDS --videos TABLE --out-dir DIR\n")
    missing = run_vpt(["build-prefs", "--from-scores", tmp_path / "s.parquet"])
    assert missing.exit_code == 2 and missing.stderr == (
        "vpt: error: --from-scores needs --videos TABLE: the videos or rollouts table the scores are of (it gives the "
        "groups and the paths)\n")


def test_synthetic_negatives_are_written_with_their_pairs(run_vpt, toy_manifest, tmp_path):
    source = tmp_path / "good.parquet"
    write_table(read_table(toy_manifest, "videos").to_pylist()[:6], source, "videos")  # relative paths: copy clips
    os.symlink(toy_manifest.parent / "clips", tmp_path / "clips")
    out = tmp_path / "prefs.parquet"
    args = ["build-prefs", "--synthetic", "reverse,freeze", "--videos", source, "--out-dir", tmp_path / "negatives",
            "-o", out, "--seed", "2"]
    result = run_vpt(args)
    assert result.exit_code == 0, result.stderr
    rows = pq.read_table(out).to_pylist()
    assert len(rows) == 10  # toy-0000 stands still: neither negative changes it
    assert result.stderr == "build-prefs: 10 pairs of 6 clips (reverse, freeze); left out: 2 no visible change\n"
    assert {row["source"] for row in rows} == {"synthetic:reverse", "synthetic:freeze"}
    for row in rows:
        negative_side = "a" if row["id_a"].endswith(("reverse", "freeze")) else "b"
        preferred = "b" if negative_side == "a" else "a"
        assert (row["mq"], row["overall"], row["vq"], row["ta"]) == (preferred, preferred, "invalid", "invalid")
        negative = row[f"path_{negative_side}"]
        assert negative.startswith("negatives/") and (tmp_path / negative).is_file()
    assert {row["overall"] for row in rows} == {"a", "b"}  # balanced
    again = run_vpt([tmp_path / "negatives-2" if arg == tmp_path / "negatives" else arg for arg in args])
    moved = [{key: value.replace("negatives-2/", "negatives/") if key.startswith("path") else value
              for key, value in row.items()} for row in pq.read_table(out).to_pylist()]
    assert moved == rows and again.stderr == result.stderr  # seeded and deterministic, pair ids included

    assert run_vpt(["build-prefs", "--synthetic", "reverse", "--videos", source]).stderr == (
        "vpt: error: --synthetic needs --videos TABLE (the good clips) and --out-dir DIR (where the negative clips "
        "are written)\n")
