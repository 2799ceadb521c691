"""Human annotations (VideoAlign CSV layout) -> prefs rows: labels, majority overall, every row problem."""

from __future__ import annotations

import pytest

from vpt.errors import VptError
from vpt.prefs.annotations import majority_label, pairs_from_annotations
from vpt.prefs.pairs import balance, pair_id, swap_coins, swap_sides

HEADER = "path_A,path_B,prompt,VQ,MQ,TA,fps_A,num_frames_A,fps_B,num_frames_B\n"


@pytest.fixture
def data(tmp_path):
    (tmp_path / "videos").mkdir()
    for name in ("1_A", "1_B", "2_A", "2_B", "3_A", "3_B"):
        (tmp_path / "videos" / f"example_{name}.mp4").touch()
    return tmp_path


def write(path, body: str, header: str = HEADER):
    path.write_text(header + body)
    return path


def test_videoalign_layout_round_trips_to_prefs(data):
    csv = write(data / "data.csv", "./videos/example_1_A.mp4,./videos/example_1_B.mp4,a cat runs,A,B,same,8,48,8,48\n"
                                   "./videos/example_2_A.mp4,./videos/example_2_B.mp4,a dog sits,same,same,B,16,81,16,81\n"
                                   "./videos/example_3_A.mp4,./videos/example_3_B.mp4,rain,a, ,b,8,48,8,48\n")
    found = pairs_from_annotations(csv, data)
    assert found.total_rows == 3 and found.problems == []
    video = lambda name: str(data / "videos" / f"example_{name}.mp4")  # noqa: E731
    assert found.rows == [
        {"pair_id": pair_id("videos/example_1_A.mp4", "videos/example_1_B.mp4", "a cat runs", "annotations"), "path_a": video("1_A"),
         "path_b": video("1_B"), "prompt": "a cat runs", "vq": "a", "mq": "b", "ta": "tie", "overall": "tie",
         "source": "annotations", "annotation_row": 1},
        {"pair_id": pair_id("videos/example_2_A.mp4", "videos/example_2_B.mp4", "a dog sits", "annotations"), "path_a": video("2_A"),
         "path_b": video("2_B"), "prompt": "a dog sits", "vq": "tie", "mq": "tie", "ta": "b", "overall": "b",
         "source": "annotations", "annotation_row": 2},
        {"pair_id": pair_id("videos/example_3_A.mp4", "videos/example_3_B.mp4", "rain", "annotations"), "path_a": video("3_A"),
         "path_b": video("3_B"), "prompt": "rain", "vq": "a", "mq": "invalid", "ta": "b", "overall": "tie",
         "source": "annotations", "annotation_row": 3},
    ]


def test_an_overall_column_is_used_as_given(data):
    csv = write(data / "data.csv", "videos/example_1_A.mp4,videos/example_1_B.mp4,cat,A,A,A,B\n"
                                   "videos/example_2_A.mp4,videos/example_2_B.mp4,dog,A,A,A,\n",
                header="path_A,path_B,prompt,VQ,MQ,TA,Overall\n")
    assert [row["overall"] for row in pairs_from_annotations(csv, data).rows] == ["b", "invalid"]


@pytest.mark.parametrize("labels, expected", [
    (["a", "a", "b"], "a"), (["b", "tie", "invalid"], "b"), (["a", "b", "tie"], "tie"),
    (["tie", "tie", "invalid"], "tie"), (["invalid", "invalid", "invalid"], "invalid"),
])
def test_majority_overall(labels, expected):
    assert majority_label(labels) == expected


