"""``vpt train-reward --kind latent`` on the tiny zoo: the run directory and the model it writes, one or two prefs
tables, seeded and resumed runs bit-identical, recorded versus encoded clip latents, sharded with FSDP2 over two
processes as on one, and one-line errors.

One rollouts directory (4 prompts x 4 samples of the tiny generator) is sampled once; its brightness pairs are
labelled vq and its motion pairs mq, as in tests/stages/test_nrg_learning.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from vpt.io.tables import read_table, write_table

PROMPTS = ["a red square moving slowly to the left on a dark background",
           "a blue circle standing still on a dim background",
           "a green triangle moving quickly upward on a bright background",
           "a yellow square moving steadily downward on a very bright background"]
SAMPLER = ["--steps", "8", "--guidance", "1", "--frames", "9", "--height", "32", "--width", "32", "--noise-level",
           "0", "-g", "4"]
TRAIN = ["--blocks", "2", "--batch-size", "4", "--lr", "1e-3", "--eval-fraction", "0.25", "--eval-every", "3",
         "--save-every", "3", "--log-every", "1"]
SIGMAS = ("0.2", "0.5", "0.8")


@pytest.fixture(scope="module")
def world(run_vpt, tiny_zoo, tmp_path_factory) -> Path:
    """root/rollouts (16 samples), root/prefs-vq.parquet (brightness pairs, vq) and root/prefs-mq.parquet (motion
    pairs, mq), and the shared encoding cache root/cache."""
    root = tmp_path_factory.mktemp("latent-reward")
    (root / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    sampled = run_vpt(["sample-rollouts", "-m", tiny_zoo, "--prompts", root / "prompts.txt", *SAMPLER, "-o",
                       root / "rollouts", "-q"])
    assert sampled.exit_code == 0, sampled.stderr
    for metric, label in (("brightness", "vq"), ("motion", "mq")):
        scored = run_vpt(["score", root / "rollouts" / "rollouts.parquet", "--model", metric, "-q"])
        assert scored.exit_code == 0, scored.stderr
        (root / f"{metric}.parquet").write_bytes(scored.stdout)
        built = run_vpt(["build-prefs", "--from-scores", root / f"{metric}.parquet", "--videos",
                         root / "rollouts" / "rollouts.parquet", "--reward", metric, "--label", label, "--top-k", "3",
                         "-o", root / f"prefs-{label}.parquet"])
        assert built.exit_code == 0, built.stderr
    return root


def train(run_vpt, zoo, world, out, *extra, tables=("vq", "mq"), steps=6, cache=None, quiet=True):
    """Run ``train-reward --kind latent`` on the world's prefs tables into ``out``; the CliResult."""
    data = [arg for label in tables for arg in ("--data", world / f"prefs-{label}.parquet")]
    return run_vpt(["train-reward", "--kind", "latent", "--model", zoo, *data, *TRAIN, "--max-steps", str(steps),
                    "--cache", cache or world / "cache", "--out", out, *(["-q"] if quiet else []), *extra])


