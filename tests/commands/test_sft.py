"""vpt sft end to end on the tiny zoo: the policy checkpoint, exact resume, per-clip weights from a manifest column
and Flow-RWR weights N·softmax(r/β) reaching the flow-matching loss, resampling, and bad inputs with exact
messages."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from vpt.io.tables import read_table, write_table
from vpt.train.policy import read_policy_metrics as metrics

CHECKPOINT_FILES = {"README.md", "adapter_config.json", "adapter_model.safetensors", "config.json",
                    "metrics.parquet", "optimizer.pt", "policy.json", "pytorch_lora_weights.safetensors",
                    "rng_state.pt", "scheduler.pt", "trainer_state.json"}
CLIPS = 6


@pytest.fixture(scope="module")
def world(run_vpt, tiny_zoo, tmp_path_factory):
    """6 toy clips (9x32x32) with their manifest, their brightness scores and the policy `s1` of 2 SFT steps."""
    from vpt.toyworld import write_toy_videos

    root = tmp_path_factory.mktemp("sft")
    write_toy_videos(root, n=CLIPS, seed=0, frames=9, height=32, width=32)
    result = run_vpt(["score", root / "videos.parquet", "-m", "brightness", "-o", root / "scores.parquet", "-q"])
    assert result.exit_code == 0, result.stderr
    sft(run_vpt, tiny_zoo, root, "s1")
    return root


def sft(run_vpt, zoo, root, out, *extra, steps=2):
    """Run `vpt sft` on the world's manifest into root/out; assert it succeeded."""
    result = run_vpt(["sft", "--model", zoo, "--data", root / "videos.parquet", "--max-steps", str(steps), "--lr",
                      "1e-3", "--log-every", "1", "--cache", root / "cache", "-o", root / out, "-q", *extra])
    assert result.exit_code == 0, result.stderr
    return root / out


@pytest.fixture
def recorded(monkeypatch):
    """(clip id, weight) of every item the loader reads, and the weights reaching the flow-matching loss, in order."""
    from vpt.stages import examples, sft

    items, losses = [], []
    read_item, loss = examples.LatentItems.__getitem__, sft.flow_matching_loss

    def recorded_item(self, index):
        item = read_item(self, index)
        items.append((self.examples[index].key, float(item["weight"])))
        return item

    def recorded_loss(prediction, target, weights=None):
        losses.extend(weights.tolist())
        return loss(prediction, target, weights)

    monkeypatch.setattr(examples.LatentItems, "__getitem__", recorded_item)
    monkeypatch.setattr(sft, "flow_matching_loss", recorded_loss)
    return items, losses


def test_sft_writes_a_policy_checkpoint_in_the_shared_layout(world, tiny_zoo):
    s1 = world / "s1"
    assert {p.name for p in s1.iterdir()} == CHECKPOINT_FILES
    assert not (world / "s1.run").exists()
    info = json.loads((s1 / "policy.json").read_text())
    assert (info["stage"], info["step"], info["parent"]) == ("sft", 2, "base")
    assert info["model"] == str((tiny_zoo / "wan").resolve())
    assert info["data"] == str((world / "videos.parquet").resolve())
    assert (info["sft"]["weighting"], info["sft"]["lora"]["rank"]) == ("none", 8)
    table = metrics(s1)
    assert table[(None, "videos")] == CLIPS
    for step in (1, 2):
        # weights of 1: the loss is the mean velocity error
        assert table[(step, "loss")] == pytest.approx(table[(step, "error")], rel=1e-6)
        assert table[(step, "grad_norm")] > 0


def test_resuming_a_finished_checkpoint_equals_training_straight_on(run_vpt, world, tiny_zoo):
    straight = sft(run_vpt, tiny_zoo, world, "straight", steps=3)
    first = sft(run_vpt, tiny_zoo, world, "first", steps=1)
    resumed = sft(run_vpt, tiny_zoo, world, "resumed", "--resume", first, steps=3)
    assert (resumed / "adapter_model.safetensors").read_bytes() == (straight / "adapter_model.safetensors").read_bytes()


