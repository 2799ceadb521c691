"""One small post-training run shared by the report's tests: base rollouts, two GRPO iterations, rollouts of the
first policy from the same initial noises, their scores, and hand-written tables of the kinds no stage here writes
(a judged run, GSB counts, reward-bench accuracy, a benchmark text table)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from vpt.io.tables import read_table, write_table

SMALL = ["--frames", "9", "--height", "32", "--width", "32", "--steps", "4", "-g", "2", "--seed", "5", "-q"]
TRAIN = ["--reward", "brightness", "--lr", "1e-2", "-q"]
JUDGED = {  # iteration -> reward/mean, judge/vq/mean: the reward rises by 0.1 an iteration while the judge falls
    1: (0.1, 0.5), 2: (0.2, 0.4), 3: (0.3, 0.3)}


@dataclass(frozen=True)
class ReportWorld:
    root: Path
    report: Path  # the report folder of RUNS
    args: list  # the report's command line after "vpt"
    stdout: bytes
    stderr: str


def judged_metrics() -> list[dict]:
    """Three iterations of a run whose reward rises while a held-out judge falls, with drift rows."""
    rows = []
    for iteration, (reward, judge) in JUDGED.items():
        rows += [{"iteration": iteration, "step": None, "name": name, "value": value} for name, value in
                 (("reward/mean", reward), ("reward/std", 0.05), ("judge/vq/mean", judge), ("judge/vq/std", 0.1),
                  ("judge/n", 4.0))]
        rows.append({"iteration": iteration, "step": iteration, "name": "loss", "value": 1.0 / iteration})
    rows += [{"iteration": 3, "step": None, "name": f"drift/{sigma:.2f}", "value": sigma ** 2}
             for sigma in (0.1, 0.5, 0.9)]
    return rows


@pytest.fixture(scope="session")
def report_world(run_vpt, tiny_zoo, tmp_path_factory) -> ReportWorld:
    root = tmp_path_factory.mktemp("report")
    (root / "prompts.txt").write_text("a red ball bouncing\na white ring on a dark floor\n")
    commands = [
        ["sample-rollouts", "-m", tiny_zoo, "--prompts", root / "prompts.txt", "-o", root / "r0", *SMALL],
        ["score", root / "r0" / "rollouts.parquet", "-m", "brightness,motion", "-o", root / "r0" / "scores.parquet",
         "-q"],
        ["grpo-step", "--init", tiny_zoo, "--rollouts", root / "r0", "--scores", root / "r0" / "scores.parquet", "-o",
         root / "p1", *TRAIN],
        ["sample-rollouts", "-m", tiny_zoo, "--policy", root / "p1", "--prompts", root / "prompts.txt", "-o",
         root / "r1", *SMALL],
        ["score", root / "r1" / "rollouts.parquet", "-m", "brightness,motion", "-o", root / "r1" / "scores.parquet",
         "-q"],
        ["grpo-step", "--policy", root / "p1", "--rollouts", root / "r1", "--scores", root / "r1" / "scores.parquet",
         "-o", root / "p2", *TRAIN],
    ]
    for command in commands:
        result = run_vpt(command)
        assert result.exit_code == 0, result.stderr
    # a third stage: r1's videos under other seeds, so no video shares the base's initial noise
    shifted = [{"path": f"../r1/{row['path']}", "prompt": row["prompt"], "seed": row["seed"] + 1}
               for row in read_table(root / "r1" / "rollouts.parquet", "rollouts").to_pylist()]
    (root / "shifted").mkdir()
    write_table(shifted, root / "shifted" / "videos.parquet", "videos")
    (root / "judged").mkdir()
    write_table(judged_metrics(), root / "judged" / "metrics.parquet", "metrics")
    write_table([{"aspect": "overall", "good": 34, "same": 48, "bad": 18}], root / "judged" / "gsb.parquet",
                "gsb_counts")
    write_table([{"dimension": "VQ", "score_column": "vq", "accuracy_with_ties": 61.25, "tie_threshold": 0.5,
                  "accuracy_without_ties": 73.5, "pairs": 40, "ties": 8}], root / "judged" / "bench.parquet",
                "rewardbench")
    (root / "tables").mkdir()
    (root / "tables" / "table-3.txt").write_text("stage  win rate\np1     55.0 <ok>\n")
    args = ["report", root / "r0", root / "r1", root / "shifted", root / "p1", root / "p2", root / "judged",
            "--tables", root / "tables", "-o", root / "out"]
    result = run_vpt(args)
    assert result.exit_code == 0, result.stderr
    return ReportWorld(root, root / "out", args, result.stdout, result.stderr)
