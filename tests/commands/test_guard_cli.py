"""The reward-hacking guard on the tiny zoo: grpo-step's and dpo's held-out judges equal `vpt score` of the same
videos, dpo's evaluation samples come from the parent policy and the same noises, judges leave the trained weights
bit-identical, and every stage reports its drift at five noise levels."""

from __future__ import annotations

import math

import pyarrow.parquet as pq
import pytest

from vpt.algo.drift import DRIFT_SIGMAS
from vpt.io.tables import read_table, write_table
from vpt.train.policy import read_policy_metrics as metrics

SIZE = ["--frames", "9", "--height", "32", "--width", "32"]
DRIFT = [f"drift/{sigma:.2f}" for sigma in DRIFT_SIGMAS]


@pytest.fixture(scope="module")
def world(run_vpt, tiny_zoo, tmp_path_factory):
    """Rollouts of the base generator (2 prompts x 2) scored by brightness, and 2 labelled pairs of toy clips."""
    from vpt.toyworld import write_toy_videos

    root = tmp_path_factory.mktemp("guard")
    (root / "prompts.txt").write_text("a red ball bouncing\na white ring on a dark floor\n")
    for args in (["sample-rollouts", "-m", tiny_zoo, "--prompts", root / "prompts.txt", "-o", root / "r0", "-g", "2",
                  "--seed", "5", *SIZE, "--steps", "4", "--guidance", "3", "-q"],
                 ["score", root / "r0" / "rollouts.parquet", "-m", "brightness", "-o", root / "r0.scores.parquet",
                  "-q"]):
        result = run_vpt(args)
        assert result.exit_code == 0, result.stderr
    clips = read_table(write_toy_videos(root, n=4, seed=0, frames=9, height=32, width=32), "videos").to_pylist()
    write_table([{"pair_id": f"p{i}", "path_a": clips[i]["path"], "path_b": clips[i + 1]["path"],
                  "prompt": clips[i]["prompt"], "overall": "a"} for i in (0, 2)], root / "prefs.parquet", "prefs")
    return root


def summary(rows: list[dict], column: str) -> tuple[float, float]:
    """(mean, population std) of a scores column, as the stages summarise their judges."""
    values = [row[column] for row in rows]
    mean = math.fsum(values) / len(values)
    return mean, math.sqrt(math.fsum((v - mean) ** 2 for v in values) / len(values))


def grpo(run_vpt, zoo, root, out, *extra):
    result = run_vpt(["grpo-step", "--init", zoo, "--rollouts", root / "r0", "--scores", root / "r0.scores.parquet",
                      "--reward", "brightness", "--lr", "1e-2", "--clip-range", "1e-2", "-q", "-o", root / out, *extra])
    assert result.exit_code == 0, result.stderr
    return root / out


def test_grpo_judges_score_the_rollouts_and_leave_the_weights_alone(run_vpt, world, tiny_zoo):
    plain = grpo(run_vpt, tiny_zoo, world, "plain")
    judged = grpo(run_vpt, tiny_zoo, world, "judged", "--judge", "motion", "--judge", "brightness")
    for name in ("adapter_model.safetensors", "optimizer.pt"):
        assert (judged / name).read_bytes() == (plain / name).read_bytes(), name
    # the judges' figures are vpt score's of the rollouts' videos
    assert run_vpt(["score", world / "r0" / "rollouts.parquet", "-m", "motion,brightness", "-o",
                    world / "judged.parquet", "-q"]).exit_code == 0
    scored = pq.read_table(world / "judged.parquet").to_pylist()
    table = metrics(judged)
    for column in ("motion", "brightness"):
        assert (table[(None, f"judge/{column}/mean")], table[(None, f"judge/{column}/std")]) == \
            summary(scored, column)
    assert not any(name.startswith("judge/") for _, name in metrics(plain))
    # the drift from the adapter-disabled reference, the same with or without judges
    for name in DRIFT:
        assert table[(None, name)] == metrics(plain)[(None, name)] >= 0
    assert sum(table[(None, name)] for name in DRIFT) > 0
    assert not any(name.startswith("drift/") for _, name in metrics(grpo(run_vpt, tiny_zoo, world, "blind",
                                                                         "--drift-probes", "0")))


