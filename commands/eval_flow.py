"""``vpt eval flow``: optical-flow accuracy of videos against reference flow files (registered on ``vpt eval``)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from vpt.commands import _outputs, _ui


def flow(
    inputs: List[str] = typer.Argument(
        None, help="Videos: a directory, files, a glob, or a videos manifest table.", show_default=False
    ),
    reference: Path = typer.Option(..., "--reference", help="Directory of reference flow files, "
                                                            "<video name>.flow.safetensors (see vpt/io/flow.py)."),
    flow_dir: Optional[Path] = typer.Option(None, "--flow", help="Compare these flow files (same layout) instead of "
                                                                 "estimating each video's flow."),
    base_dir: Optional[str] = typer.Option(None, "--base-dir", help="Directory a manifest's relative paths are "
                                                                    "relative to (default: the manifest's)."),
    output: Optional[str] = typer.Option(None, "--output", "-o", callback=_outputs.output_file,
                                         help="Also write the flow_metrics table here."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar or text table."),
) -> None:
    """Optical-flow accuracy: each video's DIS flow against its reference flow file.

    EPE = mean ||f - g||; >1px and >3px = fraction of pixels with EPE above; Fl-all = KITTI outliers (EPE > 3 px
    and > 5% of ||g||); over the valid pixels of all frame pairs. The last line is the mean over videos.

    Example:

    \b
      vpt eval flow toy/videos.parquet --reference toy/flow -o flow_metrics.parquet
    """
    from vpt.errors import VptError
    from vpt.io.manifest import collect_videos
    from vpt.io.tables import write_table
    from vpt.metrics.flow import METRICS, mean_row
    from vpt.rewards.flow import check_stems, evaluate_video

    for option, directory in (("--reference", reference), ("--flow", flow_dir)):
        if directory is not None and not directory.is_dir():
            raise VptError(f"{option} {directory}: not a directory; give the directory of the "
                           "<video name>.flow.safetensors files")
    items = collect_videos(inputs or [], None, base_dir)
    check_stems(items)
    rows = []
    with _ui.progress(len(items), "flow", quiet) as advance:
        for item in items:
            rows.append(evaluate_video(item, reference, flow_dir))
            advance(1)
    if output is not None:
        write_table(rows, output, "flow_metrics")
    failed = sum(row["error"] is not None for row in rows)
    if failed:
        _ui.warn(f"{failed} of {len(rows)} videos could not be evaluated; the error column says why")
    if not quiet:
        header = ["id", "EPE", ">1px", ">3px", "Fl-all", "pairs", "error"]
        body = [[row["id"], *(_metric(row[name]) for name in METRICS), _metric(row["pairs"]), row["error"] or ""]
                for row in rows]
        mean = mean_row(rows)
        if mean is not None:
            body.append(["mean", *(_metric(mean[name]) for name in METRICS), "", ""])
        # With -o -, stdout carries the Parquet table.
        typer.echo(_ui.aligned([header, *body]), err=output == "-")


def _metric(value: float | int | None) -> str:
    return "n/a" if value is None else str(value) if isinstance(value, int) else f"{value:.4f}"
