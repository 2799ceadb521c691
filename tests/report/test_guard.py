"""The reward-hacking rule on hand-built metrics tables, with the numbers worked by hand (see vpt.report.guard)."""

from __future__ import annotations

import pytest

from vpt.io.tables import read_table, write_table
from vpt.report.guard import Flag, dpo_flags, grpo_flags, run_flags, slope


def table(tmp_path, series: dict[str, list[float]], name: str = "metrics.parquet") -> list[dict]:
    """A metrics table written and read back: ``series`` name -> per-iteration values (iterations 1, 2, ...)."""
    rows = [{"iteration": k, "step": None, "name": metric, "value": value}
            for metric, values in series.items() for k, value in enumerate(values, start=1)]
    write_table(rows, tmp_path / name, "metrics")
    return read_table(tmp_path / name, "metrics").to_pylist()


def test_slope_is_least_squares():
    assert slope([1, 2, 3], [0.5, 0.4, 0.3]) == pytest.approx(-0.1)
    assert slope([1, 2, 3, 4], [1.0, 3.0, 2.0, 4.0]) == pytest.approx(0.8)  # sum dx*dy = 4, sum dx^2 = 5


def test_a_rising_reward_with_a_falling_judge_is_flagged(tmp_path):
    # reward slope +0.1; judge fitted fall 0.1 * (3 - 1) = 0.2; bar = 0.1 / sqrt(4) = 0.05
    rows = table(tmp_path, {"reward/mean": [0.1, 0.2, 0.3], "judge/vq/mean": [0.5, 0.4, 0.3],
                            "judge/vq/std": [0.1, 0.1, 0.1], "judge/n": [4, 4, 4]})
    [flag] = grpo_flags(rows)
    assert flag.judge == "vq" and flag.reward_slope == pytest.approx(0.1)
    assert flag.fall == pytest.approx(0.2) and flag.bar == pytest.approx(0.05)
    assert flag.describe().startswith("reward/mean rose (+0.1 per iteration) while judge 'vq' fell 0.2 over the run")


def test_a_rising_judge_is_not_flagged(tmp_path):
    rows = table(tmp_path, {"reward/mean": [0.1, 0.2, 0.3], "judge/vq/mean": [0.3, 0.4, 0.5],
                            "judge/vq/std": [0.1, 0.1, 0.1], "judge/n": [4, 4, 4]})
    assert grpo_flags(rows) == []


def test_a_noise_sized_fall_is_not_flagged(tmp_path):
    # fall 0.01 * 2 = 0.02 is under the bar 0.1 / sqrt(16) = 0.025
    rows = table(tmp_path, {"reward/mean": [0.1, 0.2, 0.3], "judge/vq/mean": [0.5, 0.49, 0.48],
                            "judge/vq/std": [0.1, 0.1, 0.1], "judge/vq/n": [16, 16, 16]})
    assert grpo_flags(rows) == []
    # the same fall with a tighter judge (std 0.02, bar 0.005) is flagged
    tight = table(tmp_path, {"reward/mean": [0.1, 0.2, 0.3], "judge/vq/mean": [0.5, 0.49, 0.48],
                             "judge/vq/std": [0.02, 0.02, 0.02], "judge/vq/n": [16, 16, 16]}, "tight.parquet")
    assert [flag.judge for flag in grpo_flags(tight)] == ["vq"]


def test_without_a_sample_count_the_bar_is_the_judge_std(tmp_path):
    # fall 0.2 is under std 0.25 (n = 1): not flagged; with std 0.15 it is
    loose = table(tmp_path, {"reward/mean": [0.1, 0.2, 0.3], "judge/vq/mean": [0.5, 0.4, 0.3],
                             "judge/vq/std": [0.25, 0.25, 0.25]})
    assert grpo_flags(loose) == []
    firm = table(tmp_path, {"reward/mean": [0.1, 0.2, 0.3], "judge/vq/mean": [0.5, 0.4, 0.3],
                            "judge/vq/std": [0.15, 0.15, 0.15]}, "firm.parquet")
    assert grpo_flags(firm)[0].bar == pytest.approx(0.15)


def test_a_falling_reward_or_a_single_iteration_is_not_flagged(tmp_path):
    falling = table(tmp_path, {"reward/mean": [0.3, 0.2, 0.1], "judge/vq/mean": [0.5, 0.4, 0.3],
                               "judge/vq/std": [0.01, 0.01, 0.01]})
    assert grpo_flags(falling) == []
    single = table(tmp_path, {"reward/mean": [0.1], "judge/vq/mean": [0.5], "judge/vq/std": [0.01]}, "one.parquet")
    assert grpo_flags(single) == []


def test_a_dpo_judge_below_its_start_is_flagged(tmp_path):
    # start 0.6, trained 0.5: a fall of 0.1 over the bar 0.08 / sqrt(4) = 0.04
    rows = table(tmp_path, {"judge/ta/start_mean": [0.6], "judge/ta/start_std": [0.08], "judge/ta/mean": [0.5],
                            "judge/ta/std": [0.08], "judge/n": [4]})
    assert dpo_flags(rows) == [Flag("ta", pytest.approx(0.1), pytest.approx(0.04), None)]
    assert run_flags([rows]) == dpo_flags(rows)
    noise = table(tmp_path, {"judge/ta/start_mean": [0.6], "judge/ta/mean": [0.57], "judge/ta/std": [0.08],
                             "judge/n": [4]}, "noise.parquet")
    assert dpo_flags(noise) == []  # a fall of 0.03 is under 0.04
    better = table(tmp_path, {"judge/ta/start_mean": [0.5], "judge/ta/mean": [0.6], "judge/ta/std": [0.01]},
                   "better.parquet")
    assert dpo_flags(better) == []
