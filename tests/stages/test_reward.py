"""VideoReward training over the harness: data checks, what trains, exact resume, and learning on the toy world."""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from vpt.errors import VptError
from vpt.io.tables import read_table, write_table
from vpt.models.videoreward_checkpoint import load_videoreward
from vpt.toyworld import toy_preferences, write_toy_videos
from vpt.train import TrainConfig, read_metrics
from vpt.stages.reward import (RewardTrainOptions, VideoRewardTask, evaluate_pairs,
                                   read_preferences, split_pairs, train_videoreward)

SIDE, FRAMES = 56, 8
PIXELS = SIDE * SIDE  # frames stay 56x56: 4x4 patches, 16 video tokens per clip
SMALL = dict(frames=FRAMES, min_pixels=PIXELS, max_pixels=PIXELS)


def make_world(root: Path, clips: int, pairs: int, seed: int, distinct: bool = False) -> Path:
    """Toy clips (8 frames of 56x56) and labelled pairs (ties for near-equal brightness, MOS columns); the prefs
    table lies beside the clips, so its relative paths resolve. ``distinct``: no two pairs join the same two clips,
    so a held-out pair is never a training pair again (its clips are seen in other pairs)."""
    manifest = write_toy_videos(root, n=clips, seed=seed, frames=FRAMES, height=SIDE, width=SIDE, fps=8.0)
    rows = read_table(manifest, "videos").to_pylist()
    candidates = toy_preferences(rows, 3 * pairs if distinct else pairs, seed=seed, brightness_tie=0.05, mos=True)
    chosen, seen = [], set()
    for pair in candidates:
        key = frozenset((pair["id_a"], pair["id_b"]))
        if distinct and key in seen:
            continue
        seen.add(key)
        chosen.append(pair)
    prefs = root / "prefs.parquet"
    write_table(chosen[:pairs], prefs, "prefs")
    return prefs


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    return make_world(tmp_path_factory.mktemp("reward-world"), clips=8, pairs=12, seed=3)


@pytest.fixture
def zoo_model(tiny_zoo):
    return load_videoreward(tiny_zoo)


def small_config(out: Path, **changes) -> TrainConfig:
    base = dict(output_dir=str(out), seed=0, learning_rate=1e-3, batch_size=2, max_steps=2, log_every=1,
                save_every=0, eval_every=0)
    base.update(changes)
    return TrainConfig(**base)


def small_options(**changes) -> RewardTrainOptions:
    base = dict(SMALL, eval_fraction=0.25, lora_rank=4, lora_alpha=8)
    base.update(changes)
    return RewardTrainOptions(**base)


