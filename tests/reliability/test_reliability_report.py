"""Bad inputs to vpt report: each is refused with one line on stderr and exit code 2, no traceback, and nothing
written (no report folder, no temporary of one, a user's folder left as it was)."""

from __future__ import annotations

from pathlib import Path

import pytest

from reliability_world import World, assert_refused, leftovers


def corrupt(tmp: Path) -> Path:
    (tmp / "run").mkdir()
    (tmp / "run" / "metrics.parquet").write_bytes(b"PAR1 this is not a parquet file PAR1")
    return tmp / "run"


def no_tables(tmp: Path) -> Path:
    (tmp / "run" / "notes").mkdir(parents=True)
    (tmp / "run" / "notes" / "readme.txt").write_text("nothing here\n")
    return tmp / "run"


CASES = {
    "missing run": (lambda w, tmp: [tmp / "nope"],
                    lambda w, tmp: f"{tmp / 'nope'}: no such file or directory; name a run directory or a table"),
    "no declared tables": (lambda w, tmp: [no_tables(tmp)],
                           lambda w, tmp: f"{tmp / 'run'}: holds no table a report shows (rollouts, videos, scores, "
                                          "metrics, gsb, gsb_counts, gsb_judgements, rewardbench) and no policy.json; "
                                          "name a run directory or one of these tables"),
    "bad per-prompt": (lambda w, tmp: [w.rollouts, "--per-prompt", "0"],
                       lambda w, tmp: "--per-prompt 0: must be 1 or more (rows of videos per prompt)"),
    "base names no stage": (lambda w, tmp: [w.rollouts, w.scores, "--base", "nope"],
                            lambda w, tmp: "--base nope: names no stage of the report; stages: rollouts"),
    "tables missing": (lambda w, tmp: [w.rollouts, "--tables", tmp / "gone"],
                       lambda w, tmp: f"--tables {tmp / 'gone'}: no such directory; give the folder the make table-* "
                                      "targets wrote their .txt tables to"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_inputs_are_refused_and_nothing_is_written(run_vpt, world: World, tmp_path, case):
    args, message = CASES[case]
    result = run_vpt(["report", *args(world, tmp_path), "-o", tmp_path / "out"])
    assert_refused(result, message(world, tmp_path), tmp_path / "out")


def test_a_corrupt_table_is_refused(run_vpt, world: World, tmp_path):
    run = corrupt(tmp_path)
    result = run_vpt(["report", world.rollouts, run, "-o", tmp_path / "out"])
    assert (result.exit_code, result.stdout) == (2, b"") and "Traceback" not in result.stderr
    assert result.stderr.startswith(f"vpt: error: {run / 'metrics.parquet'}: not a readable table (")
    assert result.stderr.endswith("; replace or remove it, or name the run's other tables\n")
    assert result.stderr.count("\n") == 1 and leftovers(tmp_path / "out") == []


def test_an_existing_folder_of_the_user_is_left_alone(run_vpt, world: World, tmp_path):
    mine = tmp_path / "out"
    (mine / "notes.txt").parent.mkdir()
    (mine / "notes.txt").write_text("mine\n")
    result = run_vpt(["report", world.rollouts, "-o", mine])
    assert_refused(result, f"{mine}: already exists; remove it or choose another --out")
    assert [p.name for p in mine.iterdir()] == ["notes.txt"] and (mine / "notes.txt").read_text() == "mine\n"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
