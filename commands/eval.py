"""``vpt eval``: metric tables from scores, preferences and human judgements."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from vpt.commands import _outputs, _ui

app = typer.Typer(help="Compute evaluation metrics (reward-bench accuracy, ...).", no_args_is_help=True)


@app.command("rewardbench")
def rewardbench(
    bench: str = typer.Argument(..., help="Benchmark pairs: path_A,path_B,prompt,VQ,MQ,TA[,Overall] (CSV or Parquet)."),
    scores: Optional[str] = typer.Option(None, "--scores", help="scores table of the benchmark's videos."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Score the videos with this model instead."),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="Directory the benchmark paths are relative to "
                                                                     "(default: the benchmark file's directory)."),
    mapping: List[str] = typer.Option([], "--map", help="Scores column for a dimension, e.g. VQ=brightness."),
    output: Optional[str] = typer.Option(None, "--output", "-o", callback=_outputs.output_file,
                                         help="Also write the rewardbench table here."),
    batch_size: int = typer.Option(8, "--batch-size", help="Videos scored together (with --model)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Reward-bench accuracy with and without ties per dimension (VideoAlign Table 2).

    Each unique (video, prompt) is scored once.
    """
    from vpt.errors import VptError
    from vpt.io.manifest import ScoreIndex, pair_videos
    from vpt.io.tables import read_table, source_directory, write_table
    from vpt.metrics.rewardbench import benchmark_table, score_columns

    if (scores is None) == (model is None):
        raise VptError("give exactly one of --scores TABLE or --model NAME")
    table = read_table(bench, "annotations")
    base = data_dir if data_dir is not None else source_directory(bench)
    columns = score_columns(mapping)
    if scores is not None:
        index = ScoreIndex(read_table(scores, "scores").to_pylist(), scores)
    else:
        from vpt.rewards.engine import score_videos
        from vpt.rewards.registry import load_reward_model

        items = pair_videos(table.column("path_A").to_pylist(), table.column("path_B").to_pylist(),
                            table.column("prompt").to_pylist(), base)
        with _ui.progress(len(items), "scoring", quiet) as advance:
            rows = [row for batch in score_videos(items, [load_reward_model(model)], batch_size,
                                                  on_progress=advance) for row in batch]
        index = ScoreIndex(rows, model)
    rows = benchmark_table(bench, table, index, base, columns)
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


@app.command("gsb")
def gsb(
    good: Optional[int] = typer.Option(None, "--good", help="Judgements where the model was better (G)."),
    same: Optional[int] = typer.Option(None, "--same", help="Judgements where the two were the same (S)."),
    bad: Optional[int] = typer.Option(None, "--bad", help="Judgements where the model was worse (B)."),
    aspect: Optional[str] = typer.Option(None, "--aspect", help="Aspect of --good/--same/--bad (default overall)."),
    counts: Optional[str] = typer.Option(None, "--counts", help="gsb_counts table: aspect,good,same,bad per row."),
    judgements: Optional[str] = typer.Option(None, "--judgements", help="gsb_judgements table: one judgement (G/S/B) "
                                                                        "per row, an optional aspect, other columns."),
    cluster_by: Optional[str] = typer.Option(None, "--cluster-by", help="Judgements column whose equal values form "
                                                                        "one bootstrap cluster, e.g. prompt_id."),
    bootstrap: int = typer.Option(10_000, "--bootstrap", help="Bootstrap replicates."),
    confidence: float = typer.Option(0.95, "--confidence", help="Coverage of the intervals."),
    seed: int = typer.Option(0, "--seed", help="Seed of the bootstrap."),
    output: Optional[str] = typer.Option(None, "--output", "-o", callback=_outputs.output_file,
                                         help="Also write the gsb table here."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print no text table."),
) -> None:
    """GSB human evaluation of a model against a baseline: WinRate, Preference and Margin with bootstrap intervals.

    WinRate = G/(G+B), Preference = (G + S/2)/N, Margin = (G-B)/N, in percent.

    Judgements of one prompt are not independent: --cluster-by prompt_id resamples whole prompts.
    """
    from vpt.errors import VptError
    from vpt.io.tables import read_table, write_table
    from vpt.metrics.gsb import counts_by_aspect, gsb_row, judgement_counts_by_aspect

    direct = {"good": good, "same": same, "bad": bad}
    from_options = any(value is not None for value in direct.values())
    if from_options + (counts is not None) + (judgements is not None) != 1:
        raise VptError("give exactly one input: --good N --same N --bad N, --counts TABLE or --judgements TABLE")
    if aspect is not None and not from_options:
        raise VptError("--aspect goes with --good/--same/--bad; a table names its aspects in its aspect column")
    if cluster_by is not None and judgements is None:
        raise VptError("--cluster-by needs individual judgements: give them with --judgements TABLE")
    if bootstrap < 1:
        raise VptError(f"--bootstrap {bootstrap}: give at least 1 replicate (10000 is usual)")
    if not 0 < confidence < 1:
        raise VptError(f"--confidence {confidence}: give a coverage strictly between 0 and 1, e.g. 0.95")

    if counts is not None:
        groups = counts_by_aspect(read_table(counts, "gsb_counts"), counts)
    elif judgements is not None:
        groups = judgement_counts_by_aspect(read_table(judgements, "gsb_judgements"), judgements, cluster_by)
    else:
        missing = [f"--{name}" for name, value in direct.items() if value is None]
        if missing:
            raise VptError(f"--good, --same and --bad go together; add {' and '.join(missing)}")
        for name, value in direct.items():
            if value < 0:
                raise VptError(f"--{name} {value}: counts must be 0 or more")
        groups = {aspect or "overall": [good, same, bad]}
    rows = [gsb_row(name, group_counts, bootstrap, confidence, seed) for name, group_counts in groups.items()]
    if output is not None:
        write_table(rows, output, "gsb")
    if not quiet:
        interval = f"{100 * confidence:.10g}% CI"
        header = ["aspect", "G", "S", "B", "N", "WinRate", interval, "Preference", interval, "Margin", interval]
        body = [[r["aspect"], str(r["good"]), str(r["same"]), str(r["bad"]), str(r["total"]),
                 *(cell for metric in ("win_rate", "preference", "margin")
                   for cell in (_percent(r[metric]), _interval(r[f"{metric}_low"], r[f"{metric}_high"])))]
                for r in rows]
        # With -o -, stdout carries the Parquet table.
        typer.echo(_ui.aligned([header, *body]), err=output == "-")


def _interval(low: float | None, high: float | None) -> str:
    return "n/a" if low is None or high is None else f"[{low:.2f}, {high:.2f}]"