def weights(out: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a saved latent reward model: the head's and the trunk's (prefixed ``trunk.``)."""
    tensors = dict(load_file(str(out / "head.safetensors")))
    for file in sorted((out / "trunk").glob("*.safetensors")):
        tensors.update({f"trunk.{name}": tensor for name, tensor in load_file(str(file)).items()})
    return tensors


def assert_same_weights(first: Path, second: Path) -> None:
    ours, theirs = weights(first), weights(second)
    assert ours.keys() == theirs.keys()
    different = [name for name in ours if not torch.equal(ours[name], theirs[name])]
    assert not different, different[:5]


def metric_rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def trained(run_vpt, tiny_zoo, world):
    """A 6-step run on both tables (non-quiet): (run directory, CliResult)."""
    out = world / "auto"
    result = train(run_vpt, tiny_zoo, world, out, quiet=False)
    assert result.exit_code == 0, result.stderr
    return out, result


def test_a_run_writes_the_model_its_summary_and_metrics(trained, tiny_zoo):
    """Two tables (vq pairs, mq pairs) train one 2-dimension model: record, trunk, head, summary with recorded clips
    and per-σ accuracies, training and evaluation rows in metrics.jsonl, checkpoints, loadable, and a summary table
    naming the dimensions and noise levels."""
    from vpt.models.latent_reward import load_latent_reward

    out, result = trained
    assert result.stdout == b""
    assert {"latent_reward.json", "trunk", "head.safetensors", "reward_training.json", "metrics.jsonl",
            "checkpoint-3", "checkpoint-6"} <= {path.name for path in out.iterdir()}
    record = json.loads((out / "latent_reward.json").read_text())
    assert (record["kind"], record["version"], record["dimensions"], record["blocks"], record["head_channels"]) == \
        ("vpt-latent-reward", 1, ["vq", "mq"], 2, 32)
    assert record["generator"] == str((tiny_zoo / "wan").resolve())
    assert len(record["vae_id"]) == 16 and len(record["text_encoder_id"]) == 16
    assert (out / "trunk" / "config.json").is_file()

    summary = json.loads((out / "reward_training.json").read_text())
    assert (summary["pairs"], summary["labelled_vq"], summary["labelled_mq"], summary["skipped_unlabelled"]) == \
        (32, 16, 16, 0)
    assert (summary["train_pairs"], summary["eval_pairs"], summary["steps"], summary["seed"]) == (24, 8, 6, 0)
    assert summary["recorded_clips"] == 16 and summary["accuracy_from"] == "eval"
    assert summary["dimensions"] == ["vq", "mq"] and summary["options"]["clip_latents"] == "auto"
    assert len(summary["eval_pair_ids"]) == 8
    expected = {f"{dim}_accuracy{at}" for dim in ("vq", "mq") for at in ("", *(f"@{s}" for s in SIGMAS))}
    assert set(summary["accuracy"]) == expected
    assert all(0 <= value <= 100 for value in summary["accuracy"].values())

    rows = metric_rows(out)
    assert [row["step"] for row in rows] == [1, 2, 3, 4, 5, 6]
    assert all({"loss", "lr", "grad_norm", "sigma"} <= set(row) for row in rows)
    assert all(0 <= row["sigma"] <= 1 for row in rows) and any("accuracy" in row for row in rows)
    evaluated = [row["step"] for row in rows if any(key.startswith("eval/") for key in row)]
    assert evaluated == [3, 6]
    assert {f"eval/{name}" for name in expected} <= set(rows[-1])

    model = load_latent_reward(out)
    assert model.dimensions == ("vq", "mq") and model.blocks == 2
    assert model.info["vae_id"] == record["vae_id"] and model.info["generator"] == record["generator"]
    with torch.no_grad():
        rewards = model(torch.randn(2, 16, 3, 4, 4), torch.tensor([0.2, 0.8]), torch.randn(2, 7, 32))
    assert rewards.shape == (2, 2) and rewards.dtype == torch.float32

    assert (f"train-reward --kind latent: 6 steps on 24 pairs, 16 clips from recorded latents; accuracy (%) on 8 "
            f"held-out pairs; model in {out}") in result.stderr
    table = result.stderr[result.stderr.index("train-reward --kind latent:"):].splitlines()
    assert table[1].split() == ["dim", "σ=0.2", "σ=0.5", "σ=0.8", "mean"]
    assert [line.split()[0] for line in table[2:]] == ["vq", "mq"]
    assert table[2].split()[1:] == [f"{summary['accuracy'][f'vq_accuracy@{s}']:.1f}" for s in SIGMAS] + \
        [f"{summary['accuracy']['vq_accuracy']:.1f}"]


def test_dims_choose_the_outputs(run_vpt, tiny_zoo, world):
    """``--dims mq`` on both tables trains a 1-dimension model on the mq pairs alone (the vq pairs are skipped);
    one table labelled in vq gives a vq model without --dims."""
    from vpt.models.latent_reward import load_latent_reward

    out = world / "mq-only"
    result = train(run_vpt, tiny_zoo, world, out, "--dims", "mq", steps=2)
    assert result.exit_code == 0, result.stderr
    assert result.stderr == ""
    summary = json.loads((out / "reward_training.json").read_text())
    assert (summary["pairs"], summary["skipped_unlabelled"], summary["labelled_mq"]) == (16, 16, 16)
    assert summary["dimensions"] == ["mq"] and set(summary["accuracy"]) == \
        {"mq_accuracy", *(f"mq_accuracy@{s}" for s in SIGMAS)}
    assert load_latent_reward(out).dimensions == ("mq",)
    assert load_file(str(out / "head.safetensors"))["weight"].shape[0] == 1

    out = world / "vq-only"
    assert train(run_vpt, tiny_zoo, world, out, "--eval-fraction", "0", tables=("vq",), steps=2).exit_code == 0
    assert json.loads((out / "latent_reward.json").read_text())["dimensions"] == ["vq"]
    summary = json.loads((out / "reward_training.json").read_text())
    assert (summary["train_pairs"], summary["eval_pairs"], summary["accuracy_from"]) == (16, 0, "train")
    assert set(summary["accuracy"]) == {"vq_accuracy", *(f"vq_accuracy@{s}" for s in SIGMAS)}
    assert not any(key.startswith("eval/") for row in metric_rows(out) for key in row)


def test_same_seed_same_model_and_resume_is_exact(run_vpt, tiny_zoo, world, trained, tmp_path):
    """The same seed trains bit-identical weights; a run stopped at step 3 and resumed (--resume) to step 6 ends
    with the weights and losses of the uninterrupted run; a used directory without --resume is refused."""
    reference, _ = trained
    again = tmp_path / "again"
    assert train(run_vpt, tiny_zoo, world, again).exit_code == 0
    assert_same_weights(reference, again)
    other = tmp_path / "other-seed"
    assert train(run_vpt, tiny_zoo, world, other, "--seed", "1").exit_code == 0
    assert not torch.equal(weights(reference)["weight"], weights(other)["weight"])

    out = tmp_path / "resumed"
    assert train(run_vpt, tiny_zoo, world, out, steps=3).exit_code == 0
    assert json.loads((out / "reward_training.json").read_text())["steps"] == 3
    refused = train(run_vpt, tiny_zoo, world, out)
    assert refused.exit_code == 2
    assert refused.stderr == (f"vpt: error: {out}: already holds a training run (checkpoints or metrics.jsonl); "
                              "resume it (--resume), or choose a new output directory\n")
    assert json.loads((out / "reward_training.json").read_text())["steps"] == 3  # left as it was
    resumed = train(run_vpt, tiny_zoo, world, out, "--resume", out)
    assert resumed.exit_code == 0, resumed.stderr
    assert json.loads((out / "reward_training.json").read_text())["steps"] == 6
    assert_same_weights(reference, out)
    assert [(row["step"], row["loss"]) for row in metric_rows(out)] == \
        [(row["step"], row["loss"]) for row in metric_rows(reference)]
    assert json.loads((out / "reward_training.json").read_text())["accuracy"] == \
        json.loads((reference / "reward_training.json").read_text())["accuracy"]


def test_clip_latents_encode_encodes_the_mp4s(run_vpt, tiny_zoo, world, trained, tmp_path):
    """``--clip-latents encode`` uses no recorded latent: every clip is encoded from its mp4 into the cache, and the
    model trained on those latents differs from the one trained on the recorded ones."""
    from vpt.models.loading import resolve_wan_directory
    from vpt.encoding.cache import EncodedCache

    out, cache = tmp_path / "encoded", tmp_path / "cache"
    result = train(run_vpt, tiny_zoo, world, out, "--clip-latents", "encode", cache=cache)
    assert result.exit_code == 0, result.stderr
    summary = json.loads((out / "reward_training.json").read_text())
    assert summary["recorded_clips"] == 0 and summary["options"]["clip_latents"] == "encode"
    vae_id = EncodedCache(cache).component_identity(resolve_wan_directory(tiny_zoo) / "vae")
    entries = sorted(path.name for path in (cache / "latents" / vae_id).iterdir())
    assert len(entries) == 16 and not any(name.startswith("recorded-") for name in entries)
    auto, _ = trained
    assert not torch.equal(weights(out)["weight"], weights(auto)["weight"])

    # clips resampled to the rollouts' own size still train on the recorded latents; to another size, encoded
    for size, recorded in (("9", 16), ("5", 0)):
        out = tmp_path / f"size-{size}"
        result = train(run_vpt, tiny_zoo, world, out, "--frames", size, "--height", "32", "--width", "32", steps=1)
        assert result.exit_code == 0, result.stderr
        summary = json.loads((out / "reward_training.json").read_text())
        assert (summary["recorded_clips"], summary["size"]) == (recorded, [int(size), 32, 32])

    # the run with recorded latents wrote one recorded entry per sample into its cache
    recorded = [path for path in (world / "cache" / "latents" / vae_id).iterdir() if path.name.startswith("recorded-")]
    assert len(recorded) == 16


def test_recorded_latents_are_the_sampler_final_latents(world, tiny_zoo, tmp_path):
    """The cache entry of a rollouts sample holds exactly ``RolloutSet.final_latent(row)``; clips of another size,
    another VAE, outside a rollouts directory or of rollouts without final latents are left to encoding."""
    import shutil

    import pyarrow.parquet as pq

    from vpt.models.loading import resolve_wan_directory
    from vpt.rollouts.store import cache_recorded_latents, load_rollouts
    from vpt.encoding.cache import EncodedCache, clip_size, load_latent

    cache = EncodedCache(world / "cache")
    vae_id = cache.component_identity(resolve_wan_directory(tiny_zoo) / "vae")
    rollouts = load_rollouts(world / "rollouts")
    files = [world / "rollouts" / row["path"] for row in rollouts.rows]
    found = cache_recorded_latents(cache, files, vae_id)
    assert list(found) == files
    for row, file in zip(rollouts.rows, files):
        latent = load_latent(found[file])
        assert latent.dtype == torch.float32 and torch.equal(latent, rollouts.final_latent(row))
        assert clip_size(found[file]) == (9, 32, 32)
    assert len(set(found.values())) == 16
    assert cache_recorded_latents(cache, files, vae_id, (9, 32, 32)) == found
    assert cache_recorded_latents(cache, files, vae_id, (5, 32, 32)) == {}
    assert cache_recorded_latents(cache, files, "0" * 16) == {}

    copied = tmp_path / "clip.mp4"
    shutil.copyfile(files[0], copied)
    assert cache_recorded_latents(cache, [copied], vae_id) == {}

    older = tmp_path / "older"
    shutil.copytree(world / "rollouts", older)
    table = pq.read_table(older / "rollouts.parquet")
    stripped = table.drop_columns(["final_latents_key"])
    pq.write_table(stripped.replace_schema_metadata(table.schema.metadata), older / "rollouts.parquet")
    assert cache_recorded_latents(cache, [older / row["path"] for row in rollouts.rows], vae_id) == {}


def invalid_prefs(world: Path, tmp_path: Path) -> Path:
    """The vq pairs with every vq, mq and ta label 'invalid' (overall left as it is)."""
    rows = read_table(world / "prefs-vq.parquet", "prefs").to_pylist()
    for row in rows:
        row.update(vq="invalid", mq="invalid", ta="invalid", path_a=str(world / row["path_a"]),
                   path_b=str(world / row["path_b"]))
    write_table(rows, tmp_path / "invalid.parquet", "prefs")
    return tmp_path / "invalid.parquet"


def test_two_sharded_processes_train_the_model_one_process_trains(run_vpt, tiny_zoo, world, tmp_path):
    """The shipped examples/accelerate/fsdp2.yaml on 2 CPU processes, one pair per micro-batch, against one process
    with two micro-batches per step: the same model (the sharded run's trunk gathered from its slices and written
    as save_pretrained writes it) and the same held-out accuracy."""
    import os
    import socket
    import subprocess
    import sys

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = str(sock.getsockname()[1])
    bin_dir = Path(sys.executable).parent
    fsdp2 = Path(__file__).resolve().parents[2] / "examples" / "accelerate" / "fsdp2.yaml"
    common = ["--batch-size", "1", "--max-steps", "3", "--save-every", "0"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HOME": str(tmp_path / "hf")}
    data = [arg for label in ("vq", "mq") for arg in ("--data", str(world / f"prefs-{label}.parquet"))]
    launched = subprocess.run(
        [str(bin_dir / "accelerate"), "launch", "--config_file", str(fsdp2), "--num_processes", "2",
         "--main_process_port", port, str(bin_dir / "vpt"), "train-reward", "--kind", "latent", "--model",
         str(tiny_zoo), *data, *TRAIN, *common, "--cache", str(world / "cache"), "--out", str(tmp_path / "two"), "-q"],
        capture_output=True, text=True, env=env, timeout=300)
    assert launched.returncode == 0, launched.stderr[-3000:]
    alone = train(run_vpt, tiny_zoo, world, tmp_path / "one", *common, "--grad-accum", "2", steps=3)
    assert alone.exit_code == 0, alone.stderr
    one, two = weights(tmp_path / "one"), weights(tmp_path / "two")
    assert one.keys() == two.keys()
    for name in one:  # three Adam steps of lr 1e-3: float summation order shows at ~1e-6
        torch.testing.assert_close(two[name], one[name], rtol=0, atol=2e-5)
    summaries = [json.loads((tmp_path / name / "reward_training.json").read_text()) for name in ("one", "two")]
    assert summaries[0]["accuracy"] == summaries[1]["accuracy"]


@pytest.mark.parametrize("case", ["lora-rank", "blocks-videoreward", "no-prefs", "kind", "dims", "loss",
                                  "unlabelled", "unlabelled-dims", "too-many-blocks", "two-tables-videoreward"])
def test_errors_are_one_line(run_vpt, tiny_zoo, world, tmp_path, case):
    """Each mistake is one exact line after ``vpt: error:``, exit code 2, and --out is never created."""
    prefs = world / "prefs-vq.parquet"
    kind, extra = "latent", []
    if case == "lora-rank":
        extra = ["--lora-rank", "4"]
        expected = "--lora-rank applies to --kind videoreward; leave it out with --kind latent"
    elif case == "blocks-videoreward":
        kind, extra = "videoreward", ["--blocks", "2"]
        expected = "--blocks applies to --kind latent; leave it out with --kind videoreward"
    elif case == "no-prefs":
        prefs, expected = None, "no prefs table: give it as the argument or with --data"
    elif case == "kind":
        kind, expected = "bogus", "--kind bogus: choose videoreward or latent"
    elif case == "dims":
        extra, expected = ["--dims", "xx"], "--dims xx: name distinct label columns among vq, mq, ta, overall"
    elif case == "loss":
        extra = ["--loss", "reg"]
        expected = "--loss reg: a latent reward model trains with btt or bt (pairs, not mean opinion scores)"
    elif case == "unlabelled":
        prefs = invalid_prefs(world, tmp_path)
        expected = (f"{prefs}: no pair is labelled in vq, mq or ta; label the pairs (build-prefs), or name the label "
                    "columns with --dims")
    elif case == "unlabelled-dims":
        prefs, extra = invalid_prefs(world, tmp_path), ["--dims", "vq,mq"]
        expected = f"{prefs}: no pair is labelled a, b or tie in vq, mq; label the pairs, or choose other --dims"
    elif case == "too-many-blocks":  # found once the clips are encoded: -q keeps their progress line out
        extra = ["--blocks", "3", "-q"]
        expected = "--blocks 3: the generator's transformer has 2 blocks; choose 1 to 2"
    else:
        kind, extra = "videoreward", ["--data", world / "prefs-mq.parquet"]
        expected = "--kind videoreward trains on one prefs table; merge the tables into one"
    out = tmp_path / "out"
    result = run_vpt(["train-reward", *([] if prefs is None else [prefs]), "--kind", kind, "--model", tiny_zoo,
                      "--out", out, *extra, *([] if kind == "videoreward" else ["--cache", tmp_path / "cache"])])
    assert result.exit_code == 2
    assert result.stderr == f"vpt: error: {expected}\n"
    assert not out.exists()
