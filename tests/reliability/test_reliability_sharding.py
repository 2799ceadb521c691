"""An accelerate config vpt cannot follow — FSDP1, or FSDP for a command that does not shard — and a
``--context-parallel`` degree that does not fit stop the command in one line naming the setting and what to do (exit
2, no traceback, nothing written). The config reaches a command as accelerate's launch environment, set here
directly."""

from __future__ import annotations

import pytest

from reliability_world import SAMPLER, assert_refused

FSDP1 = ("the accelerate config asks for fsdp_version 1; vpt shards with FSDP2: set fsdp_version: 2 (see "
         "examples/accelerate/fsdp2.yaml)")


@pytest.fixture
def fsdp(monkeypatch):
    def launch_environment(version: int) -> None:
        monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
        monkeypatch.setenv("FSDP_VERSION", str(version))
    return launch_environment


def test_score_under_an_fsdp_config_is_refused(fsdp, run_vpt, toy_manifest, tmp_path):
    fsdp(2)
    result = run_vpt(["score", "-m", "brightness", toy_manifest, "-o", tmp_path / "out.parquet"])
    assert_refused(result, "score does not shard its models, but the accelerate config asks for FSDP; launch it "
                           "with a DDP config (examples/accelerate/ddp.yaml) or none", tmp_path / "out.parquet")


def test_sampling_under_an_fsdp1_config_is_refused(fsdp, run_vpt, tiny_zoo, tmp_path):
    fsdp(1)
    (tmp_path / "prompts.txt").write_text("a red ball\n")
    result = run_vpt(["sample-rollouts", "-m", tiny_zoo, "--prompts", tmp_path / "prompts.txt", "-g", "2", *SAMPLER,
                      "-o", tmp_path / "out"])
    assert_refused(result, FSDP1, tmp_path / "out")


def test_training_under_an_fsdp1_config_is_refused(fsdp, run_vpt, tiny_zoo, toy_manifest, tmp_path):
    fsdp(1)
    result = run_vpt(["sft", "-m", tiny_zoo, "--data", toy_manifest, "--max-steps", "1", "--frames", "9", "--height",
                      "32", "--width", "32", "--cache", tmp_path / "cache", "-q", "-o", tmp_path / "out"])
    assert_refused(result, FSDP1, tmp_path / "out", tmp_path / "out.run")


@pytest.mark.parametrize("degree, message", [
    ("3", "--context-parallel 3: must divide the transformer's 2 attention heads and the 1 process; choose 1"),
    ("2", "--context-parallel 2: must divide the transformer's 2 attention heads and the 1 process; choose 1"),
    ("0", "--context-parallel 0: must be a whole number of processes, at least 1 (1 = off)")])
def test_sampling_with_a_context_parallel_degree_that_does_not_fit_is_refused(degree, message, run_vpt, tiny_zoo,
                                                                               tmp_path):
    (tmp_path / "prompts.txt").write_text("a red ball\n")
    result = run_vpt(["sample-rollouts", "-m", tiny_zoo, "--prompts", tmp_path / "prompts.txt", "-g", "2", *SAMPLER,
                      "--context-parallel", degree, "-o", tmp_path / "out"])
    assert_refused(result, message, tmp_path / "out")


def test_training_with_a_context_parallel_degree_that_does_not_fit_is_refused(run_vpt, tiny_zoo, toy_manifest,
                                                                               tmp_path):
    result = run_vpt(["sft", "-m", tiny_zoo, "--data", toy_manifest, "--max-steps", "1", "--frames", "9", "--height",
                      "32", "--width", "32", "--cache", tmp_path / "cache", "--context-parallel", "2", "-q", "-o",
                      tmp_path / "out"])
    assert_refused(result, "--context-parallel 2: must divide the transformer's 2 attention heads and the 1 process; "
                           "choose 1", tmp_path / "out", tmp_path / "out.run")