def write_csv(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def prefs_rows(world: Path, count: int = 3) -> list[dict]:
    rows = read_table(world, "prefs").to_pylist()[:count]
    return [{key: row[key] for key in ("pair_id", "path_a", "path_b", "prompt", "vq", "mq", "ta")} for row in rows]


# --------------------------------------------------------------------------------------------------- bad inputs


def preference_error(path, model) -> str:
    """The one-line message reading the prefs table ``path`` for ``model`` fails with."""
    with pytest.raises(VptError) as error:
        read_preferences(path, model.sampling)
    return str(error.value)


def test_missing_table_columns(world, zoo_model):
    rows = prefs_rows(world)
    no_path = write_csv(world.parent / "no-path-b.csv", [{k: v for k, v in r.items() if k != "path_b"} for r in rows])
    assert preference_error(no_path, zoo_model) == (f"{no_path}: missing column 'path_b' (schema prefs v1 requires: pair_id, path_a, "
                                "path_b, prompt)")
    no_labels = write_csv(world.parent / "no-labels.csv",
                          [{k: v for k, v in r.items() if k not in ("mq", "ta")} for r in rows])
    assert preference_error(no_labels, zoo_model) == (f"{no_labels}: missing label columns 'mq', 'ta'; train-reward needs vq, mq and ta "
                                "(a, b, tie or invalid per pair)")


def test_wrong_label_values_and_empty_prompts(world, zoo_model):
    rows = prefs_rows(world)
    rows[1]["vq"] = "A"
    bad = write_csv(world.parent / "bad-label.csv", rows)
    assert preference_error(bad, zoo_model) == f"{bad}: row 2: column 'vq' has 'A'; expected one of a, b, tie, invalid"
    rows = prefs_rows(world)
    rows[2]["prompt"] = "  "
    blank = write_csv(world.parent / "blank-prompt.csv", rows)
    assert preference_error(blank, zoo_model) == (f"{blank}: row 3 (pair '{rows[2]['pair_id']}'): the prompt is empty; VideoReward "
                                "rates text alignment against the prompt, give every pair one")


def test_unreadable_videos_name_the_file_and_the_row(world, zoo_model):
    rows = prefs_rows(world)
    rows[1]["path_b"] = "clips/missing.mp4"
    missing = write_csv(world.parent / "missing-video.csv", rows)
    assert preference_error(missing, zoo_model) == (f"{world.parent / 'clips' / 'missing.mp4'}: file not found (prefs row 2, pair "
                                f"'{rows[1]['pair_id']}', path_b of {missing})")
    (world.parent / "clips" / "broken.mp4").write_text("this is not a video\n")
    rows = prefs_rows(world)
    rows[0]["path_a"] = "clips/broken.mp4"
    broken = write_csv(world.parent / "broken-video.csv", rows)
    with pytest.raises(VptError) as error:
        read_preferences(broken, zoo_model.sampling)
    message = str(error.value)
    assert message.startswith(f"{world.parent / 'clips' / 'broken.mp4'}: not a readable video (")
    assert message.endswith(f"(prefs row 1, pair '{rows[0]['pair_id']}', path_a of {broken})")
    assert "\n" not in message


def test_regression_needs_mos_columns(world, zoo_model, tmp_path):
    plain = write_csv(world.parent / "no-mos.csv", prefs_rows(world))
    with pytest.raises(VptError) as error:
        train_videoreward(zoo_model, plain, small_config(tmp_path / "run"), small_options(loss="reg"), quiet=True)
    assert str(error.value) == (f"{plain}: loss 'reg' needs mean opinion score columns vq_mos_a, vq_mos_b, "
                                "mq_mos_a, mq_mos_b, ta_mos_a, ta_mos_b; missing: vq_mos_a, vq_mos_b, mq_mos_a, "
                                "mq_mos_b, ta_mos_a, ta_mos_b (add them, or train with loss btt or bt)")
    assert not (tmp_path / "run").exists()


def test_option_errors():
    with pytest.raises(VptError, match=r"^--loss mse: choose one of btt, bt, reg$"):
        RewardTrainOptions(loss="mse")
    with pytest.raises(VptError, match=r"^--theta must be a number > 1"):
        RewardTrainOptions(theta=1.0)
    with pytest.raises(VptError, match=r"^--eval-fraction must lie in \[0, 1\), got 1.0$"):
        RewardTrainOptions(eval_fraction=1.0)


def test_lora_targets_must_name_language_model_linears(world, zoo_model, tmp_path):
    with pytest.raises(VptError, match=r"^LoRA target\(s\) qkv match no Linear of the language model; choose among "
                                       r"down_proj, gate_proj, k_proj, o_proj, q_proj, up_proj, v_proj$"):
        train_videoreward(zoo_model, world, small_config(tmp_path / "run"),
                          small_options(lora_targets=("q_proj", "qkv")), quiet=True)


# ------------------------------------------------------------------------------------------------------- data


def test_labels_videos_and_split(world, zoo_model):
    data = read_preferences(world, zoo_model.with_config(num_frames=FRAMES).sampling, need_mos=True)
    table = read_table(world, "prefs").to_pylist()
    codes = {"a": 1, "b": -1, "tie": 0, "invalid": -2}
    assert data.labels.tolist() == [[codes[row[d]] for d in ("vq", "mq", "ta")] for row in table]
    assert (data.labels == 0).any()  # ties are kept as ties
    assert data.overall.tolist() == [codes[row["overall"]] for row in table]
    assert data.mos.shape == (12, 2, 3) and data.mos[0, 1, 2] == table[0]["ta_mos_b"]
    distinct = {row[f"path_{side}"] for row in table for side in "ab"}
    assert len(data.files) == len(data.frames) == len(distinct)  # every file decoded once
    assert all(frames.shape == (FRAMES, SIDE, SIDE, 3) for frames in data.frames)
    for i, row in enumerate(table):
        assert data.files[data.video_a[i]] == world.parent / row["path_a"]

    rows = prefs_rows(world)
    rows[0]["mq"] = "invalid"
    marked = read_preferences(write_csv(world.parent / "invalid.csv", rows), zoo_model.sampling)
    assert marked.labels[0, 1] == -2 and marked.overall is None and marked.mos is None
    assert zoo_model.sampling.count == FRAMES

    train, held = split_pairs(12, 0.25, seed=0)
    assert len(held) == 3 and sorted([*train, *held]) == list(range(12))
    assert np.array_equal(held, split_pairs(12, 0.25, seed=0)[1])
    assert not np.array_equal(held, split_pairs(12, 0.25, seed=1)[1])
    assert len(split_pairs(12, 0.0, seed=0)[1]) == 0
    with pytest.raises(VptError, match="leave none to train on"):
        split_pairs(1, 0.5, seed=0)


def test_collate_puts_a_videos_first_and_counts_pairs(world, zoo_model):
    options = small_options(loss="reg")
    zoo_model.with_config(num_frames=FRAMES, min_pixels=PIXELS, max_pixels=PIXELS)
    data = read_preferences(world, zoo_model.sampling, need_mos=True)
    task = VideoRewardTask(zoo_model, data, [0, 1, 2], [], options)
    batch = task.collate([2, 0])
    assert list(batch)[0] == "labels" and batch["labels"].tolist() == data.labels[[2, 0]].tolist()
    assert batch["mos"].shape == (2, 2, 3) and batch["input_ids"].shape[0] == 4
    assert batch["video_grid_thw"].tolist() == [[FRAMES // 2, SIDE // 14, SIDE // 14]] * 4
    loss, metrics = task.loss_fn(zoo_model, batch)
    assert loss.ndim == 0 and torch.isfinite(loss)


# ------------------------------------------------------------------------------------------------ what trains


def test_only_the_three_reward_rows_of_the_embedding_change(world, tiny_zoo, tmp_path):
    model = load_videoreward(tiny_zoo)
    reference = load_videoreward(tiny_zoo).merge_lora()
    before = {name: p.detach().clone() for name, p in reference.qwen.named_parameters()}
    result = train_videoreward(model, world, small_config(tmp_path / "run", max_steps=3, weight_decay=0.1),
                               small_options(), quiet=True)

    rows = sorted(model.reward_token_ids)
    for trained in (model, load_videoreward(tmp_path / "run")):
        embedding = trained.qwen.get_input_embeddings().weight.detach()
        changed = (embedding != before["model.language_model.embed_tokens.weight"]).any(dim=1)
        assert torch.nonzero(changed).flatten().tolist() == rows
    after = {name.replace(".base_layer.", "."): p for name, p in model.qwen.named_parameters()
             if ".lora_" not in name}
    language = [n for n in before if n.startswith("model.language_model.") and "embed_tokens" not in n]
    assert language and all(torch.equal(after[n], before[n]) for n in language)  # frozen under the adapter
    visual = [n for n in before if n.startswith("model.visual.")]
    assert any(n.startswith("model.visual.merger.") for n in visual)
    assert all(not torch.equal(after[n], before[n]) for n in visual if n.endswith("weight"))  # tower + merger
    lora_b = [p for n, p in model.backbone.named_parameters() if "lora_B" in n]
    assert lora_b and all(p.abs().sum() > 0 for p in lora_b)  # the fresh adapter (B starts at zero) trained
    assert not torch.equal(model.head.weight, reference.head.weight)
    assert result.train.step == 3


# -------------------------------------------------------------------------------------------- resume and output


def _rows_without_timing(path: Path) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "examples_per_s"} for row in read_metrics(path)]


def test_resume_is_bit_identical_and_the_output_scores(world, tiny_zoo, tmp_path, monkeypatch):
    config = dict(max_steps=4, gradient_accumulation_steps=2, save_every=2, eval_every=2, max_grad_norm=0.5)
    options = small_options(lora_dropout=0.1)  # dropout draws from the RNG that the checkpoint must restore
    straight = train_videoreward(load_videoreward(tiny_zoo), world, small_config(tmp_path / "a", **config),
                                 options, quiet=True)

    original = VideoRewardTask.loss_fn
    calls = {"n": 0}

    def dying(self, model, batch):
        calls["n"] += 1
        if calls["n"] == 6:  # the second micro-batch of step 3: checkpoint-2 exists, step 3 half done
            raise KeyboardInterrupt
        return original(self, model, batch)

    monkeypatch.setattr(VideoRewardTask, "loss_fn", dying)
    with pytest.raises(KeyboardInterrupt):
        train_videoreward(load_videoreward(tiny_zoo), world, small_config(tmp_path / "b", **config), options,
                          quiet=True)
    assert not (tmp_path / "b" / "vpt_videoreward.json").exists()
    monkeypatch.setattr(VideoRewardTask, "loss_fn", original)
    resumed = train_videoreward(load_videoreward(tiny_zoo), world, small_config(tmp_path / "b", **config), options,
                                resume=True, quiet=True)
    assert resumed.train.resumed_from.name == "checkpoint-2" and resumed.train.step == 4

    a, b = load_videoreward(tmp_path / "a"), load_videoreward(tmp_path / "b")
    state_a, state_b = a.state_dict(), b.state_dict()
    assert state_a.keys() == state_b.keys()
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)
    assert a.config == b.config
    assert _rows_without_timing(tmp_path / "a" / "metrics.jsonl") == _rows_without_timing(
        tmp_path / "b" / "metrics.jsonl")
    assert straight.accuracies == resumed.accuracies

    # metrics.jsonl: train rows every step, held-out accuracies (with and without ties) at eval_every
    rows = read_metrics(tmp_path / "a" / "metrics.jsonl")
    assert [row["step"] for row in rows] == [1, 2, 3, 4]
    evaluated = [row for row in rows if "eval/vq_accuracy_with_ties" in row]
    assert [row["step"] for row in evaluated] == [2, 4]
    for dimension in ("vq", "mq", "ta"):
        assert f"eval/{dimension}_accuracy_with_ties" in evaluated[-1]
    assert "loss" in rows[0] and "grad_norm" in rows[0]

    # the saved model carries the held-out statistics and the training frame rule, and scores like the trained one
    summary = json.loads((tmp_path / "a" / "reward_training.json").read_text())
    assert a.config.norm_mean == tuple(summary["norm_mean"]) == straight.evaluation.norm_mean
    assert a.config.norm_std == tuple(summary["norm_std"])
    assert a.config.num_frames == FRAMES and a.config.min_pixels == a.config.max_pixels == PIXELS
    assert summary["eval_pairs"] == 3 and summary["train_pairs"] == 9 and len(summary["eval_pair_ids"]) == 3
    data = read_preferences(world, a.sampling)
    held = split_pairs(len(data), 0.25, seed=0)[1]
    again = evaluate_pairs(a, data, held)
    assert again.metrics == straight.evaluation.metrics
    normalised = a.normalise(np.concatenate([again.scores_a, again.scores_b]))
    assert normalised.shape == (6, 4) and np.isfinite(normalised).all()