def dpo(run_vpt, zoo, root, out, *extra):
    result = run_vpt(["dpo", "--model", zoo, "--prefs", root / "prefs.parquet", "--max-steps", "1", "--lr", "1e-3",
                      "--cache", root / "cache", "-q", "-o", root / out, *extra])
    assert result.exit_code == 0, result.stderr
    return root / out


def test_dpo_samples_the_parent_and_the_trained_policy_from_the_same_noises(run_vpt, world, tiny_zoo, monkeypatch):
    import vpt.stages.dpo as stage
    from vpt.io.video import write_video
    from vpt.models.loading import load_wan_pipeline
    from vpt.testing.flow_eval import load_transformer, sample_videos, toy_sampling

    tasks = []

    def recording(policy, task, *args, **kwargs):
        tasks.append(task)
        return train_stage(policy, task, *args, **kwargs)

    train_stage = stage.train_stage
    monkeypatch.setattr(stage, "train_stage", recording)
    judged = dpo(run_vpt, tiny_zoo, world, "d-judged", "--judge", "brightness", "--eval-samples", "2",
                 "--eval-steps", "4", "--seed", "3")
    plain = dpo(run_vpt, tiny_zoo, world, "d-plain", "--seed", "3")
    assert (judged / "adapter_model.safetensors").read_bytes() == (plain / "adapter_model.safetensors").read_bytes()
    captions = [caption for caption, _ in tasks[0].samples()]
    prompts = list(dict.fromkeys(row["prompt"] for row in read_table(world / "prefs.parquet", "prefs").to_pylist()))
    assert captions == [f"start · {prompts[0]} · sample 0", f"end · {prompts[0]} · sample 0",
                        f"start · {prompts[0]} · sample 1", f"end · {prompts[0]} · sample 1"]
    # the same samples drawn apart from the stage: the parent (the generator) and the trained policy, seed 3
    pipe = load_wan_pipeline(tiny_zoo)
    table = metrics(judged)
    for prefix, checkpoint in (("start_", None), ("", judged)):
        pipe.transformer = load_transformer(tiny_zoo, checkpoint)
        videos = sample_videos(pipe, prompts, 2, 3, toy_sampling(steps=4))
        directory = world / f"again-{prefix or 'end'}"
        for number, video in enumerate(videos):
            write_video(directory / f"{number}.mp4", video, fps=16.0)
        assert run_vpt(["score", directory, "-m", "brightness", "-o", directory / "s.parquet", "-q"]).exit_code == 0
        scored = pq.read_table(directory / "s.parquet").to_pylist()
        assert (table[(None, f"judge/brightness/{prefix}mean")], table[(None, f"judge/brightness/{prefix}std")]) \
            == summary(scored, "brightness")
    assert table[(None, "judge/brightness/start_mean")] != table[(None, "judge/brightness/mean")]
    for name in DRIFT:
        assert table[(None, name)] == metrics(plain)[(None, name)] >= 0


def test_grpo_step_sends_its_figures_and_rollout_videos_to_tensorboard(run_vpt, world, tiny_zoo):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = grpo(run_vpt, tiny_zoo, world, "tracked", "--judge", "motion", "--report-to", "tensorboard")
    (run,) = [path for path in (out / "logs").iterdir() if path.is_dir()]
    accumulator = EventAccumulator(str(run), size_guidance={"images": 0, "scalars": 0})
    accumulator.Reload()
    assert sorted(accumulator.Tags()["images"]) == [f"samples/{index}" for index in range(4)]
    table = metrics(out)
    for name in ("reward/mean", "judge/motion/mean", "drift/0.50", "loss"):
        step = None if (None, name) in table else 1
        (event,) = accumulator.Scalars(name)
        assert (event.step, event.value) == (1, pytest.approx(table[(step, name)], rel=1e-6))
