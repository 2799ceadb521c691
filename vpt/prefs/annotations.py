"""Human A/B judgements in VideoAlign's CSV layout -> ``prefs`` rows.

The layout (VideoAlign ``datasets/train``): ``path_A, path_B, prompt, VQ, MQ, TA`` with labels ``A``, ``B`` or
``same``, optionally ``Overall``, plus columns this reader ignores (``fps_A``, ``num_frames_A``, ...). Paths are
relative to a data directory. Labels are read case-insensitively; an empty label means the annotator gave none
for that dimension and becomes ``invalid`` (masked out of losses). Without an ``Overall`` column the overall label
is the majority of VQ/MQ/TA (a tie when A and B win equally often, ``invalid`` when none is labelled).

Every row problem is found in one pass and reported with its 1-based data row: unknown labels, a video that does
not exist, a pair of a video with itself, and a pair seen before (the same two videos, in either order, with the
same prompt; the first occurrence is kept).
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field

from vpt.errors import VptError
from vpt.io.tables import read_table, without_value_checks
from vpt.prefs.pairs import DIMENSIONS, pair_id

SOURCE = "annotations"
ANNOTATION_LABELS = {"a": "a", "b": "b", "same": "tie"}
LABEL_COLUMNS = {"VQ": "vq", "MQ": "mq", "TA": "ta"}
PROBLEM_KINDS = ("unknown label", "missing video", "same video twice", "duplicate pair")


@dataclass
class Problem:
    row: int  # 1-based data row of the annotation table
    kind: str  # one of PROBLEM_KINDS
    message: str  # "row 3: ..." (without the file name)


@dataclass
class AnnotationPairs:
    """What :func:`pairs_from_annotations` found: the pairs (unbalanced, absolute paths) and the rows left out."""

    rows: list[dict]
    problems: list[Problem] = field(default_factory=list)
    total_rows: int = 0

    @property
    def skipped(self) -> Counter:
        return Counter(problem.kind for problem in self.problems)


def majority_label(labels: list[str]) -> str:
    """Overall label from per-dimension labels: the side that wins more dimensions."""
    a_wins, b_wins = labels.count("a"), labels.count("b")
    if a_wins != b_wins:
        return "a" if a_wins > b_wins else "b"
    return "invalid" if all(label == "invalid" for label in labels) else "tie"


def pairs_from_annotations(source: str | os.PathLike, data_dir: str | os.PathLike, check_files: bool = True,
                           skip_invalid: bool = False) -> AnnotationPairs:
    """Read an annotation table (CSV, Parquet or JSONL) into ``prefs`` rows; see the module docstring.

    ``data_dir``: directory the paths are relative to. ``check_files``: require each video to exist. Problem rows
    raise one :class:`VptError` (the first problem, with the count of the others) unless ``skip_invalid``, which
    leaves them out and lists them in the result.
    """
    table = read_table(source, without_value_checks("annotations"))
    base = os.path.abspath(data_dir)
    columns = {name: table.column(name).to_pylist() for name in ("path_A", "path_B", "prompt", *LABEL_COLUMNS)}
    overall = table.column("Overall").to_pylist() if "Overall" in table.column_names else None
    resolved: dict[str, str | None] = {}  # as written -> absolute path, None when it is not a file
    first_row_of: dict[tuple, int] = {}
    rows: list[dict] = []
    problems: list[Problem] = []

    def label(value, column: str, number: int) -> str | None:
        if value is None or not value.strip():
            return "invalid"
        mapped = ANNOTATION_LABELS.get(value.strip().lower())
        if mapped is None:
            problems.append(Problem(number, "unknown label",
                                    f"row {number}: column '{column}' has {value!r}; expected A, B or same"))
        return mapped

    def video(value, column: str, number: int) -> str | None:
        if value is None or not value.strip():
            problems.append(Problem(number, "missing video", f"row {number}: column '{column}' is empty; every "
                                                             f"pair needs two videos"))
            return None
        if value not in resolved:
            path = os.path.normpath(os.path.join(base, value))
            resolved[value] = path if not check_files or os.path.isfile(path) else None
        path = resolved[value]
        if path is None:
            problems.append(Problem(number, "missing video", f"row {number}: {column} {value!r} is not a file under "
                                                             f"{base}; fix the path or give --data-dir"))
        return path

    for index in range(table.num_rows):
        number, reported = index + 1, len(problems)
        labels = [label(columns[column][index], column, number) for column in LABEL_COLUMNS]
        row_overall = majority_label(labels) if overall is None else label(overall[index], "Overall", number)
        path_a = video(columns["path_A"][index], "path_A", number)
        path_b = video(columns["path_B"][index], "path_B", number)
        if len(problems) > reported:
            continue
        prompt = columns["prompt"][index]
        if path_a == path_b:
            problems.append(Problem(number, "same video twice", f"row {number}: path_A and path_B are the same "
                                                                f"video; a pair needs two different videos"))
            continue
        key = (min(path_a, path_b), max(path_a, path_b), prompt)
        first = first_row_of.setdefault(key, number)
        if first != number:
            problems.append(Problem(number, "duplicate pair", f"row {number}: repeats the pair of row {first} (the "
                                                              f"same two videos and prompt); keep one of them"))
            continue
        # the id hashes the paths as the annotation wrote them (relative to its data directory), so moving the data
        # does not change it
        written = [os.path.normpath(columns[column][index].strip()) for column in ("path_A", "path_B")]
        rows.append({"pair_id": pair_id(*written, prompt, SOURCE), "path_a": path_a, "path_b": path_b,
                     "prompt": prompt, **dict(zip(DIMENSIONS, labels)), "overall": row_overall, "source": SOURCE,
                     "annotation_row": number})
    if problems and not skip_invalid:
        others = len({problem.row for problem in problems}) - 1
        more = f"{others} more row{'s' if others > 1 else ''} with problems; " if others else ""
        raise VptError(f"{source}: {problems[0].message} ({more}--skip-invalid leaves such rows out)")
    return AnnotationPairs(rows=rows, problems=problems, total_rows=table.num_rows)
