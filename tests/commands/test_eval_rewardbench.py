import numpy as np
import pyarrow.parquet as pq
import pytest

from vpt.io.video import write_video

# Three clips of grey level 20, 100, 220 and four judged pairs. Every dimension is read from `brightness`, so the
# margins are (bright-dark) +200, (dark-mid) -80, (mid-bright) -120, (bright-mid) +120 grey levels.
BENCH = """path_A,path_B,prompt,VQ,MQ,TA
bright.mp4,dark.mp4,a lamp,A,A,same
dark.mp4,mid.mp4,a lamp,B,A,same
mid.mp4,bright.mp4,a lamp,same,B,A
bright.mp4,mid.mp4,a lamp,A,same,B
"""
# Hand-worked (see the margins above):
#   VQ  labels A,B,tie,A:  w/o ties 3/3; with ties best at eps 0: 3/4
#   MQ  labels A,A,B,tie:  w/o ties 2/3; with ties best 2/4 (eps 0 first)
#   TA  labels tie,tie,A,B: w/o ties 0/2; with ties best 2/4 at eps = |bright - dark|
EXPECTED = {"VQ": (75.0, 100.0), "MQ": (50.0, 200 / 3), "TA": (50.0, 0.0)}
MAP = ["--map", "VQ=brightness", "--map", "MQ=brightness", "--map", "TA=brightness"]


@pytest.fixture
def bench(tmp_path):
    for name, level in [("dark", 20), ("mid", 100), ("bright", 220)]:
        write_video(tmp_path / f"{name}.mp4", np.full((4, 32, 32, 3), level, np.uint8), fps=4)
    path = tmp_path / "bench.csv"
    path.write_text(BENCH)
    return path


def parse(output: str) -> dict[str, list[str]]:
    lines = output.splitlines()
    assert lines[0].split() == ["dimension", "column", "acc", "w/", "ties", "tie", "eps", "acc", "w/o", "ties",
                                "pairs", "ties"]
    return {line.split()[0]: line.split() for line in lines[1:]}


def check(rows):
    assert set(rows) == set(EXPECTED)
    for dimension, (with_ties, without_ties) in EXPECTED.items():
        row = rows[dimension]
        assert (float(row[2]), float(row[4]), row[5], row[6]) == (
            pytest.approx(with_ties, abs=0.005), pytest.approx(without_ties, abs=0.005), "4",
            {"VQ": "1", "MQ": "1", "TA": "2"}[dimension])


def test_with_a_model_every_unique_video_is_scored_once(run_vpt, bench, tmp_path, monkeypatch):
    import vpt.rewards.engine as engine

    decoded = []
    real = engine.decode_for
    monkeypatch.setattr(engine, "decode_for", lambda file, samplings: decoded.append(file) or real(file, samplings))
    out = tmp_path / "rb.parquet"
    result = run_vpt(["eval", "rewardbench", bench, "-m", "brightness", "-q", *MAP, "-o", out])
    assert result.exit_code == 0, result.stderr
    check(parse(result.output))
    assert sorted(p.name for p in decoded) == ["bright.mp4", "dark.mp4", "mid.mp4"]
    table = pq.read_table(out)
    assert table.schema.metadata[b"vpt.schema"] == b"rewardbench"
    ta = table.to_pylist()[2]
    assert ta["dimension"] == "TA" and ta["tie_threshold"] == pytest.approx(200 / 255, abs=0.01)


def test_from_a_scores_table_gives_the_same_numbers(run_vpt, bench, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert run_vpt(["score", "-m", "brightness", "-q", ".", "-o", "scores.parquet"]).exit_code == 0
    result = run_vpt(["eval", "rewardbench", bench, "--scores", "scores.parquet", *MAP])
    assert result.exit_code == 0, result.stderr
    check(parse(result.output))


@pytest.mark.parametrize("args, message", [
    ([], "give exactly one of --scores TABLE or --model NAME"),
    (["-m", "brightness", "--map", "XX=brightness"], "--map XX=brightness: expected DIM=COLUMN with DIM one of VQ, "
                                                    "MQ, TA, Overall"),
    (["-m", "brightness"], "brightness: has no column 'vq' for VQ; choose one with --map VQ=COLUMN"),
])
def test_bad_invocations(run_vpt, bench, args, message):
    result = run_vpt(["eval", "rewardbench", bench, "-q", *args])
    assert (result.exit_code, result.stderr) == (2, f"vpt: error: {message}\n")


def test_bad_benchmark_rows_and_missing_scores(run_vpt, bench, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    bench.write_text(BENCH.replace("A,A,same", "A,C,same"))
    result = run_vpt(["eval", "rewardbench", bench, "-m", "brightness", "-q", *MAP])
    assert result.stderr == f"vpt: error: {bench}: row 1: column 'MQ' has 'C'; expected one of A, B, same\n"
    bench.write_text(BENCH)
    assert run_vpt(["score", "-m", "brightness", "-q", "dark.mp4", "-o", "scores.parquet"]).exit_code == 0
    result = run_vpt(["eval", "rewardbench", bench, "--scores", "scores.parquet", *MAP])
    assert result.stderr == (
        f"vpt: error: scores.parquet: no score for video bright.mp4 ({bench} row 1); score the videos under the "
        "same paths, or let the command score them with --model\n"
    )
