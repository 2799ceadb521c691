"""Bad guard options of grpo-step and dpo (held-out judges, evaluation samples, drift probes): refused before
anything is loaded or written, with one exact line and exit code 2."""

from __future__ import annotations

import pytest

from reliability_world import assert_refused


def unknown(name: str) -> str:
    from vpt.rewards.registry import available_models

    return (f"--judge: unknown reward model '{name}'; available: {', '.join(available_models())}, KIND:DIR (e.g. "
            "clip:DIR), a VideoReward checkpoint directory, or a reward server http://HOST:PORT/")


def grpo(world, tmp, *extra):
    return ["grpo-step", "--init", world.zoo, "--rollouts", world.rollouts, "--scores", world.scores, "--reward",
            "brightness", "-q", "-o", tmp / "out", *extra]


def dpo(world, tmp, *extra):
    return ["dpo", "-m", world.zoo, "--prefs", world.prefs, "--dim", "vq", "--max-steps", "1", "--cache",
            tmp / "cache", "-q", "-o", tmp / "out", *extra]


CASES = {
    "grpo-step/unknown --judge": (lambda w, t: grpo(w, t, "--judge", "nope"), lambda w, t: unknown("nope")),
    "grpo-step/--drift-probes -1": (lambda w, t: grpo(w, t, "--drift-probes", "-1"),
                                    lambda w, t: "--drift-probes -1: give the number of latents to measure the drift "
                                                 "on (0: off)"),
    "dpo/unknown --judge": (lambda w, t: dpo(w, t, "--judge", "brightness", "--judge", "nope"),
                            lambda w, t: unknown("nope")),
    "dpo/--eval-samples -1": (lambda w, t: dpo(w, t, "--judge", "brightness", "--eval-samples", "-1"),
                              lambda w, t: "--eval-samples -1: give at least 1 sample per evaluation prompt"),
    "dpo/--eval-prompts missing": (
        lambda w, t: dpo(w, t, "--judge", "brightness", "--eval-prompts", t / "none.txt"),
        lambda w, t: f"--eval-prompts {t / 'none.txt'}: no such file; give a prompts file (one prompt per line, or "
                     "a prompts table)"),
    "dpo/--eval-prompts empty": (
        lambda w, t: dpo(w, t, "--judge", "brightness", "--eval-prompts", t / "empty.txt"),
        lambda w, t: f"--eval-prompts {t / 'empty.txt'}: holds no prompt (one prompt per line)"),
    "dpo/--eval-prompts without --judge": (
        lambda w, t: dpo(w, t, "--eval-prompts", w.prompts),
        lambda w, t: "--eval-prompts are the prompts the judges score samples of; add --judge MODEL"),
    "dpo/--drift-probes -1": (lambda w, t: dpo(w, t, "--drift-probes", "-1"),
                              lambda w, t: "--drift-probes -1: give the number of latents to measure the drift on "
                                           "(0: off)"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_guard_options_are_refused_in_one_line(name, world, run_vpt, tmp_path):
    (tmp_path / "empty.txt").write_text("\n  \n", encoding="utf-8")
    args, message = CASES[name]
    result = run_vpt(args(world, tmp_path))
    assert_refused(result, message(world, tmp_path), tmp_path / "out", tmp_path / "out.run", tmp_path / "cache")
