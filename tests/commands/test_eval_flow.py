"""``vpt eval flow`` against known truth: the toy world's exact flow, and hand-written constant fields."""

import io

import numpy as np
import pyarrow.parquet as pq
import pytest

from vpt.io.flow import flow_path, read_flow, write_flow
from vpt.io.video import write_video
from vpt.toyworld import render_clip, sample_attributes, true_flow, write_toy_videos

COLUMNS = ["id", "path", "epe", "over_1px", "over_3px", "fl_all", "pairs", "error"]
HEADER = ["id", "EPE", ">1px", ">3px", "Fl-all", "pairs", "error"]


def lines(text: str) -> list[list[str]]:
    return [line.split() for line in text.splitlines()]


# ----------------------------------------------------------------------------------------- the toy world's truth


def test_true_flow_carries_every_shape_pixel_to_where_it_is_drawn_next():
    rng = np.random.default_rng(3)
    for _ in range(6):
        attrs = {**sample_attributes(rng, 9), "flicker": 0.0, "speed": 2.0, "jitter": 1.0, "frozen_frames": 0}
        clip, flow = render_clip(attrs, 9, 40, 48), true_flow(attrs, 9, 40, 48)
        assert flow.shape == (8, 40, 48, 2) and flow.dtype == np.float32
        for t in range(8):
            ys, xs = np.nonzero(np.abs(flow[t]).sum(axis=-1))
            dx, dy = flow[t, ys, xs].T.astype(int)
            inside = (ys + dy >= 0) & (ys + dy < 40) & (xs + dx >= 0) & (xs + dx < 48)
            np.testing.assert_array_equal(clip[t + 1, ys + dy, xs + dx][inside], clip[t, ys, xs][inside])
            # at 2 px/frame with 1 px of jitter the shape always moves, so the pixels that stand still are the flat
            # background
            background = clip[t][np.abs(flow[t]).sum(axis=-1) == 0]
            assert len(ys) and (background == background[0]).all()


def test_true_flow_is_zero_for_a_still_shape_and_inside_a_freeze():
    rng = np.random.default_rng(0)
    still = {**sample_attributes(rng), "speed": 0.0, "jitter": 0.0}
    assert not true_flow(still, 9, 32, 32).any()
    frozen = {**sample_attributes(rng), "speed": 3.0, "direction": "right", "jitter": 0.0, "frozen_start": 2,
              "frozen_frames": 4}
    moved = [float(np.abs(pair).max()) for pair in true_flow(frozen, 9, 64, 64)]
    # frames 2..5 show frame 2, then the clip jumps back to its timeline: 3 px, 0, 0, 0, 12 px (4 steps), 3 px
    assert moved == [3.0, 3.0, 0.0, 0.0, 0.0, 12.0, 3.0, 3.0]


def test_write_toy_videos_writes_the_flow_only_when_asked(tmp_path):
    write_toy_videos(tmp_path / "plain", n=2, frames=5, height=32, width=32)
    assert not (tmp_path / "plain" / "flow").exists()
    manifest = write_toy_videos(tmp_path / "flow", n=2, frames=5, height=32, width=32, flow=True)
    rows = pq.read_table(manifest).to_pylist()
    for row in rows:
        flow, valid = read_flow(flow_path(tmp_path / "flow" / "flow", row["id"]))
        assert valid is None
        attrs = {key: row[key] for key in ("brightness", "color", "shape", "speed", "direction", "jitter",
                                           "frozen_start", "frozen_frames", "flicker", "size", "start_x", "start_y",
                                           "noise_seed")}
        np.testing.assert_array_equal(flow, true_flow(attrs, 5, 32, 32))
    # the videos and manifest are those of a plain world
    for name in ("videos.parquet", "clips/toy-0000.mp4", "clips/toy-0001.mp4"):
        assert (tmp_path / "flow" / name).read_bytes() == (tmp_path / "plain" / name).read_bytes()


@pytest.fixture(scope="module")
def toy_world(tmp_path_factory):
    """10 toy clips (9 frames, 64x64) with their exact flow."""
    return write_toy_videos(tmp_path_factory.mktemp("toy-flow"), n=10, seed=0, frames=9, flow=True)


def test_dis_against_the_toy_worlds_truth(run_vpt, toy_world, tmp_path):
    out = tmp_path / "metrics.parquet"
    result = run_vpt(["eval", "flow", "-q", toy_world, "--reference", toy_world.parent / "flow", "-o", out])
    assert (result.exit_code, result.stdout, result.stderr) == (0, b"", "")
    table = pq.read_table(out)
    assert table.column_names == COLUMNS and table.schema.metadata[b"vpt.schema"] == b"flow_metrics"
    truth = {row["id"]: row for row in pq.read_table(toy_world).to_pylist()}
    rows = table.to_pylist()
    assert [row["id"] for row in rows] == sorted(truth) and {row["pairs"] for row in rows} == {8}
    assert all(row["error"] is None for row in rows)
    for row in rows:
        moving = truth[row["id"]]["speed"] > 0 or truth[row["id"]]["jitter"] > 0
        # measured: still clips 0 (flicker aside: 0.02); moving ones 0.2 .. 1.2 px (mean 0.5), Fl-all <= 0.15
        assert row["epe"] < (1.5 if moving else 0.05), row
        assert row["over_3px"] <= row["over_1px"] <= 1 and row["fl_all"] <= min(row["over_3px"], 0.2)
        if moving:
            assert row["epe"] > 0.05  # compared with the truth, not with itself


