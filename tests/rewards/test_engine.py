import numpy as np
import pytest

import vpt.rewards.engine as engine
from vpt.io.manifest import VideoItem
from vpt.io.video import write_video
from vpt.rewards.registry import load_reward_model


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clips")
    items = []
    for index in range(24):
        path = folder / f"c{index:02d}.mp4"
        write_video(path, np.full((4, 16, 16, 3), 10 * index, np.uint8), fps=4)
        items.append(VideoItem(id=f"c{index:02d}", path=str(path), file=path))
    return items


def test_rows_stream_in_input_order_with_bounded_prefetch(clips, monkeypatch):
    decoded = []
    real_decode = engine.decode_for
    monkeypatch.setattr(engine, "decode_for", lambda file, samplings: decoded.append(file) or real_decode(file, samplings))
    stream = engine.score_videos(clips, [load_reward_model("brightness")], batch_size=4, workers=2)
    first = next(stream)
    assert [row["id"] for row in first] == ["c00", "c01", "c02", "c03"]
    assert len(decoded) <= 4 + 8  # the batch plus a window of 2 x batch_size ahead, not the whole input
    rest = [row for batch in stream for row in batch]
    assert [row["id"] for row in first + rest] == [item.id for item in clips]
    scores = [row["score"] for row in first + rest]
    assert scores == sorted(scores)


def test_progress_counts_every_video(clips):
    seen = []
    for _ in engine.score_videos(clips[:10], [load_reward_model("motion")], batch_size=3, on_progress=seen.append):
        pass
    assert seen == [3, 3, 3, 1]


def test_summary_statistics_match_numpy():
    summary = engine.ScoreSummary()
    values = [0.1, 0.4, 0.35, 0.9]
    for value in values:
        summary.add({"error": None, "x": value}, ["x"])
    summary.add({"error": "bad", "x": None}, ["x"])
    (name, n, mean, std, low, high), = summary.table()
    assert (name, n, summary.errors, summary.videos) == ("x", 4, 1, 5)
    assert mean == pytest.approx(np.mean(values)) and std == pytest.approx(np.std(values))
    assert (low, high) == (0.1, 0.9)


def test_one_decode_per_video_for_models_that_want_other_frames(clips, monkeypatch):
    import vpt.io.video as video
    from vpt.io.video import FrameSampling, decode
    from vpt.rewards.model import RewardModel

    class FirstFrameMean(RewardModel):
        def __init__(self, name, sampling):
            self.name, self.sampling, self.dimensions, self.primary = name, sampling, (name,), name

        def score(self, videos, prompts):
            return {self.name: np.array([v.frames[0].mean() + 1000 * v.frames.shape[0] + 1e6 * v.frames.shape[1]
                                         for v in videos])}

    samplings = {"all": FrameSampling(), "two": FrameSampling(mode="count", count=2),
                 "small": FrameSampling(mode="count", count=3, height=8, width=8)}
    models = [FirstFrameMean(name, sampling) for name, sampling in samplings.items()]
    decodes = []
    real = video._decode
    monkeypatch.setattr(video, "_decode", lambda info, indices: decodes.append(info.path) or real(info, indices))
    rows = [row for batch in engine.score_videos(clips[:3], models, batch_size=2) for row in batch]
    assert sorted(decodes) == sorted(str(item.file) for item in clips[:3])  # one decode per video
    monkeypatch.setattr(video, "_decode", real)
    for row, item in zip(rows, clips[:3]):
        for name, sampling in samplings.items():
            assert row[name] == models[0].__class__(name, sampling).score([decode(item.file, sampling)], [None])[name][0]
