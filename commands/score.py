"""``vpt score``: score videos with one or more reward models into a ``scores`` table."""

from __future__ import annotations

from typing import List, Optional

import typer

from vpt.commands import _outputs, _ui
from vpt.commands._lists import comma_list


def score(
    inputs: List[str] = typer.Argument(
        None, help="Videos: a directory, files, a glob, or a videos manifest table (- for stdin).", show_default=False
    ),
    models: List[str] = typer.Option(
        ..., "--model", "-m", help="Reward model; repeat or comma-separate for several (decoded once for all)."
    ),
    prompts: Optional[str] = typer.Option(None, "--prompts", help="prompts table with id and prompt columns."),
    base_dir: Optional[str] = typer.Option(None, "--base-dir", help="Directory a manifest's relative paths are "
                                                                    "relative to (default: the manifest's; needed "
                                                                    "for a manifest read from stdin)."),
    model_dir: Optional[str] = typer.Option(None, "--model-dir", help="Local copy of the videoreward weights "
                                            "(default: $VPT_VIDEOREWARD_DIR, then the Hugging Face hub)."),
    device: str = typer.Option("auto", "--device", help="Device of learned reward models: auto (this process's GPU "
                               "when there is one), cpu, cuda, cuda:1."),
    dtype: str = typer.Option("fp32", "--dtype", help="Weights dtype of learned reward models: bf16 or fp32."),
    raw: bool = typer.Option(False, "--raw", help="Also write VideoReward's raw head outputs (vq_raw, ...)."),
    output: str = typer.Option("-", "--output", "-o", callback=_outputs.output_file,
                               help="Output scores table; - is stdout."),
    batch_size: int = typer.Option(8, "--batch-size", help="Videos scored together."),
    workers: int = typer.Option(2, "--workers", help="Background decoding threads."),
    strict: bool = typer.Option(False, "--strict", help="Stop at the first unreadable video instead of a row with "
                                                        "error."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar or summary."),
) -> None:
    """Score videos with reward models into a scores table.

    Rows stream to the output as batches finish. Under `accelerate launch` each process scores its share and the
    main process writes the one table, every input exactly once, in input order.

    Example:

    \b
      vpt score --model brightness,motion videos/ > scores.parquet
    """
    from vpt.distributed import current_processes, sharded_launch
    from vpt.io.manifest import collect_videos
    from vpt.models.dtypes import check_dtype
    from vpt.io.tables import TableWriter
    from vpt.rewards.engine import ScoreSummary, output_columns, score_videos
    from vpt.rewards.registry import load_reward_models

    names = comma_list(models, "--model", "brightness,motion")
    check_dtype(dtype)  # a bad value stops the command even when only heuristics are named
    processes = current_processes()
    sharded_launch(processes, "score", can_shard=False)  # each process scores its share with whole models
    reward_models = load_reward_models(names, model_dir, device, batch_size, raw, dtype)
    columns = output_columns(reward_models)
    items = collect_videos(inputs or [], prompts, base_dir)
    summary = ScoreSummary()
    if processes.count == 1:
        with TableWriter(output, "scores") as writer, _ui.progress(len(items), "scoring", quiet) as advance:
            for rows in score_videos(items, reward_models, batch_size, workers, strict, advance):
                writer.write(rows)
                for row in rows:
                    summary.add(row, columns)
    else:
        from vpt.io.tables import gather_parts

        with gather_parts(output, "scores", processes, order=[item.id for item in items]) as part:
            mine = processes.shard(items)
            with _ui.progress(len(mine), f"scoring (process {processes.rank})", quiet) as advance:
                for rows in score_videos(mine, reward_models, batch_size, workers, strict, advance):
                    part.write(rows)
        if not processes.is_main:
            processes.leave()
        for row in part.merged.to_pylist():
            summary.add(row, columns)
    if summary.errors and summary.errors == summary.videos:
        typer.echo(f"vpt: error: none of the {summary.videos} videos could be scored (the first: "
                   f"{summary.first_error}); see the error column", err=True)
        processes.leave(1)
        raise typer.Exit(1)
    if summary.errors:
        _ui.warn(f"{summary.errors} of {summary.videos} videos could not be scored (see the error column)")
    if not quiet:
        _ui.print_table(
            f"{summary.videos} videos scored with {', '.join(names)}",
            ["column", "n", "mean", "std", "min", "max"],
            summary.table(),
        )
    processes.leave()