def test_a_manifest_column_weighs_the_loss(run_vpt, world, tiny_zoo, recorded):
    items, losses = recorded
    out = sft(run_vpt, tiny_zoo, world, "weighted", "--weight-column", "brightness", steps=CLIPS)
    brightness = dict(zip(*pq.read_table(world / "videos.parquet", columns=["id", "brightness"]).to_pydict()
                          .values()))
    assert sorted(key for key, _ in items) == sorted(brightness)  # one epoch: every clip once
    for key, weight in items:
        assert weight == pytest.approx(brightness[key], rel=1e-6), key
    assert losses == [weight for _, weight in items]
    table = metrics(out)
    for step, weight in enumerate(losses, start=1):  # a micro-batch of one clip: loss = w * error
        assert table[(step, "loss")] == pytest.approx(weight * table[(step, "error")], rel=1e-5), step
    info = json.loads((out / "policy.json").read_text())["sft"]
    assert (info["weighting"], info["weight_column"]) == ("column", "brightness")


def test_flow_rwr_weighs_clips_by_the_softmax_of_their_rewards(run_vpt, world, tiny_zoo, recorded):
    items, losses = recorded
    beta = 0.1
    out = sft(run_vpt, tiny_zoo, world, "rwr", "--rwr-from", world / "scores.parquet", "--rwr-reward", "brightness",
              "--rwr-beta", str(beta), steps=CLIPS)
    scores = pq.read_table(world / "scores.parquet").to_pydict()
    rewards = np.array(scores["brightness"], dtype=np.float64)
    exponents = rewards / beta
    expected = len(rewards) * np.exp(exponents - exponents.max()) / np.exp(exponents - exponents.max()).sum()
    by_id = dict(zip(scores["id"], expected))
    assert expected.max() / expected.min() > 2  # the rewards do tell the clips apart at this beta
    assert sorted(key for key, _ in items) == sorted(by_id)
    for key, weight in items:
        assert weight == pytest.approx(by_id[key], rel=1e-6), key
    assert losses == [weight for _, weight in items]
    table = metrics(out)
    assert table[(None, "rwr/reward_mean")] == pytest.approx(rewards.mean(), rel=1e-12)
    assert table[(None, "rwr/weight_max")] == pytest.approx(expected.max(), rel=1e-12)
    assert table[(None, "rwr/effective_size")] == pytest.approx(expected.sum() ** 2 / (expected ** 2).sum(),
                                                                rel=1e-12)
    for step, weight in enumerate(losses, start=1):
        assert table[(step, "loss")] == pytest.approx(weight * table[(step, "error")], rel=1e-5), step
    info = json.loads((out / "policy.json").read_text())["sft"]
    assert (info["weighting"], info["rwr_reward"], info["rwr_beta"]) == ("rwr", "brightness", beta)


def test_clips_of_several_sizes_train_when_resampled(run_vpt, world, tiny_zoo, tmp_path):
    from vpt.toyworld import write_toy_videos

    big = read_table(write_toy_videos(tmp_path, n=2, seed=1, frames=13, height=48, width=32), "videos").to_pylist()
    small = read_table(world / "videos.parquet", "videos").to_pylist()[:2]
    rows = [{**row, "id": f"small-{row['id']}", "path": str(world / row["path"])} for row in small] + big
    write_table(rows, tmp_path / "mixed.parquet", "videos")
    result = run_vpt(["sft", "--model", tiny_zoo, "--data", tmp_path / "mixed.parquet", "--frames", "5", "--height",
                      "16", "--width", "16", "--max-steps", "2", "--cache", tmp_path / "cache", "-o",
                      tmp_path / "out", "-q"])
    assert result.exit_code == 0, result.stderr
    assert json.loads((tmp_path / "out" / "policy.json").read_text())["sft"]["size"] == [5, 16, 16]