def test_a_finished_run_needs_resume_and_other_losses_train(world, tiny_zoo, tmp_path):
    out = tmp_path / "run"
    train_videoreward(load_videoreward(tiny_zoo), world, small_config(out, max_steps=1), small_options(loss="reg"),
                      quiet=True)
    with pytest.raises(VptError, match="already holds a training run"):
        train_videoreward(load_videoreward(tiny_zoo), world, small_config(out, max_steps=1), small_options(loss="reg"),
                          quiet=True)
    again = train_videoreward(load_videoreward(tiny_zoo), world, small_config(out, max_steps=1),
                              small_options(loss="reg"), resume=True, quiet=True)
    assert again.train.step == 1 and (out / "vpt_videoreward.json").is_file()
    bt = train_videoreward(load_videoreward(tiny_zoo), world, small_config(tmp_path / "bt", max_steps=1),
                           small_options(loss="bt", eval_fraction=0.0), quiet=True)
    assert bt.eval_pairs == 0 and "vq_accuracy" in bt.accuracies  # statistics and accuracy from training pairs
    assert json.loads((tmp_path / "bt" / "reward_training.json").read_text())["statistics_from"] == "train"


# --------------------------------------------------------------------------------------------------- learning

# The learning test uses a compact query in place of VideoAlign's ~830-token one. With the full query a step of the
# tiny model costs ~0.65 s on one CPU thread (attention over ~850 tokens x 16 sequences), and the random 2-layer
# language model spreads its attention so thinly over the long text that within a few hundred steps only brightness
# (which shifts every video token) is learned; jitter and colour binding stay at chance (measured: mq ~60-70 %,
# ta ~50 % after 300-400 steps). The compact query keeps the structure that matters (video first, the VQ and MQ
# tokens before the prompt, the TA token after it) and makes a step ~17x cheaper.
LEARN_STEPS, LEARN_CLIPS, LEARN_PAIRS = 1000, 32, 400


