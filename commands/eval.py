"""``vpt eval``: metric tables from scores, preferences and human judgements."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from vpt.commands import _ui

app = typer.Typer(help="Compute evaluation metrics (reward-bench accuracy, ...).", no_args_is_help=True)


def _column_map(pairs: list[str]) -> dict[str, str]:
    from vpt.errors import VptError
    from vpt.metrics.rewardbench import DIMENSIONS

    columns = dict(DIMENSIONS)
    for pair in pairs:
        dimension, _, column = pair.partition("=")
        if dimension not in DIMENSIONS or not column:
            raise VptError(f"--map {pair}: expected DIM=COLUMN with DIM one of {', '.join(DIMENSIONS)}")
        columns[dimension] = column
    return columns


@app.command("rewardbench")
def rewardbench(
    bench: str = typer.Argument(..., help="Benchmark pairs: path_A,path_B,prompt,VQ,MQ,TA[,Overall] (CSV or Parquet)."),
    scores: Optional[str] = typer.Option(None, "--scores", help="scores table of the benchmark's videos."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Score the videos with this model instead."),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="Directory the benchmark paths are relative to "
                                                                     "(default: the benchmark file's directory)."),
    mapping: List[str] = typer.Option([], "--map", help="Scores column for a dimension, e.g. VQ=brightness."),
    output: Optional[str] = typer.Option(None, "--output", "-o", help="Also write the rewardbench table here."),
    batch_size: int = typer.Option(8, "--batch-size", help="Videos scored together (with --model)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Reward-bench accuracy with and without ties per dimension (VideoAlign Table 2).

    Each unique (video, prompt) is scored once.
    """
    from vpt.errors import VptError
    from vpt.io.manifest import ScoreIndex, pair_videos
    from vpt.io.tables import read_table, source_directory, write_table
    from vpt.metrics.rewardbench import benchmark_rows

    if (scores is None) == (model is None):
        raise VptError("give exactly one of --scores TABLE or --model NAME")
    table = read_table(bench, "annotations")
    base = data_dir if data_dir is not None else source_directory(bench)
    columns = _column_map(mapping)
    pairs = table.to_pylist()
    if scores is not None:
        index, source = ScoreIndex(read_table(scores, "scores").to_pylist(), scores), scores
    else:
        from vpt.rewards.engine import score_videos
        from vpt.rewards.registry import load_reward_model

        items = pair_videos(table.column("path_A").to_pylist(), table.column("path_B").to_pylist(),
                            table.column("prompt").to_pylist(), base)
        with _ui.progress(len(items), "scoring", quiet) as advance:
            rows = [row for batch in score_videos(items, [load_reward_model(model)], batch_size,
                                                  on_progress=advance) for row in batch]
        index, source = ScoreIndex(rows, model), model
    labels, margins = {}, {}
    for dimension, column in columns.items():
        if dimension not in table.column_names:
            continue
        labels[dimension], margins[dimension] = [], []
        for number, pair in enumerate(pairs, start=1):
            where = f"{bench} row {number}"
            a = index.find(pair["path_A"], pair["prompt"], base, where)
            b = index.find(pair["path_B"], pair["prompt"], base, where)
            if column not in a:
                raise VptError(f"{source}: has no column '{column}' for {dimension}; choose one with --map {dimension}=COLUMN")
            labels[dimension].append(pair[dimension])
            margins[dimension].append(a[column] - b[column])
    rows = benchmark_rows(labels, margins, {d: columns[d] for d in labels})
    if output is not None:
        write_table(rows, output, "rewardbench")
    header = ["dimension", "column", "acc w/ ties", "tie eps", "acc w/o ties", "pairs", "ties"]
    body = [[r["dimension"], r["score_column"], _percent(r["accuracy_with_ties"]), _number(r["tie_threshold"]),
             _percent(r["accuracy_without_ties"]), str(r["pairs"]), str(r["ties"])] for r in rows]
    typer.echo(_ui.aligned([header, *body]))


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4g}"
