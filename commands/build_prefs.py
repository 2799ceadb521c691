"""``vpt build-prefs``: a ``prefs`` table from human annotations, scored sample groups, or synthetic negatives."""

from __future__ import annotations

from typing import List, Optional

import typer

from vpt.commands import _outputs, _ui
from vpt.commands._lists import comma_list

SHOWN_PROBLEMS = 5


def build_prefs(
    from_annotations: Optional[str] = typer.Option(
        None, "--from-annotations", help="Human A/B/same judgements, VideoAlign layout: path_A,path_B,prompt,VQ,MQ,"
                                         "TA[,Overall] (CSV, Parquet or JSONL)."),
    data_dir: Optional[str] = typer.Option(None, "--data-dir", help="Directory the annotation paths are relative to "
                                                                    "(default: the annotation file's directory)."),
    skip_invalid: bool = typer.Option(False, "--skip-invalid", help="Leave out annotation rows with unknown labels, "
                                                                    "missing videos or repeated pairs, and count "
                                                                    "them, instead of stopping."),
    check_files: bool = typer.Option(True, "--check-files/--no-check-files", help="Require every annotated video "
                                                                                  "to exist."),
    from_scores: List[str] = typer.Option([], "--from-scores", help="scores table of the samples; repeat or "
                                                                    "comma-separate for several reward models (then "
                                                                    "all must agree on a pair's order)."),
    videos: Optional[str] = typer.Option(None, "--videos", help="videos or rollouts table: the scored samples "
                                                                "(--from-scores) or the source clips (--synthetic)."),
    reward: str = typer.Option("score", "--reward", help="Reward to rank by: a scores column or weights, e.g. "
                                                         "overall or vq=1,ta=2."),
    min_gap: float = typer.Option(0.0, "--min-gap", help="Smallest reward gap (first scores table) for a pair."),
    top_k: int = typer.Option(1, "--top-k", help="Pair the best k samples of a group with its worst k."),
    label: Optional[str] = typer.Option(None, "--label", help="Dimension (vq, mq or ta) the scored pairs are "
                                                              "labelled in (default: the --reward column when it "
                                                              "is one of them)."),
    group_by: Optional[str] = typer.Option(None, "--group-by", help="Column grouping the samples (default: "
                                                                    "group_id, else prompt_id, else prompt)."),
    synthetic: Optional[str] = typer.Option(None, "--synthetic", help="Temporal negatives to make from each clip: "
                                                                      "reverse,shuffle,freeze."),
    out_dir: Optional[str] = typer.Option(None, "--out-dir", callback=_outputs.new_directory,
                                          help="Directory to create for the synthetic negative mp4s."),
    window: int = typer.Option(4, "--window", help="Frames per shuffle window."),
    freeze_fraction: float = typer.Option(0.25, "--freeze-fraction", help="Share of the frames a freeze holds."),
    skip_symmetric: bool = typer.Option(False, "--skip-symmetric", help="No reversal of clips marked "
                                                                        "time-symmetric (see --symmetric-column)."),
    symmetric_column: str = typer.Option("time_symmetric", "--symmetric-column", help="Boolean videos column "
                                                                                     "marking time-symmetric clips."),
    reencode_source: bool = typer.Option(False, "--reencode-source", help="Also pass each source clip through the "
                                                                          "encoder, so both sides of a pair share "
                                                                          "the codec's artefacts."),
    crf: int = typer.Option(10, "--crf", help="x264 quality of the written clips (0..51, lower is better)."),
    workers: int = typer.Option(2, "--workers", help="Clips processed at once (--synthetic)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the side balancing and of the synthetic negatives."),
    balance: bool = typer.Option(True, "--balance/--no-balance", help="Put the preferred video on side A or B by "
                                                                      "a seeded coin per pair."),
    output: str = typer.Option("-", "--output", "-o", callback=_outputs.output_file,
                               help="Output prefs table; - is stdout."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress or summary."),
) -> None:
    """Build preference pairs (a prefs table) from one source.

    Video paths are written relative to the output file's directory (absolute on stdout).

    Examples:

    \b
      vpt build-prefs --from-annotations data.csv -o prefs.parquet
      vpt build-prefs --from-scores scores.parquet --videos rollouts.parquet --min-gap 0.5 -o prefs.parquet
      vpt build-prefs --synthetic reverse,shuffle,freeze --videos good.parquet --out-dir negatives -o prefs.parquet
    """
    from vpt.errors import VptError
    from vpt.io.tables import write_table
    from vpt.prefs.pairs import as_written

    sources = [name for name, given in (("--from-annotations", from_annotations), ("--from-scores", from_scores),
                                        ("--synthetic", synthetic)) if given]
    if len(sources) != 1:
        raise VptError("give exactly one source: --from-annotations FILE, --from-scores SCORES --videos TABLE, or "
                       "--synthetic KINDS --videos TABLE --out-dir DIR")
    if from_annotations:
        rows, summary = _annotation_pairs(from_annotations, data_dir, check_files, skip_invalid, quiet)
    elif from_scores:
        rows, summary = _score_pairs(from_scores, videos, reward, min_gap, top_k, group_by, label)
    else:
        rows, summary = _synthetic_pairs(synthetic, videos, out_dir, window, freeze_fraction, skip_symmetric,
                                         symmetric_column, reencode_source, crf, workers, seed, quiet)
    rows = as_written(rows, None if output == "-" else output, seed, balance)
    write_table(rows, output, "prefs")
    if not quiet:
        typer.echo(f"build-prefs: {len(rows)} pairs {summary}", err=True)


def _counts(counts) -> str:
    return ", ".join(f"{count} {kind}" for kind, count in sorted(counts.items()))


def _annotation_pairs(source, data_dir, check_files, skip_invalid, quiet):
    from vpt.io.tables import source_directory
    from vpt.prefs.annotations import pairs_from_annotations

    found = pairs_from_annotations(source, data_dir if data_dir is not None else source_directory(source),
                                   check_files=check_files, skip_invalid=skip_invalid)
    if not quiet:
        for problem in found.problems[:SHOWN_PROBLEMS]:
            _ui.warn(f"{source}: {problem.message} (left out)")
        if len(found.problems) > SHOWN_PROBLEMS:
            _ui.warn(f"{source}: {len(found.problems) - SHOWN_PROBLEMS} more problems (left out)")
    rows_left_out = len({problem.row for problem in found.problems})
    left_out = f"; left out {rows_left_out} rows ({_counts(found.skipped)})" if rows_left_out else ""
    return found.rows, f"from {found.total_rows} annotation rows{left_out}"


def _score_pairs(score_sources, videos, reward, min_gap, top_k, group_by, label):
    from vpt.prefs.from_scores import pairs_from_tables

    names = comma_list(score_sources, "--from-scores", "brightness.parquet,motion.parquet")
    built = pairs_from_tables(names, videos, reward, min_gap=min_gap, top_k=top_k, group_by=group_by, label=label)
    left_out = f"; left out: {_counts(built.skipped)}" if built.skipped else ""
    return built.rows, f"from {built.groups} groups (by {built.group_by}){left_out}"


def _synthetic_pairs(kinds, videos, out_dir, window, freeze_fraction, skip_symmetric, symmetric_column,
                     reencode_source, crf, workers, seed, quiet):
    from vpt.errors import VptError
    from vpt.prefs.synthetic import synthetic_prefs

    if videos is None or out_dir is None:
        raise VptError("--synthetic needs --videos TABLE (the good clips) and --out-dir DIR (where the negative "
                       "clips are written)")
    names = comma_list(kinds, "--synthetic", "reverse,shuffle,freeze")
    with _ui.progress(None, "negatives (clips)", quiet) as advance:
        made = synthetic_prefs(videos, out_dir, names, skip_symmetric=skip_symmetric,
                               symmetric_column=symmetric_column, seed=seed, window=window,
                               freeze_fraction=freeze_fraction, workers=workers, crf=crf,
                               reencode_source=reencode_source, on_progress=advance)
    left_out = f"; left out: {_counts(made.skipped)}" if made.skipped else ""
    return made.rows, f"of {made.clips} clips ({', '.join(names)}){left_out}"
