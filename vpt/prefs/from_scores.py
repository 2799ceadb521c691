"""Policy-on-policy hard negatives (TeleBoost Stage III): within each group of samples of one prompt, pair the best
against the worst sample under a reward, when the reward gap is large enough and every reward model agrees.

The reward of a video is one scores column or a weighted sum of columns (``"overall"``, ``"vq=1,ta=2"``), taken
from every scores table given. The first table ranks the group and its gap is compared with ``min_gap``; each
further table (another reward model, usually on another scale) must put the pair in the same strict order. With
``top_k`` > 1 the best k are paired with the worst k (k x k pairs, each checked on its own). Videos that a table
could not score (null value) take no part.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Sequence

from vpt.errors import VptError
from vpt.prefs.pairs import DIMENSIONS, pair_id

SOURCE = "scores"
GROUP_COLUMNS = ("group_id", "prompt_id", "prompt")


def rewards_by_id(rows: Sequence[dict], weights: dict[str, float], source: str) -> dict[str, float]:
    """Video id -> reward from one scores table (videos with a null value in any used column, i.e. unscored, are
    left out; a NaN or infinite value is an error naming its row)."""
    if rows:
        missing = [column for column in weights if column not in rows[0]]
        if missing:
            numeric = [name for name in rows[0] if any(isinstance(row[name], float) for row in rows)]
            names = ", ".join(numeric)
            raise VptError(f"{source}: has no column '{missing[0]}' for --reward; its score columns: {names}")
    rewards: dict[str, float] = {}
    for number, row in enumerate(rows, start=1):
        if row["id"] in rewards:
            raise VptError(f"{source}: row {number}: video id {row['id']!r} is scored twice; score each video once "
                           f"(one prompt per video)")
        values = [row[column] for column in weights]
        for column, value in zip(weights, values):
            if value is not None and not math.isfinite(value):
                raise VptError(f"{source}: row {number}: column '{column}' of video {row['id']!r} is {value}; "
                               "rewards must be finite numbers, score the video again or drop the row")
        if None not in values:
            rewards[row["id"]] = sum(weight * value for weight, value in zip(weights.values(), values))
    return rewards


def group_column(rows: Sequence[dict], requested: str | None, source: str) -> str:
    """The column that groups samples: ``requested``, else the first of group_id, prompt_id, prompt with values."""
    if requested is not None:
        if rows and requested not in rows[0]:
            raise VptError(f"{source}: has no column '{requested}' to group by; its columns: "
                           f"{', '.join(rows[0])}")
        return requested
    for column in GROUP_COLUMNS:
        if any(row.get(column) is not None for row in rows):
            return column
    raise VptError(f"{source}: no group_id, prompt_id or prompt values to group the samples by; add one, or name "
                   f"a column with --group-by")


@dataclass
class ScorePairs:
    """What :func:`pairs_from_scores` built: pairs (preferred on side A, absolute paths) and what was left out."""

    rows: list[dict]
    groups: int
    group_by: str
    skipped: Counter = field(default_factory=Counter)


def pairs_from_scores(videos: Sequence[dict], paths: Sequence[str], rewards: Sequence[dict[str, float]],
                      reward_columns: Sequence[str], min_gap: float = 0.0, top_k: int = 1,
                      group_by: str | None = None, source: str = "videos", label: str | None = None) -> ScorePairs:
    """Hard-negative pairs from scored groups (see the module docstring).

    videos: rows of a videos/rollouts table (id, prompt and the grouping column); paths: each row's absolute video
    path; rewards: one id -> reward mapping per scores table, the first ranks; reward_columns: the scores columns
    the reward used (a single VQ/MQ/TA column also sets that dimension's label); label: the dimension the pairs
    are labelled in instead (e.g. ``vq`` for pairs ranked by a brightness metric).
    """
    if top_k < 1:
        raise VptError(f"--top-k must be at least 1, got {top_k}")
    if label is not None and label not in DIMENSIONS:
        raise VptError(f"--label {label}: choose one of {', '.join(DIMENSIONS)}")
    if min_gap < 0 or not math.isfinite(min_gap):
        raise VptError(f"--min-gap must be a finite number >= 0, got {min_gap}")
    column = group_column(videos, group_by, source)
    seen: dict[str, int] = {}
    for number, row in enumerate(videos, start=1):
        first = seen.setdefault(row["id"], number)
        if first != number:
            raise VptError(f"{source}: row {number}: video id {row['id']!r} is already used by row {first}; give "
                           f"every video its own id")
    skipped: Counter = Counter()
    members: dict[str, list[int]] = defaultdict(list)
    primary = rewards[0]
    for index, row in enumerate(videos):
        key = row.get(column)
        if key is None:
            skipped["no group"] += 1
        elif row["id"] not in primary:
            skipped["unscored video"] += 1
        else:
            members[str(key)].append(index)
    labelled = label
    if labelled is None and len(reward_columns) == 1 and reward_columns[0] in DIMENSIONS:
        labelled = reward_columns[0]
    pairs = []
    for key, indices in members.items():
        if len(indices) < 2:
            skipped["group of one"] += 1
            continue
        ranked = sorted(indices, key=lambda i: -primary[videos[i]["id"]])  # stable: ties keep table order
        k = min(top_k, len(ranked) // 2)
        for better in ranked[:k]:
            for worse in ranked[::-1][:k]:
                id_a, id_b = videos[better]["id"], videos[worse]["id"]
                gap = primary[id_a] - primary[id_b]
                if gap <= 0 or gap < min_gap:
                    skipped["gap below --min-gap"] += 1
                    continue
                if not all(id_a in other and id_b in other and other[id_a] > other[id_b] for other in rewards[1:]):
                    skipped["reward models disagree"] += 1
                    continue
                prompt = videos[better].get("prompt")
                if prompt != videos[worse].get("prompt"):
                    skipped["different prompts"] += 1
                    continue
                row = {"pair_id": pair_id(id_a, id_b, prompt, SOURCE), "path_a": paths[better],
                       "path_b": paths[worse], "prompt": prompt, "id_a": id_a, "id_b": id_b}
                row.update({d: ("a" if d == labelled else "invalid") for d in DIMENSIONS})
                row.update(overall="a", source=SOURCE, gap=float(gap), group=key)
                pairs.append(row)
    return ScorePairs(rows=pairs, groups=len(members), group_by=column, skipped=skipped)


def pairs_from_tables(score_tables: Sequence[str], videos: str | None, reward: str, min_gap: float = 0.0,
                      top_k: int = 1, group_by: str | None = None, label: str | None = None) -> ScorePairs:
    """:func:`pairs_from_scores` over tables: the ``videos`` (or rollouts) table of the samples, one scores table
    per reward model, and the reward as written on the command line (a column or weights)."""
    from vpt.io.manifest import read_video_table
    from vpt.io.tables import read_table, resolve_path
    from vpt.rewards.expression import parse_reward

    if videos is None:
        raise VptError("--from-scores needs --videos TABLE: the videos or rollouts table the scores are of (it "
                       "gives the groups and the paths)")
    samples = read_video_table(videos).to_pylist()
    paths = [str(resolve_path(row["path"], videos, f"{videos}: row {number}"))
             for number, row in enumerate(samples, start=1)]
    weights = parse_reward(reward)
    rewards = [rewards_by_id(read_table(name, "scores").to_pylist(), weights, name) for name in score_tables]
    return pairs_from_scores(samples, paths, rewards, list(weights), min_gap=min_gap, top_k=top_k,
                             group_by=group_by, source=videos, label=label)
