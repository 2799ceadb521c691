"""Presentation for the commands: progress bars, summary tables (a training stage's, train-reward's accuracies) and
warnings, all on stderr; and the command line as the user gave it, for the records a stage writes."""

from __future__ import annotations

import contextlib
import logging
from typing import Callable, Iterator, Sequence

import typer


def warn(message: str) -> None:
    typer.echo(f"vpt: warning: {message}", err=True)


class _WarningLine(logging.Handler):
    """The library's warnings (``logging.getLogger("vpt...").warning``) as :func:`warn` lines, whatever
    ``sys.stderr`` is at the time (tests swap it)."""

    def emit(self, record: logging.LogRecord) -> None:
        warn(record.getMessage())


def show_library_warnings() -> None:
    """Print the library's warnings on stderr (once per process, however often the command line runs)."""
    logger = logging.getLogger("vpt")
    if not any(isinstance(handler, _WarningLine) for handler in logger.handlers):
        logger.addHandler(_WarningLine(logging.WARNING))
        logger.setLevel(logging.WARNING)


@contextlib.contextmanager
def progress(total: int | None, description: str, quiet: bool) -> Iterator[Callable[[int], None]]:
    """A rich progress bar on stderr; yields ``advance(n)``. Silent with ``quiet``."""
    if quiet:
        yield lambda n: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    console = Console(stderr=True)
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()]
    # A bar only makes sense on a terminal; in a log file it would leave control residue.
    with Progress(*columns, console=console, transient=True, disable=not console.is_terminal) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n: bar.advance(task, n)


def aligned(rows: list[list[str]]) -> str:
    """Plain text columns (for stdout, where exact output matters), the last column left ragged."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join(
        "  ".join([cell.ljust(width) for cell, width in zip(row, widths)] + [row[-1]]).rstrip() for row in rows
    )


def print_table(title: str, header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """A small aligned table on stderr (numbers to 4 decimals)."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, title_justify="left", box=None, pad_edge=False)
    for index, name in enumerate(header):
        table.add_column(name, justify="left" if index == 0 else "right")
    for row in rows:
        table.add_row(*(f"{cell:.4f}" if isinstance(cell, float) else str(cell) for cell in row))
    Console(stderr=True, soft_wrap=True).print(table)


def videoreward_summary(result, out: str) -> None:
    """``train-reward``'s held-out accuracies per dimension and the normalisation statistics stored with the
    model."""
    print_table(f"train-reward: {result.train.step} steps on {result.train_pairs} pairs; accuracy (%) on "
                f"{_held_out(result.eval_pairs)}; model in {out}",
                ["dim", "acc w/o ties", "acc w/ ties", "norm mean", "norm std"],
                [[name, _percent(without), _percent(with_ties), *("" if value is None else value for value in stats)]
                 for name, without, with_ties, *stats in result.evaluation.accuracy_rows()])


def latent_reward_summary(result, sigmas, out: str) -> None:
    """``train-reward --kind latent``'s held-out accuracies per dimension at each evaluation noise level."""
    recorded = f", {result.recorded_clips} clips from recorded latents" if result.recorded_clips else ""
    print_table(f"train-reward --kind latent: {result.step} steps on {result.train_pairs} pairs{recorded}; accuracy "
                f"(%) on {_held_out(result.eval_pairs)}; model in {out}",
                ["dim", *(f"σ={sigma:g}" for sigma in sigmas), "mean"],
                [[name, *map(_percent, accuracies)] for name, *accuracies in result.accuracy_rows(sigmas)])


def _held_out(pairs: int) -> str:
    return f"{pairs} held-out pairs" if pairs else "no held-out pairs: training pairs"


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def command_line(context: typer.Context) -> list[str]:
    """The command as given (``vpt STAGE --option value ...``), rebuilt from the parsed options that did not come
    from their defaults, so it reads the same in-process, from a shell or under ``accelerate launch``."""
    words = context.command_path.split()
    for param in context.command.params:
        source = context.get_parameter_source(param.name)
        if source is None or source.name in ("DEFAULT", "DEFAULT_MAP") or not param.opts:
            continue
        value = context.params.get(param.name)
        if value is None:
            continue
        option = next((opt for opt in param.opts if opt.startswith("--")), param.opts[0])
        if getattr(param, "is_flag", False):
            words += [option] if value else list(getattr(param, "secondary_opts", [])[:1])
        else:
            words += [part for item in (value if isinstance(value, (list, tuple)) else [value])
                      for part in (option, str(item))]
    return words


def report(stage: str, result, quiet: bool) -> None:
    """The finished stage's summary table and one line on stderr (main process only)."""
    from vpt.distributed import current_processes

    if quiet or not current_processes().is_main:
        return
    print_table(f"{stage} (step {result.step})", ["metric", "value"],
                    [[name, f"{value:.6g}"] for name, value in result.metrics.items()])
    typer.echo(f"{stage}: {result.step} steps -> {result.checkpoint}", err=True)
