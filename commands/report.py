"""``vpt report``: one static HTML page of a post-training run (videos side by side with their scores, curves,
win-rate / GSB / reward-bench tables, reward-hacking flags, lineage)."""

from __future__ import annotations

from typing import List, Optional

import typer

from vpt.commands import _outputs, _ui


def report(
    runs: List[str] = typer.Argument(..., help="Run directories (walked recursively) or table files.",
                                     show_default=False),
    out: str = typer.Option(..., "--out", "-o", callback=_outputs.run_directory,
                            help="Report folder to create (index.html, plots/, videos/); one an earlier report "
                                 "wrote is replaced."),
    base: Optional[str] = typer.Option(None, "--base", help="Stage the win rates are against (default: the first "
                                                            "video source)."),
    title: Optional[str] = typer.Option(None, "--title", help="Page title."),
    tables: List[str] = typer.Option([], "--tables", help="Folder of make table-* text outputs (*.txt) to show; "
                                                          "repeatable."),
    per_prompt: int = typer.Option(2, "--per-prompt", help="Gallery rows (initial noises) per prompt."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No summary line (warnings still show)."),
) -> None:
    """Write one static HTML report of post-training runs; print the page's path.

    Reads the declared tables under each RUN (rollouts, videos, scores, metrics, gsb*, rewardbench) and the
    checkpoints' policy.json. The folder holds index.html, PNG plots and copies of the videos: open it from disk or
    serve it as it is.

    Example:

    \b
      vpt report runs/rollouts runs/policy-1 runs/rollouts-1 -o report/
    """
    from vpt.report.build import build_report

    built = build_report(runs, out, base=base, title=title, tables=tables, per_prompt=per_prompt)
    for line in built.warnings:
        _ui.warn(f"possible reward hacking: {line}")
    if not quiet:
        typer.echo(f"report: {built.stages} stages, {built.videos} videos, {built.plots} plots", err=True)
    typer.echo(str(built.page))