def test_the_text_table_shows_every_video_and_the_mean(run_vpt, toy_world):
    result = run_vpt(["eval", "flow", toy_world, "--reference", toy_world.parent / "flow", "-o", "-"])
    assert result.exit_code == 0
    rows = pq.read_table(io.BytesIO(result.stdout)).to_pylist()
    printed = lines(result.stderr)  # with -o - the table goes to stdout, the text to stderr
    assert printed[0] == HEADER and [line[0] for line in printed[1:]] == [row["id"] for row in rows] + ["mean"]
    assert printed[-1][1:] == [f"{np.mean([row[name] for row in rows]):.4f}" for name in COLUMNS[2:6]]
    assert printed[1][1:] == [f"{rows[0][name]:.4f}" for name in COLUMNS[2:6]] + ["8"]


# --------------------------------------------------------------------------------------------- hand-made cases


@pytest.fixture
def still_video(tmp_path):
    """A still textured clip (4 frames, 32x48): DIS finds no motion, so its flow is exactly 0."""
    frame = np.random.default_rng(0).integers(0, 255, (1, 32, 48, 3), dtype=np.uint8)
    write_video(tmp_path / "still.mp4", np.repeat(frame, 4, axis=0), fps=8, crf=0)
    (tmp_path / "ref").mkdir()
    return tmp_path / "still.mp4"


def constant(dx: float, dy: float, pairs: int = 3, height: int = 32, width: int = 48) -> np.ndarray:
    return np.broadcast_to(np.array([dx, dy], np.float32), (pairs, height, width, 2)).copy()


def test_a_constant_reference_of_3_4_is_5_pixels_away_from_a_still_clip(run_vpt, still_video, tmp_path):
    write_flow(tmp_path / "ref" / "still.flow.safetensors", constant(3, 4))
    result = run_vpt(["eval", "flow", tmp_path, "--reference", tmp_path / "ref", "-o", tmp_path / "m.parquet"])
    assert result.exit_code == 0, result.stderr
    # EPE 5 at every pixel; 5 > 1, 5 > 3 and 5 > 0.05 * 5: every pixel is an outlier of every kind
    assert lines(result.output) == [HEADER, ["still", "5.0000", "1.0000", "1.0000", "1.0000", "3"],
                                    ["mean", "5.0000", "1.0000", "1.0000", "1.0000"]]
    assert pq.read_table(tmp_path / "m.parquet").to_pylist() == [
        {"id": "still", "path": str(still_video), "epe": 5.0, "over_1px": 1.0, "over_3px": 1.0, "fl_all": 1.0,
         "pairs": 3, "error": None}]


def test_a_validity_mask_limits_the_comparison(run_vpt, still_video, tmp_path):
    reference = constant(0, 0)
    reference[0] = (3, 4)  # first pair off by 5, the rest exact
    valid = np.ones((3, 32, 48), bool)
    valid[1:, :, 24:] = False  # right half of pairs 2 and 3 unknown: 1536 + 2 * 768 valid pixels
    write_flow(tmp_path / "ref" / "still.flow.safetensors", reference, valid)
    result = run_vpt(["eval", "flow", "-q", still_video, "--reference", tmp_path / "ref", "-o", "-"])
    row = pq.read_table(io.BytesIO(result.stdout)).to_pylist()[0]
    assert (row["epe"], row["over_1px"], row["over_3px"], row["fl_all"]) == (2.5, 0.5, 0.5, 0.5)


def test_flow_files_of_another_estimator_are_compared_without_estimating(run_vpt, still_video, tmp_path):
    (tmp_path / "pred").mkdir()
    write_flow(tmp_path / "ref" / "still.flow.safetensors", constant(100, 0))
    estimate = constant(100, 0)
    estimate[:, :16] = (103, 4)  # top half 5 px off: > 3 px but not > 5 % of 100 px
    estimate[:, 16:, :12] = (100, 2)  # 2 px off on a quarter of the rest
    write_flow(tmp_path / "pred" / "still.flow.safetensors", estimate)
    result = run_vpt(["eval", "flow", tmp_path, "--reference", tmp_path / "ref", "--flow", tmp_path / "pred"])
    assert result.exit_code == 0, result.stderr
    # EPE = 0.5 * 5 + 0.125 * 2 = 2.75; >1px = 0.625; >3px = 0.5; Fl-all = 0
    assert lines(result.output)[1] == ["still", "2.7500", "0.6250", "0.5000", "0.0000", "3"]


def test_a_video_without_a_usable_reference_gets_an_error_row(run_vpt, still_video, tmp_path):
    write_video(tmp_path / "other.mp4", np.zeros((4, 32, 48, 3), np.uint8), fps=8)
    write_flow(tmp_path / "ref" / "still.flow.safetensors", constant(0, 0, pairs=2))
    result = run_vpt(["eval", "flow", "-q", tmp_path, "--reference", tmp_path / "ref", "-o", "-"])
    assert result.exit_code == 0
    assert result.stderr == "vpt: warning: 2 of 2 videos could not be evaluated; the error column says why\n"
    rows = pq.read_table(io.BytesIO(result.stdout)).to_pylist()
    reference = tmp_path / "ref"
    assert [(row["id"], row["error"]) for row in rows] == [
        ("other", f"{reference / 'other.flow.safetensors'}: no such flow file; write one per video (float32 flow "
                  "[T-1, H, W, 2] = forward (dx, dy) pixels of frame t to t+1, optional valid [T-1, H, W])"),
        ("still", f"the video has 4 frames of 32x48 (flow [3, 32, 48, 2]), its reference "
                  f"{reference / 'still.flow.safetensors'} [2, 32, 48, 2]")]
    assert all(row["epe"] is None and row["pairs"] is None for row in rows)
