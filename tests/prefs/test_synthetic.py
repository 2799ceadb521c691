"""Synthetic temporal negatives: the index maps, and the written clips checked on their decoded frames."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from vpt.errors import VptError
from vpt.io.tables import write_table
from vpt.io.video import probe, read_frames, write_video
from vpt.prefs.pairs import pair_id
from vpt.prefs.synthetic import (
    KINDS,
    Clip,
    freeze_indices,
    kind_rng,
    load_clips,
    make_negatives,
    negative_indices,
    reverse_indices,
    shuffle_indices,
    synthetic_prefs,
)

TOLERANCE = 3.0  # mean abs difference (levels) allowed between a frame and its re-encoded copy


# ---------------------------------------------------------------------------------------------------------------------
# Clips


def ramp_clip(frames: int = 9, size: int = 48) -> np.ndarray:
    """Frames that are far apart from each other (background 25 levels brighter per frame, a moving square), so a
    decoded frame names its source frame without ambiguity."""
    video = np.empty((frames, size, size, 3), np.uint8)
    for t in range(frames):
        video[t] = 20 + 25 * t
        video[t, 4:12, 2 + 2 * t:10 + 2 * t] = (230, 40, 40)
    return video


@pytest.fixture(scope="module")
def clips_dir(tmp_path_factory) -> Path:
    """A manifest of hand-made clips: ``ramp`` (9 distinct frames, 12.5 fps), ``still`` (static), ``pal`` (a
    palindrome: its reversal is itself), ``one`` (a single frame), with a ``time_symmetric`` column."""
    root = tmp_path_factory.mktemp("clips")
    ramp = ramp_clip()
    write_video(root / "ramp.mp4", ramp, fps=12.5)
    write_video(root / "still.mp4", np.repeat(ramp[:1], 6, axis=0), fps=8)
    # lossless, so that the decoded palindrome is still one (lossy coding makes frame 0 and 4 differ a little)
    write_video(root / "pal.mp4", ramp[[0, 3, 6, 3, 0]], fps=8, crf=0)
    write_video(root / "one.mp4", ramp[:1], fps=8)
    rows = [{"id": name, "path": f"{name}.mp4", "prompt": f"clip {name}", "time_symmetric": name == "pal"}
            for name in ("ramp", "still", "pal", "one")]
    write_table(rows, root / "videos.parquet", "videos")
    return root


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> Path:
    from vpt.toyworld import write_toy_videos

    return write_toy_videos(tmp_path_factory.mktemp("toy"), n=5, seed=0, frames=8, height=48, width=48)


def mean_abs(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).mean())


def read(path) -> np.ndarray:
    return read_frames(path)


# ---------------------------------------------------------------------------------------------------------------------
# Index maps


def test_reverse_indices():
    assert reverse_indices(5).tolist() == [4, 3, 2, 1, 0]
    assert reverse_indices(5).dtype == np.int64
    assert reverse_indices(1).tolist() == [0]
    with pytest.raises(ValueError):
        reverse_indices(0)


@pytest.mark.parametrize("window", [2, 3, 4, 5])
@pytest.mark.parametrize("frames", [2, 3, 5, 8, 9, 13])
def test_shuffle_permutes_every_window_and_never_keeps_one(frames, window):
    for seed in range(20):
        indices = shuffle_indices(frames, window, np.random.default_rng(seed))
        assert indices.dtype == np.int64 and indices.shape == (frames,)
        for start in range(0, frames, window):
            block = indices[start:start + window]
            own = np.arange(start, min(start + window, frames))
            assert sorted(block.tolist()) == own.tolist()  # a permutation of its own frames
            if own.size >= 2:
                assert not np.array_equal(block, own)  # never the identity
            else:
                assert block.tolist() == own.tolist()  # a trailing single frame stays


def test_shuffle_exact_values_and_determinism():
    # windows of 2 have one non-identity permutation; the trailing single frame 4 stays
    assert shuffle_indices(5, 2, np.random.default_rng(7)).tolist() == [1, 0, 3, 2, 4]
    first = shuffle_indices(16, 4, np.random.default_rng(3))
    assert np.array_equal(first, shuffle_indices(16, 4, np.random.default_rng(3)))
    others = [shuffle_indices(16, 4, np.random.default_rng(seed)) for seed in range(4, 10)]
    assert any(not np.array_equal(first, other) for other in others)


def test_shuffle_errors():
    with pytest.raises(ValueError):
        shuffle_indices(1, 4, np.random.default_rng(0))
    with pytest.raises(ValueError):
        shuffle_indices(8, 1, np.random.default_rng(0))


def test_freeze_holds_one_frame_over_a_span_of_the_right_length():
    starts = set()
    for seed in range(60):
        indices = freeze_indices(10, 0.3, np.random.default_rng(seed))
        assert indices.dtype == np.int64
        moved = np.flatnonzero(indices != np.arange(10))
        start = int(moved[0]) - 1
        assert indices[start:start + 3].tolist() == [start] * 3  # L = round(0.3 * 10) = 3
        outside = np.r_[0:start, start + 3:10]
        assert indices[outside].tolist() == outside.tolist()
        starts.add(start)
    assert starts == set(range(0, 8))  # every start in [0, T - L] occurs
    assert freeze_indices(10, 1.0, np.random.default_rng(0)).tolist() == [0] * 10
    assert (freeze_indices(10, 0.01, np.random.default_rng(0)) != np.arange(10)).sum() == 1  # L is at least 2
    assert freeze_indices(2, 0.5, np.random.default_rng(0)).tolist() == [0, 0]


@pytest.mark.parametrize("frames, fraction", [(1, 0.5), (10, 0.0), (10, 1.5), (10, -0.2), (10, float("nan"))])
def test_freeze_errors(frames, fraction):
    with pytest.raises(ValueError):
        freeze_indices(frames, fraction, np.random.default_rng(0))


def test_each_negative_has_its_own_seeded_generator():
    draw = lambda seed, clip, kind: negative_indices(kind, 32, kind_rng(seed, clip, kind)).tolist()  # noqa: E731
    assert draw(0, "a", "shuffle") == draw(0, "a", "shuffle")
    assert draw(0, "a", "shuffle") != draw(1, "a", "shuffle")
    assert draw(0, "a", "shuffle") != draw(0, "b", "shuffle")


# ---------------------------------------------------------------------------------------------------------------------
# Written negatives, checked on decoded frames


def negatives(clips_dir, tmp_path, **options):
    options.setdefault("seed", 5)
    return synthetic_prefs(clips_dir / "videos.parquet", tmp_path / "out", **options)


def row_of(made, clip_id, kind):
    (row,) = [row for row in made.rows if row["id_b"] == f"{clip_id}:{kind}"]
    return row


def test_rows_point_from_the_source_to_its_negative(clips_dir, tmp_path):
    made = negatives(clips_dir, tmp_path)
    row = row_of(made, "ramp", "shuffle")
    source, negative = str(clips_dir / "ramp.mp4"), str(tmp_path / "out" / "ramp.shuffle.mp4")
    assert row == {"pair_id": pair_id("ramp", "ramp:shuffle", "clip ramp", "synthetic:shuffle"), "path_a": source,
                   "path_b": negative, "prompt": "clip ramp", "id_a": "ramp", "id_b": "ramp:shuffle",
                   "vq": "invalid", "mq": "a", "ta": "invalid", "overall": "a", "source": "synthetic:shuffle"}
    # manifest order, then kind order; only what differs from its source
    assert [r["id_b"] for r in made.rows] == ["ramp:reverse", "ramp:shuffle", "ramp:freeze", "pal:shuffle",
                                              "pal:freeze"]
    assert made.skipped == {"no visible change": 4, "too short": 3}


@pytest.mark.parametrize("kind", KINDS)
def test_negative_keeps_fps_frame_count_and_size(clips_dir, tmp_path, kind):
    made = negatives(clips_dir, tmp_path, kinds=[kind])
    source, negative = probe(clips_dir / "ramp.mp4"), probe(row_of(made, "ramp", kind)["path_b"])
    assert (negative.fps, negative.frames, negative.height, negative.width) == \
           (source.fps, source.frames, source.height, source.width) == (12.5, 9, 48, 48)


def test_decoded_negatives_show_the_source_frames_in_the_new_order(clips_dir, tmp_path):
    made = negatives(clips_dir, tmp_path, window=4, freeze_fraction=0.4)
    source = read(clips_dir / "ramp.mp4")

    reversed_ = read(row_of(made, "ramp", "reverse")["path_b"])
    assert all(mean_abs(reversed_[t], source[8 - t]) < TOLERANCE for t in range(9))

    shuffled = read(row_of(made, "ramp", "shuffle")["path_b"])
    order = negative_indices("shuffle", 9, kind_rng(5, "ramp", "shuffle"), window=4)
    assert order[8] == 8 and not np.array_equal(order, np.arange(9))
    for t in range(9):
        assert mean_abs(shuffled[t], source[order[t]]) < TOLERANCE  # the frame the permutation names...
        if order[t] != t:
            assert mean_abs(shuffled[t], source[t]) > 5 * TOLERANCE  # ...not the one that was there

    frozen = read(row_of(made, "ramp", "freeze")["path_b"])
    held = negative_indices("freeze", 9, kind_rng(5, "ramp", "freeze"), freeze_fraction=0.4)
    start = int(np.flatnonzero(held != np.arange(9))[0]) - 1
    span = np.arange(start, start + 4)  # round(0.4 * 9) frames
    assert held[span].tolist() == [start] * 4
    assert all(mean_abs(frozen[t], frozen[t + 1]) < 1.0 for t in span[:-1])  # constant inside the span
    assert mean_abs(frozen[span[-1]], source[span[-1]]) > 5 * TOLERANCE  # the clip really hangs
    for t in np.setdiff1d(np.arange(9), span):
        assert mean_abs(frozen[t], source[t]) < TOLERANCE  # untouched outside


def test_toy_clip_negatives_match_their_index_maps_on_decoded_frames(toy, tmp_path):
    made = synthetic_prefs(toy, tmp_path / "out", seed=0)
    assert made.rows and made.skipped["no visible change"] >= 1  # toy-0000 stands still
    for row in made.rows:
        source, negative = read(row["path_a"]), read(row["path_b"])
        kind = row["source"].split(":")[1]
        order = negative_indices(kind, len(source), kind_rng(0, row["id_a"], kind))
        assert negative.shape == source.shape
        assert mean_abs(negative, source[order]) < TOLERANCE


def test_reencoded_source_goes_through_the_same_encoder(clips_dir, tmp_path):
    made = negatives(clips_dir, tmp_path, reencode_source=True, kinds=["reverse"])
    (row,) = made.rows
    assert row["path_a"] == str(tmp_path / "out" / "ramp.source.mp4")
    assert row["pair_id"] == pair_id("ramp", "ramp:reverse", "clip ramp", "synthetic:reverse")
    assert mean_abs(read(row["path_a"]), read(clips_dir / "ramp.mp4")) < TOLERANCE
    assert probe(row["path_a"]).fps == 12.5
    assert sorted(os.listdir(tmp_path / "out")) == ["ramp.reverse.mp4", "ramp.source.mp4"]  # none for skipped clips


# ---------------------------------------------------------------------------------------------------------------------
# Determinism


def files(directory: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(directory.iterdir())}


def test_same_seed_same_rows_and_bytes_whatever_the_order_and_workers(toy, tmp_path):
    clips = load_clips(toy)
    first = make_negatives(clips, tmp_path / "out", seed=3, workers=1)
    written = files(tmp_path / "out")
    progress = []
    again = make_negatives(clips, tmp_path / "again", seed=3, workers=2, on_progress=progress.append)
    relocated = [{**row, "path_b": row["path_b"].replace(f"{os.sep}again{os.sep}", f"{os.sep}out{os.sep}")}
                 for row in again.rows]
    assert relocated == first.rows and again.skipped == first.skipped
    assert files(tmp_path / "again") == written
    assert progress == [1] * len(clips)
    backwards = make_negatives(clips[::-1], tmp_path / "backwards", seed=3, workers=3)
    assert sorted(row["pair_id"] for row in backwards.rows) == sorted(row["pair_id"] for row in first.rows)
    assert files(tmp_path / "backwards") == written

    make_negatives(clips, tmp_path / "other", seed=4, kinds=["shuffle", "freeze"])
    changed = [name for name, data in files(tmp_path / "other").items() if written.get(name) != data]
    assert any(name.endswith(".shuffle.mp4") for name in changed)
    assert any(name.endswith(".freeze.mp4") for name in changed)


def test_ids_that_would_share_a_file_get_distinct_files(clips_dir, tmp_path):
    ids = ["a/b", "a b", "Clip", "clip"]
    clips = [Clip(clip_id, clips_dir / "ramp.mp4") for clip_id in ids]
    made = make_negatives(clips, tmp_path / "out", kinds=["reverse"])
    names = [Path(row["path_b"]).name for row in made.rows]
    assert len({name.casefold() for name in names}) == 4
    assert sorted(names) == sorted(os.listdir(tmp_path / "out"))


# ---------------------------------------------------------------------------------------------------------------------
# What is left out, and errors


def test_time_symmetric_clips_get_no_reverse(clips_dir, tmp_path):
    made = negatives(clips_dir, tmp_path, skip_symmetric=True)
    assert [r["id_b"] for r in made.rows] == ["ramp:reverse", "ramp:shuffle", "ramp:freeze", "pal:shuffle",
                                              "pal:freeze"]
    # pal is marked: its reversal counts as time-symmetric (before the equality check would have caught it)
    assert made.skipped == {"time-symmetric": 1, "no visible change": 3, "too short": 3}
    clips = load_clips(clips_dir / "videos.parquet", symmetric_column="time_symmetric")
    assert [clip.time_symmetric for clip in clips] == [False, False, True, False]


def test_skip_symmetric_without_the_column(toy, tmp_path):
    with pytest.raises(VptError) as error:
        synthetic_prefs(toy, tmp_path / "out", skip_symmetric=True)
    assert str(error.value) == (f"{toy}: has no column 'time_symmetric' marking the time-symmetric videos (true "
                                "when a video looks the same played backwards); add it, or do not skip "
                                "time-symmetric videos")
    with pytest.raises(VptError, match="has no column 'symmetric'"):
        synthetic_prefs(toy, tmp_path / "out", skip_symmetric=True, symmetric_column="symmetric")
    with pytest.raises(ValueError, match="time-symmetric"):  # clips that do not say cannot be skipped
        make_negatives(load_clips(toy), tmp_path / "out", skip_symmetric=True)
    # without a reversal there is nothing to skip, and no column is needed
    made = synthetic_prefs(toy, tmp_path / "out", kinds=["freeze"], skip_symmetric=True)
    assert made.rows and "time-symmetric" not in made.skipped


def test_bad_symmetric_value(tmp_path):
    (tmp_path / "videos.csv").write_text("id,path,time_symmetric\na,a.mp4,maybe\n")
    with pytest.raises(VptError) as error:
        load_clips(tmp_path / "videos.csv", symmetric_column="time_symmetric")
    assert str(error.value) == f"{tmp_path / 'videos.csv'}: row 1: column 'time_symmetric' has 'maybe'; expected " \
                               "true or false"


def test_unreadable_video(clips_dir, tmp_path):
    (tmp_path / "text.mp4").write_text("not a video")
    clips = [Clip("ramp", clips_dir / "ramp.mp4"), Clip("gone", tmp_path / "gone.mp4"),
             Clip("text", tmp_path / "text.mp4")]
    with pytest.raises(VptError) as error:
        make_negatives(clips[:2], tmp_path / "out")
    assert str(error.value) == f"{tmp_path / 'gone.mp4'}: file not found"
    with pytest.raises(VptError) as error:
        make_negatives(clips[2:], tmp_path / "out", workers=2)
    assert str(error.value).startswith(f"{tmp_path / 'text.mp4'}: not a readable video (")

    made = make_negatives(clips, tmp_path / "out", skip_unreadable=True, workers=2)
    assert [row["id_b"] for row in made.rows] == ["ramp:reverse", "ramp:shuffle", "ramp:freeze"]
    assert made.skipped == {"unreadable": 6}
    assert made.unreadable[0] == f"{tmp_path / 'gone.mp4'}: file not found"
    assert len(made.unreadable) == 2


@pytest.mark.parametrize("options, message", [
    ({"kinds": ["reverse", "blur"]}, "unknown kind of negative 'blur'; choose from reverse, shuffle, freeze"),
    ({"kinds": []}, "no kind of negative asked for; choose from reverse, shuffle, freeze"),
    ({"window": 1}, "shuffle window must be a whole number of frames >= 2, got 1"),
    ({"freeze_fraction": 0}, "freeze fraction must be in (0, 1], got 0"),
    ({"workers": 0}, "workers must be a whole number >= 1, got 0"),
])
def test_bad_options(clips_dir, tmp_path, options, message):
    with pytest.raises(VptError) as error:
        make_negatives([Clip("ramp", clips_dir / "ramp.mp4")], tmp_path, **options)
    assert str(error.value) == message


def test_duplicate_ids(clips_dir, tmp_path):
    clips = [Clip("x", clips_dir / "ramp.mp4"), Clip("x", clips_dir / "pal.mp4")]
    with pytest.raises(VptError, match="two videos have the id 'x'"):
        make_negatives(clips, tmp_path)
