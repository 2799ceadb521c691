"""Experiment trackers (``--report-to``): what a training stage logs is read back from the tracker's own files —
TensorBoard's event file (scalars equal to the metrics table, sample videos as GIFs whose frames are the mp4's),
and wandb's offline run."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest

from vpt.io.tables import read_table

STEPS = 3


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    from vpt.toyworld import write_toy_videos

    root = tmp_path_factory.mktemp("trackers")
    write_toy_videos(root, n=4, seed=0, frames=9, height=32, width=32)
    return root


def sft(run_vpt, zoo, clips, out, *extra):
    result = run_vpt(["sft", "--model", zoo, "--data", clips / "videos.parquet", "--max-steps", str(STEPS),
                      "--lr", "1e-3", "--log-every", "1", "--cache", clips / "cache", "-o", out, "-q", *extra])
    assert result.exit_code == 0, result.stderr
    return out


def events(logs):
    """TensorBoard's reading of the one run under ``logs`` (its hyperparameters sit in a folder of their own)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (run,) = [path for path in logs.iterdir() if path.is_dir()]
    accumulator = EventAccumulator(str(run), size_guidance={"images": 0, "scalars": 0})
    accumulator.Reload()
    return accumulator


def test_tensorboard_gets_every_row_of_the_metrics_table(run_vpt, tiny_zoo, clips, tmp_path):
    pytest.importorskip("tensorboard")
    out = sft(run_vpt, tiny_zoo, clips, tmp_path / "sft", "--report-to", "tensorboard")
    assert not (tmp_path / "sft.run").exists()  # the logs moved in with the policy
    table = read_table(out / "metrics.parquet", "metrics").to_pylist()
    accumulator = events(out / "logs")
    logged = set(accumulator.Tags()["scalars"])
    stepped = [row for row in table if row["step"] is not None]
    assert {row["name"] for row in stepped} <= logged
    for row in stepped:
        values = {event.step: event.value for event in accumulator.Scalars(row["name"])}
        assert values[row["step"]] == pytest.approx(row["value"], rel=1e-6)  # TensorBoard keeps float32
    for row in (row for row in table if row["step"] is None):  # the stage's summary, at its last step
        assert [(event.step, event.value) for event in accumulator.Scalars(row["name"])] == [
            (STEPS, pytest.approx(row["value"], rel=1e-6))]


def test_no_tracker_writes_no_logs(run_vpt, tiny_zoo, clips, tmp_path):
    out = sft(run_vpt, tiny_zoo, clips, tmp_path / "sft")
    assert not (out / "logs").exists()


def moving_square(path, shift):
    """A 9-frame mp4 of a bright square moving right over grey: every frame differs."""
    from vpt.io.video import write_video

    frames = np.full((9, 32, 32, 3), 90, dtype=np.uint8)
    for t in range(9):
        frames[t, 8:16, shift + 2 * t: shift + 2 * t + 8] = (230, 200, 40)
    write_video(path, frames, fps=8.0)
    return path


def test_tensorboard_sample_videos_are_the_mp4s_frames(tmp_path):
    pytest.importorskip("tensorboard")
    from PIL import Image

    from vpt.io.video import read_frames
    from vpt.train.config import TrainConfig
    from vpt.train.trainer import _make_accelerator
    from vpt.train.trackers import Tracking

    run = tmp_path / "run"
    run.mkdir()
    accelerator = _make_accelerator(TrainConfig(output_dir=str(run), max_steps=1, report_to="tensorboard"))
    tracking = Tracking(accelerator, "tensorboard", run)
    tracking.start({"seed": 0})
    videos = [moving_square(tmp_path / f"square-{shift}.mp4", shift) for shift in (0, 5)]
    tracking.videos([("first clip", videos[0]), ("second clip", videos[1])], step=7)
    tracking.end()
    accelerator_events = events(run / "logs")
    assert sorted(accelerator_events.Tags()["images"]) == ["samples/0", "samples/1"]
    for index, video in enumerate(videos):
        (image,) = accelerator_events.Images(f"samples/{index}")
        assert image.step == 7
        gif = Image.open(io.BytesIO(image.encoded_image_string))
        expected = read_frames(video)
        assert gif.n_frames == len(expected) and (image.height, image.width) == expected.shape[1:3]
        gif.seek(len(expected) - 1)
        # a GIF holds 256 colours per frame: close to the decoded frame, not equal
        error = np.abs(np.asarray(gif.convert("RGB"), dtype=np.int16) - expected[-1].astype(np.int16)).mean()
        assert error < 8


def wandb_history(run_file) -> dict[int, dict]:
    """The history rows of an offline wandb run, by step, read from its ``.wandb`` file: a LevelDB-style log
    (7-byte header, 32 KiB blocks of records with a 7-byte header: crc, length, type) of protobuf records."""
    import struct

    from wandb.proto import wandb_internal_pb2

    data = run_file.read_bytes()
    position, pending, rows = 7, b"", {}
    while position + 7 <= len(data):
        left = 32768 - position % 32768
        if left < 7:  # a block's tail too short for a record header is padding
            position += left
            continue
        _, length, kind = struct.unpack("<IHB", data[position:position + 7])
        pending += data[position + 7:position + 7 + length]
        position += 7 + length
        if kind in (1, 4):  # a whole record, or the last piece of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            if record.WhichOneof("record_type") == "history":
                rows[record.history.step.num] = {item.key or "/".join(item.nested_key): json.loads(item.value_json)
                                                 for item in record.history.item}
    return rows


def test_wandb_offline_run_holds_every_row(run_vpt, tiny_zoo, clips, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = sft(run_vpt, tiny_zoo, clips, tmp_path / "sft", "--report-to", "wandb")
    (run_file,) = (out / "logs" / "wandb").glob("offline-run-*/run-*.wandb")
    history = wandb_history(run_file)
    table = read_table(out / "metrics.parquet", "metrics").to_pylist()
    assert sorted(history) == list(range(1, STEPS + 1))
    for row in table:
        assert history[STEPS if row["step"] is None else row["step"]][row["name"]] == pytest.approx(row["value"])