def test_bad_inputs_get_one_line_and_exit_2(run_vpt, world, tiny_zoo, tmp_path):
    rows = read_table(world / "videos.parquet", "videos").to_pylist()
    for row in rows:
        row["path"] = str(world / row["path"])

    def manifest(name, change):
        write_table([change(i, dict(row)) for i, row in enumerate(rows)], tmp_path / name, "videos")
        return tmp_path / name

    negative = manifest("negative.parquet", lambda i, row: {**row, "weight": -1.0 if i == 1 else 1.0})
    zeros = manifest("zeros.parquet", lambda i, row: {**row, "weight": 0.0})
    no_prompt = manifest("no-prompt.parquet", lambda i, row: {**row, "prompt": None if i == 2 else row["prompt"]})
    gone = manifest("gone.parquet", lambda i, row: {**row, "path": "clips/gone.mp4"} if i == 3 else row)
    scores = read_table(world / "scores.parquet", "scores").to_pylist()
    unscored = tmp_path / "unscored.parquet"
    write_table(scores[1:], unscored, "scores")
    nan = tmp_path / "nan.parquet"
    write_table([{**row, "brightness": float("nan")} if i == 2 else row for i, row in enumerate(scores)], nan,
                "scores")
    videos, exists = world / "videos.parquet", tmp_path / "exists"
    exists.mkdir()
    cases = [
        (videos, ["--weight-column", "weight"],
         f"{videos}: has no column 'weight' for --weight-column; add it or name another"),
        (negative, ["--weight-column", "weight"],
         f"{negative}: row 2: column 'weight' is -1.0; weights must be finite numbers >= 0"),
        (zeros, ["--weight-column", "weight"],
         f"{zeros}: column 'weight' is all zeros; at least one clip needs a positive weight"),
        (world / "clips", ["--weight-column", "brightness"],
         "--weight-column names a column of a videos manifest; pass --data MANIFEST"),
        (videos, ["--weight-column", "brightness", "--rwr-from", world / "scores.parquet"],
         "give --weight-column or --rwr-from, not both"),
        (videos, ["--rwr-from", unscored],
         f"{unscored}: no score for video 'toy-0000' of {videos}; score the same videos (vpt score {videos} > "
         f"{unscored})"),
        (videos, ["--rwr-from", nan, "--rwr-reward", "brightness"],
         f"{nan}: row 3: column 'brightness' of video 'toy-0002' is not a finite number (nan); score it again or "
         "drop the video"),
        (videos, ["--rwr-from", world / "scores.parquet", "--rwr-reward", "vq"],
         f"{world / 'scores.parquet'}: has no column 'vq' for --rwr-reward; name a scores column"),
        (videos, ["--rwr-from", world / "scores.parquet", "--rwr-reward", "brightness=x"],
         "--rwr-reward brightness=x: expected COLUMN or COLUMN=WEIGHT,... with finite weights and each column once "
         "(e.g. score or vq=1,ta=2)"),
        (videos, ["--rwr-from", world / "scores.parquet", "--rwr-beta", "0"],
         "--rwr-beta must be a positive number, got 0.0"),
        (no_prompt, [], f"{no_prompt}: row 3: video toy-0002 has no prompt; add a prompt column to the manifest or "
                        "pass --prompts"),
        (gone, [], f"{gone}: row 4: clips/gone.mp4 does not exist; fix the path or drop the row"),
        (videos, ["--frames", "9"], "give --frames, --height and --width together (the size every clip is "
                                    "resampled to)"),
        (videos, ["-o", exists], f"{exists}: already exists; remove it or choose another --out"),
    ]
    for data, extra, message in cases:
        result = run_vpt(["sft", "--model", tiny_zoo, "--data", data, "--max-steps", "1", "--cache",
                          tmp_path / "cache", "-o", tmp_path / "out", "-q", *extra])
        assert (result.exit_code, result.stderr) == (2, f"vpt: error: {message}\n"), extra or data
        assert not (tmp_path / "out").exists() and not (tmp_path / "out.run").exists()
    # every case is refused before a clip is encoded
    assert not (tmp_path / "cache").exists() and list(exists.iterdir()) == []


def test_the_model_card_names_the_stage_and_command_without_local_paths(world, tiny_zoo):
    s1 = world / "s1"
    card = (s1 / "README.md").read_text()
    assert card.startswith("---\nbase_model: wan\nlibrary_name: peft\ntags:\n- vpt\n- sft\n- lora\n- text-to-video\n"
                           "---\n")
    for path in (world, tiny_zoo):
        for text in (str(path), str(path.resolve()), "/" + path.resolve().parts[1]):
            assert text not in card, text
    assert "\n1. this policy: sft (step 2)\n2. the generator `wan`\n" in card
    assert "\nvpt sft --data videos.parquet --model tiny-v" in card and " --out s1 " in card
    # peft's config names the generator, not a local path; peft loads it onto an explicitly given transformer
    assert json.loads((s1 / "adapter_config.json").read_text())["base_model_name_or_path"] == "wan"