def learn(root: Path, zoo: Path, seed: int) -> tuple[dict, dict, float]:
    """Train the zoo's tiny VideoReward with BTT on a toy world of ``seed``: (untrained, trained) held-out
    accuracies (without ties, percent) per dimension and the training seconds."""
    prefs = make_world(root / "world", clips=LEARN_CLIPS, pairs=LEARN_PAIRS, seed=seed, distinct=True)
    options = RewardTrainOptions(loss="btt", theta=5.0, eval_fraction=0.25, **SMALL)
    model = load_videoreward(zoo).with_config(num_frames=FRAMES, min_pixels=PIXELS, max_pixels=PIXELS,
                                              prompt_template="compact")
    data = read_preferences(prefs, model.sampling)
    held = split_pairs(len(data), options.eval_fraction, seed)[1]
    untrained = evaluate_pairs(model, data, held).metrics
    config = TrainConfig(output_dir=str(root / "run"), seed=seed, learning_rate=1e-3, lr_schedule="cosine",
                         warmup_steps=40, batch_size=8, max_steps=LEARN_STEPS, log_every=50, save_every=0,
                         eval_every=0)
    began = time.perf_counter()
    result = train_videoreward(model, prefs, config, options, quiet=True)
    seconds = time.perf_counter() - began
    pick = lambda metrics: {d: metrics.get(f"{d}_accuracy", float("nan")) for d in ("vq", "mq", "ta")}  # noqa: E731
    return pick(untrained), pick(result.accuracies), seconds


@pytest.mark.parametrize("seed", [0, pytest.param(1, marks=pytest.mark.slow), pytest.param(2, marks=pytest.mark.slow)])
def test_btt_learns_the_toy_world(seed, tiny_zoo, tmp_path):
    untrained, trained, seconds = learn(tmp_path, tiny_zoo, seed)
    # learned: at least 80% and at least half of the untrained model's errors fixed (an untrained head is right on
    # 50-80% of a dimension's pairs by chance, depending on the seed and the clips)
    learned = [d for d in ("vq", "mq", "ta")
               if trained[d] >= 80 and trained[d] - untrained[d] >= (100 - untrained[d]) / 2]
    report = ", ".join(f"{d} {untrained[d]:.1f} -> {trained[d]:.1f}" for d in ("vq", "mq", "ta"))
    print(f"seed {seed}: {report} ({seconds:.0f} s)")
    assert len(learned) >= 2, f"seed {seed}: held-out accuracy without ties, untrained -> trained: {report}"
    assert trained["vq"] >= 90  # brightness is learned in every seed (its untrained level varies by chance)