def test_every_problem_is_reported_with_its_row(data):
    csv = write(data / "data.csv", "videos/example_1_A.mp4,videos/example_1_B.mp4,cat,A,B,same,8,8,8,8\n"
                                   "videos/example_2_A.mp4,videos/missing.mp4,dog,A,B,same,8,8,8,8\n"
                                   "videos/example_3_A.mp4,videos/example_3_B.mp4,rain,A,better,same,8,8,8,8\n"
                                   "videos/example_1_B.mp4,videos/example_1_A.mp4,cat,B,A,same,8,8,8,8\n"
                                   "videos/example_2_A.mp4,videos/example_2_A.mp4,dog,A,B,same,8,8,8,8\n"
                                   "videos/example_1_A.mp4,videos/example_1_B.mp4,another prompt,A,B,same,8,8,8,8\n")
    with pytest.raises(VptError) as error:
        pairs_from_annotations(csv, data)
    assert str(error.value) == (
        f"{csv}: row 2: path_B 'videos/missing.mp4' is not a file under {data}; fix the path or give --data-dir "
        f"(3 more rows with problems; --skip-invalid leaves such rows out)")

    found = pairs_from_annotations(csv, data, skip_invalid=True)
    assert [row["annotation_row"] for row in found.rows] == [1, 6]  # another prompt: another pair
    assert [(p.row, p.kind, p.message) for p in found.problems] == [
        (2, "missing video", f"row 2: path_B 'videos/missing.mp4' is not a file under {data}; fix the path or give "
                             f"--data-dir"),
        (3, "unknown label", "row 3: column 'MQ' has 'better'; expected A, B or same"),
        (4, "duplicate pair", "row 4: repeats the pair of row 1 (the same two videos and prompt); keep one of them"),
        (5, "same video twice", "row 5: path_A and path_B are the same video; a pair needs two different videos"),
    ]
    assert found.skipped == {"missing video": 1, "unknown label": 1, "duplicate pair": 1, "same video twice": 1}
    assert len(pairs_from_annotations(csv, data, check_files=False, skip_invalid=True).rows) == 3


def test_a_single_problem_row_names_no_others(data):
    csv = write(data / "data.csv", "videos/example_1_A.mp4,videos/example_1_B.mp4,cat,A,B,C,8,8,8,8\n")
    with pytest.raises(VptError, match=r"row 1: column 'TA' has 'C'; expected A, B or same \(--skip-invalid leaves "
                                       r"such rows out\)$"):
        pairs_from_annotations(csv, data)


def test_missing_label_column_is_a_schema_error(data):
    csv = write(data / "data.csv", "videos/example_1_A.mp4,videos/example_1_B.mp4,cat,A,B\n",
                header="path_A,path_B,prompt,VQ,MQ\n")
    with pytest.raises(VptError, match=r"data.csv: missing column 'TA' \(schema annotations v1 requires: path_A, "
                                       r"path_B, prompt, VQ, MQ, TA\)"):
        pairs_from_annotations(csv, data)


def test_balancing_is_a_fair_seeded_coin_that_keeps_the_judgement():
    ids = [pair_id(f"a{i}.mp4", f"b{i}.mp4", "p", "test") for i in range(4000)]
    coins = swap_coins(ids, seed=0)
    assert abs(coins.mean() - 0.5) < 0.03
    assert (swap_coins(ids, seed=0) == coins).all() and (swap_coins(ids, seed=1) != coins).any()
    assert (swap_coins(ids[::-1], seed=0) == coins[::-1]).all()  # per pair, not per position

    row = {"pair_id": ids[0], "path_a": "x.mp4", "path_b": "y.mp4", "id_a": "x", "id_b": "y", "vq": "a", "mq": "b",
           "ta": "tie", "overall": "invalid", "vq_mos_a": 4.0, "vq_mos_b": 2.0, "gap": 0.5}
    assert swap_sides(row) == {"pair_id": ids[0], "path_a": "y.mp4", "path_b": "x.mp4", "id_a": "y", "id_b": "x",
                               "vq": "b", "mq": "a", "ta": "tie", "overall": "invalid", "vq_mos_a": 2.0,
                               "vq_mos_b": 4.0, "gap": 0.5}
    assert swap_sides(swap_sides(row)) == row
    rows = [dict(row, pair_id=identifier) for identifier in ids[:50]]
    out = balance(rows, seed=0)
    assert [r["path_a"] == "y.mp4" for r in out] == list(swap_coins(ids[:50], 0))
